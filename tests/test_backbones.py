"""DenseBackbone over timm: maps per level, strides, ViT prefix tokens removed, dynamic sizes, local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from densessl.backbones import DenseBackbone, encode_views
from densessl.data.collate import collate_views
from densessl.data.transforms import MultiCrop, MultiCropConfig


@pytest.mark.parametrize("arch,channels,strides", [
    ("resnet18", [256, 512], [16, 32]),
    ("convnext_atto", [160, 320], [16, 32]),
    ("vit_tiny_patch16_224", [192, 192], [16, 16]),
])
def test_maps_channels_and_strides(arch: str, channels: list[int], strides: list[int]) -> None:
    backbone = DenseBackbone(arch, levels=(-2, -1))
    assert backbone.channels == channels and backbone.strides == strides
    for size in (64, 96):
        feats = backbone(torch.randn(2, 3, size, size))
        assert [tuple(m.shape) for m in feats.maps] == [(2, c, size // s, size // s) for c, s in zip(channels, strides)]
        assert feats.pooled.shape == (2, backbone.num_features)


def test_vit_maps_are_patch_tokens_without_prefix_tokens() -> None:
    backbone = DenseBackbone("vit_tiny_patch16_224", model_kwargs={"reg_tokens": 2})
    x = torch.randn(1, 3, 48, 64)
    tokens = backbone.model.forward_features(x)  # (1, 1 cls + 2 reg + 12 patches, C), final norm applied
    feats = backbone(x)
    assert tokens.shape[1] == 15 and feats.maps[0].shape == (1, 192, 3, 4)
    torch.testing.assert_close(feats.maps[0].flatten(2).transpose(1, 2), tokens[:, 3:])


def test_weights_round_trip_and_timm_compatibility(tmp_path: Path) -> None:
    source = timm.create_model("resnet18", pretrained=False)  # with its classifier: those keys are skipped
    torch.save(source.state_dict(), tmp_path / "r18.pt")
    backbone = DenseBackbone("resnet18", weights=tmp_path / "r18.pt")
    torch.testing.assert_close(backbone.model.conv1.weight, source.conv1.weight)
    torch.save({"state_dict": backbone.model.state_dict()}, tmp_path / "wrapped.pt")
    DenseBackbone("resnet18", weights=tmp_path / "wrapped.pt")


def test_bad_weights_and_arch_raise(tmp_path: Path) -> None:
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ValueError, match="does not fit"):
        DenseBackbone("resnet18", weights=tmp_path / "r34.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        DenseBackbone("resnet18", weights=tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not a torch or safetensors weights file"):
        DenseBackbone("resnet18", weights=tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="unknown timm architecture"):
        DenseBackbone("resnet_does_not_exist")
    with pytest.raises(ValueError, match="out of range"):
        DenseBackbone("resnet18", levels=(7,))
    with pytest.raises(ValueError, match="images must be"):
        DenseBackbone("resnet18")(torch.randn(3, 32, 32))


@pytest.mark.parametrize(("arch", "suggested"), [
    ("resnt18", "resnet18"),
    ("resnet181", "resnet18"),
    ("convnext_tinyy", "convnext_tiny"),
    ("vitt_tiny_patch16_224", "vit_tiny_patch16_224"),
])
def test_misspelt_arch_suggests_close_timm_names(arch: str, suggested: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown timm architecture '{arch}'; did you mean: .*\b{suggested}\b"):
        DenseBackbone(arch)
    with pytest.raises(ValueError, match="unknown timm architecture 'zzqqxx'; see timm.list_models"):
        DenseBackbone("zzqqxx")


def test_arch_from_the_weights_file(tmp_path: Path) -> None:
    from densessl.weights import read_backbone_weights, save_backbone

    source = DenseBackbone("resnet18", levels=(-2, -1))
    exported = save_backbone(source.model, tmp_path / "run" / "export", "resnet18", {"model": {"arch": "resnet18"}})
    for path in (exported.safetensors, exported.folder, tmp_path / "run"):  # the file, the export, the run folder
        backbone = DenseBackbone(weights=path, levels=(-2, -1))
        assert backbone.arch == "resnet18" and backbone.channels == [256, 512]
        torch.testing.assert_close(backbone.model.conv1.weight, source.model.conv1.weight)
    read = read_backbone_weights(exported.safetensors)  # already read weights are accepted too
    assert DenseBackbone(weights=read).arch == "resnet18"
    with pytest.raises(ValueError, match=r"weights are for 'resnet18' \(from model.safetensors metadata\) but the "
                                         r"model is 'resnet34'"):
        DenseBackbone("resnet34", weights=exported.safetensors)
    torch.save(source.model.state_dict(), tmp_path / "plain.pt")  # a timm state dict states no architecture
    with pytest.raises(ValueError, match=r"plain.pt' \(timm state dict\) states no architecture; pass --arch"):
        DenseBackbone(weights=tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="needs arch"):
        DenseBackbone()


def test_encode_views_matches_per_view_forward() -> None:
    backbone = DenseBackbone("resnet18").eval()
    multicrop = MultiCrop(MultiCropConfig(global_size=64, local_size=32, n_local=2))
    views = collate_views([multicrop(torch.rand(3, 70, 70), torch.Generator().manual_seed(s)) for s in range(2)])
    with torch.no_grad():
        per_view = encode_views(backbone, views)
        for v in range(views.num_views):
            direct = backbone(views.view(v))
            torch.testing.assert_close(per_view[v].maps[0], direct.maps[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(per_view[v].pooled, direct.pooled, rtol=1e-4, atol=1e-5)


def test_encode_views_select_runs_one_forward_per_listed_view() -> None:
    """``select``: only the listed views, in that order, each with its own BatchNorm statistics (train mode)."""
    backbone = DenseBackbone("resnet18").train()
    multicrop = MultiCrop(MultiCropConfig(global_size=64, n_local=0))
    views = collate_views([multicrop(torch.rand(3, 70, 70), torch.Generator().manual_seed(s)) for s in range(3)])
    with torch.no_grad():
        selected = encode_views(backbone, views, select=(1, 0))
        grouped = encode_views(backbone, views)  # both 64 px views in one forward: statistics over 2B images
        assert len(selected) == 2 and len(grouped) == 2
        for features, index in zip(selected, (1, 0)):
            direct = backbone(views.view(index))
            torch.testing.assert_close(features.maps[-1], direct.maps[-1])
            torch.testing.assert_close(features.pooled, direct.pooled)
        assert not torch.allclose(grouped[1].maps[-1], selected[0].maps[-1], atol=1e-4)


def test_encode_views_bn_groups_split_the_batch_and_permutation_shuffles_it() -> None:
    """``bn_groups``: BatchNorm statistics per chunk of the batch; ``permutation``: chunks of the shuffled batch,
    outputs back in batch order (shuffle-BN); without train-mode BatchNorm both equal the plain forward."""
    backbone = DenseBackbone("resnet18").train()
    multicrop = MultiCrop(MultiCropConfig(global_size=64, n_local=0))
    views = collate_views([multicrop(torch.rand(3, 70, 70), torch.Generator().manual_seed(s)) for s in range(6)])
    images = views.view(1)
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        (grouped,) = encode_views(backbone, views, select=(1,), bn_groups=2)
        for rows in (slice(0, 3), slice(3, 6)):
            torch.testing.assert_close(grouped.maps[-1][rows], backbone(images[rows]).maps[-1])
        (shuffled,) = encode_views(backbone, views, select=(1,), bn_groups=2, permutation=permutation)
        first = backbone(images[permutation[:3]])  # images 3, 0, 5 share one set of statistics
        torch.testing.assert_close(shuffled.maps[-1][permutation[:3]], first.maps[-1])
        torch.testing.assert_close(shuffled.pooled[permutation[:3]], first.pooled)
        assert not torch.allclose(shuffled.maps[-1], grouped.maps[-1], atol=1e-4)
        backbone.eval()
        (plain,) = encode_views(backbone, views, select=(1,))
        (split,) = encode_views(backbone, views, select=(1,), bn_groups=3, permutation=permutation)
        torch.testing.assert_close(split.maps[-1], plain.maps[-1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pass select"):
        encode_views(backbone, views, bn_groups=2)
    with pytest.raises(ValueError, match="more than the batch"):
        encode_views(backbone, views, select=(0,), bn_groups=7)
    with pytest.raises(ValueError, match="permutation must have shape"):
        encode_views(backbone, views, select=(0,), permutation=torch.arange(5))


def test_vit_input_not_a_multiple_of_the_patch_is_a_clear_error() -> None:
    backbone = DenseBackbone("vit_tiny_patch16_224")
    with pytest.raises(ValueError, match=r"16x16 patches, but the input is 50x64; .* multiple of 16"):
        backbone(torch.zeros(1, 3, 50, 64))


def test_a_timm_model_instance_is_wrapped_as_built() -> None:
    """A lightly/timm user builds the model; DenseBackbone takes the instance (or from_model) as it is."""
    model = timm.create_model("resnet18", pretrained=False)
    backbone = DenseBackbone(model, levels=(-2, -1))
    assert backbone.model is model and backbone.arch == "resnet18"
    assert backbone.channels == [256, 512] and backbone.strides == [16, 32] and backbone.num_features == 512
    by_name = DenseBackbone("resnet18", levels=(-2, -1))
    by_name.model.load_state_dict(model.state_dict(), strict=False)  # the instance has a classifier, the name none
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = backbone.eval()(images), by_name.eval()(images)
    assert all(torch.equal(a, b) for a, b in zip(ours.maps, theirs.maps))
    assert torch.equal(ours.pooled, theirs.pooled)  # pre-logits, not the 1000-class head
    vit = DenseBackbone.from_model(timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True))
    assert vit.is_vit and [tuple(vit(torch.randn(1, 3, s, s)).maps[0].shape) for s in (96, 64)] == [
        (1, 192, 6, 6), (1, 192, 4, 4)]
    with pytest.raises(TypeError, match="timm model name or a timm model instance"):
        DenseBackbone(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass them when you build the model"):
        DenseBackbone(model, model_kwargs={"drop_path_rate": 0.1})
    with pytest.raises(ValueError, match="forward_intermediates"):
        DenseBackbone(torch.nn.Conv2d(3, 8, 3))
