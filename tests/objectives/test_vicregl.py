"""VICReg / VICRegL math, checked against a literal re-derivation of the reference formulas (METHODS.md 1.4-1.6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densessl.backbones import DenseFeatures
from densessl.coords import match_indices
from densessl.data.collate import Views
from densessl.objectives.vicreg import (
    VICReg,
    VICRegConfig,
    VICRegLoss,
    covariance_loss,
    variance_covariance,
    variance_loss,
)
from densessl.objectives.vicregl import VICRegL, VICRegLConfig, VICRegLLocalLoss

# ---------------------------------------------------------------- a literal, slow reference written from the spec


def ref_vicreg_terms(x: torch.Tensor, y: torch.Tensor, lam=25.0, mu=25.0, nu=1.0):
    """Per-slot local VICReg of METHODS.md 1.5, with explicit loops and D x D covariances. x, y: (B, k, D)."""
    inv = lam * ((x - y) ** 2).mean()
    var = 0.0
    cov = 0.0
    for z in (x, y):
        z = z - z.mean(dim=0, keepdim=True)
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        var = var + torch.relu(1 - std).mean() / 2
        per_slot = []
        for s in range(z.shape[1]):
            c = z[:, s].T @ z[:, s] / (z.shape[0] - 1)
            off = c - torch.diag(torch.diag(c))
            per_slot.append((off**2).sum() / z.shape[2])
        cov = cov + torch.stack(per_slot).mean() / 2
    return inv, mu * var, nu * cov


def ref_nn(src, tgt, dist, k):
    """Official selection: keep the k sources with the smallest NN distance, in raster order."""
    best, nearest = dist.min(dim=2)
    out_x, out_y = [], []
    for b in range(src.shape[0]):
        keep = sorted(sorted(range(dist.shape[1]), key=lambda p: (best[b, p].item(), p))[: k or dist.shape[1]])
        out_x.append(src[b, keep])
        out_y.append(tgt[b, nearest[b, keep]])
    return torch.stack(out_x), torch.stack(out_y)


def ref_local(maps, locs, num_matches=(20, 4), l2_all=True):
    """METHODS.md 1.6: i in {0, 1}, j != i, sum of (feature + location) terms each averaged over directions."""
    total = [0.0, 0.0, 0.0]
    pairs = 0
    for i in range(2):
        for j in range(len(maps)):
            if j == i:
                continue
            a, b, ga, gb = maps[i], maps[j], locs[i], locs[j]
            kf = (None, None) if l2_all else num_matches
            fd = torch.cdist(a, b)
            for dist, ks in ((fd, kf), (torch.cdist(ga, gb), num_matches)):
                t1 = ref_vicreg_terms(*ref_nn(a, b, dist, ks[0]))
                t2 = ref_vicreg_terms(*ref_nn(b, a, dist.transpose(1, 2), ks[1]))
                for n in range(3):
                    total[n] = total[n] + t1[n] / 2 + t2[n] / 2
            pairs += 1
    return [t / pairs for t in total]


def ref_global(z):
    inv, pairs = 0.0, 0
    for i in range(2):
        for j in range(len(z)):
            if j != i:
                inv = inv + F.mse_loss(z[i], z[j])
                pairs += 1
    var = cov = 0.0
    for x in z:
        x = x - x.mean(0)
        var = var + torch.relu(1 - torch.sqrt(x.var(0) + 1e-4)).mean()
        c = x.T @ x / (x.shape[0] - 1)
        cov = cov + ((c - torch.diag(torch.diag(c))) ** 2).sum() / x.shape[1]
    return 25 * inv / pairs, 25 * var / len(z), cov / len(z)


# ---------------------------------------------------------------- tests


def _random_views(batch=6, dims=(16, 16, 16), cells=(9, 9, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(batch, n, d, generator=g, dtype=torch.float64) for n, d in zip(cells, dims)]
    locs = [torch.rand(batch, n, 2, generator=g, dtype=torch.float64) * 100 for n in cells]
    return maps, locs


@pytest.mark.parametrize("l2_all", [True, False])
def test_local_loss_equals_reference(l2_all: bool) -> None:
    maps, locs = _random_views()
    crit = VICRegLLocalLoss(num_matches=(5, 3), l2_all_matches=l2_all, topk_by_view_size=False)
    out = crit(maps, locs, n_global=2)
    ref = ref_local(maps, locs, num_matches=(5, 3), l2_all=l2_all)
    for name, value in zip(("inv", "var", "cov"), ref):
        torch.testing.assert_close(out[name].double(), value.double(), rtol=1e-5, atol=1e-6, msg=name)


def test_single_matching_types_sum_to_both() -> None:
    """Geometric-only + learned-only (the paper's ablation) add up to VICRegL's local loss, term by term."""
    maps, locs = _random_views(seed=3)
    out = {m: VICRegLLocalLoss(num_matches=(5, 3), matching=m)(maps, locs, n_global=2) for m in ("both", "location", "feature")}
    for name in ("inv", "var", "cov"):
        torch.testing.assert_close(out["location"][name] + out["feature"][name], out["both"][name], msg=name)
    assert out["location"]["inv"] != out["feature"]["inv"]
    with pytest.raises(ValueError, match="matching"):
        VICRegLLocalLoss(matching="geometric")
    with pytest.raises(ValueError, match="local_matching"):
        VICRegLConfig(local_matching="learned").validate()


def test_global_loss_equals_reference_and_pair_count() -> None:
    g = torch.Generator().manual_seed(1)
    z = [torch.randn(8, 32, generator=g) for _ in range(8)]  # 2 global + 6 local views: 14 ordered pairs
    out = VICRegLoss()(z, n_global=2)
    inv, var, cov = ref_global(z)
    torch.testing.assert_close(out["inv"], inv)
    torch.testing.assert_close(out["var"], var)
    torch.testing.assert_close(out["cov"], cov, rtol=1e-4, atol=1e-5)


def test_gram_and_direct_covariance_agree() -> None:
    x = torch.randn(20, 3, 50, dtype=torch.float64)  # N < D: Gram path
    x = x - x.mean(0)
    direct = []
    for s in range(3):
        c = x[:, s].T @ x[:, s] / 19
        direct.append(((c - torch.diag(torch.diag(c))) ** 2).sum() / 50)
    torch.testing.assert_close(covariance_loss(x), torch.stack(direct).float().mean(), rtol=1e-5, atol=1e-6)
    y = torch.randn(60, 10)  # N >= D: covariance path
    y = y - y.mean(0)
    c = y.T @ y / 59
    torch.testing.assert_close(covariance_loss(y), ((c - torch.diag(torch.diag(c))) ** 2).sum() / 10)


@pytest.mark.parametrize("shape", [(20, 3, 50), (60, 10), (16, 40, 8)])
def test_shared_moment_variance_covariance_equals_the_separate_terms(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape) * 0.7
    x = x - x.mean(0)
    var, cov = variance_covariance(x, eps=1e-4)
    torch.testing.assert_close(var, variance_loss(x, 1e-4), rtol=1e-5, atol=1e-6)  # Tensor.var path
    slots = x if x.dim() == 3 else x[:, None]
    direct = []
    for s in range(slots.shape[1]):
        c = slots[:, s].T @ slots[:, s] / (slots.shape[0] - 1)
        direct.append(((c - torch.diag(torch.diag(c))) ** 2).sum() / slots.shape[2])
    torch.testing.assert_close(cov, torch.stack(direct).mean(), rtol=1e-5, atol=1e-6)


def test_variance_hinge_values() -> None:
    x = torch.tensor([[1.0], [-1.0]])  # unbiased std sqrt(2) > 1 -> no penalty
    assert variance_loss(x).item() == 0.0
    collapsed = torch.zeros(5, 4)
    assert variance_loss(collapsed).item() == pytest.approx(1 - 0.01)


def test_identical_views_have_zero_invariance() -> None:
    maps, locs = _random_views(cells=(9, 9, 9))
    same = [maps[0]] * 3
    out = VICRegLLocalLoss()(same, [locs[0]] * 3, n_global=2)
    assert out["inv"].item() == 0.0
    z = [torch.randn(8, 16)] * 4
    assert VICRegLoss()(z, n_global=2)["inv"].item() == 0.0


def test_match_indices_hand_built() -> None:
    # Row minima: p0 -> q2 (0.5), p1 -> q0 (0.1), p2 -> q3 (0.9), p3 -> q1 (0.3).
    d = torch.tensor([[[3.0, 2.0, 0.5, 4.0], [0.1, 5.0, 5.0, 5.0], [2.0, 2.0, 2.0, 0.9], [1.0, 0.3, 7.0, 7.0]]])
    src, tgt = match_indices(d, 2)
    assert src.tolist() == [[1, 3]] and tgt.tolist() == [[0, 1]]  # two smallest minima, raster order
    src, tgt = match_indices(d, 3, order="distance")
    assert src.tolist() == [[1, 3, 0]] and tgt.tolist() == [[0, 1, 2]]
    src, tgt = match_indices(d, None)
    assert src.tolist() == [[0, 1, 2, 3]] and tgt.tolist() == [[2, 0, 3, 1]]
    assert match_indices(d, 99)[0].shape == (1, 4)  # capped


def test_match_ties_break_by_index() -> None:
    d = torch.tensor([[[1.0, 9.0], [1.0, 9.0], [1.0, 9.0]]])
    assert match_indices(d, 2)[0].tolist() == [[0, 1]]


def test_geometric_matching_pairs_overlapping_cells() -> None:
    """Two views of the same region, one shifted by a whole cell: location NN pairs cell p with cell p - 1."""
    grid_a = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="xy"), -1).reshape(1, 16, 2)
    grid_b = grid_a + torch.tensor([1.0, 0.0])
    d = torch.cdist(grid_a, grid_b)
    src, tgt = match_indices(d, 12)
    # Cells with x >= 1 coincide exactly with a cell of b shifted left by one column.
    assert torch.all(grid_a[0, src[0], 0] >= 1)
    torch.testing.assert_close(grid_b[0, tgt[0]], grid_a[0, src[0]])


def test_topk_assignment_official_vs_corrected() -> None:
    official = VICRegLLocalLoss(num_matches=(5, 3), topk_by_view_size=False)
    corrected = VICRegLLocalLoss(num_matches=(5, 3), topk_by_view_size=True)
    # (global a, global b) and (global a, local b): k for (a -> b, b -> a)
    assert official._ks(True, True) == (5, 3) and official._ks(True, False) == (5, 3)
    assert corrected._ks(True, True) == (5, 5) and corrected._ks(True, False) == (5, 3)
    maps, locs = _random_views(cells=(9, 9, 4))
    sizes = [x.shape[1] for x, _ in official.pair_matches(maps[0], maps[1], locs[0], locs[1], True, True)]
    assert sizes == [9, 9, 5, 3]  # feature matching keeps every cell (l2_all_matches)
    sizes = [x.shape[1] for x, _ in corrected.pair_matches(maps[0], maps[2], locs[0], locs[2], True, False)]
    assert sizes == [9, 4, 5, 3]


def _views(batch: int, n_views: int, n_global: int, flipped: bool = False) -> Views:
    boxes = torch.tensor([0.1, 0.1, 0.9, 0.9]).repeat(batch, n_views, 1)
    return Views(
        images=[torch.zeros(batch, n_views, 3, 8, 8)],
        boxes=boxes,
        flipped=torch.full((batch, n_views), flipped),
        image_size=torch.tensor([[200.0, 100.0]]).repeat(batch, 1),
        n_global=n_global,
    )


def _features(batch: int, n_views: int, channels: int = 12, cells: int = 3) -> list[DenseFeatures]:
    return [DenseFeatures(maps=[torch.randn(batch, channels, cells, cells)], pooled=torch.randn(batch, channels))
            for _ in range(n_views)]


def test_alpha_one_is_plain_vicreg() -> None:
    feats, views = _features(6, 4), _views(6, 4, 2)
    vicregl = VICRegL(12, 12, VICRegLConfig(alpha=1.0, projector="32-16"), arch="resnet18")
    vicreg = VICReg(12, VICRegConfig(projector="32-16"), arch="resnet18")
    vicreg.projector.load_state_dict(vicregl.projector.state_dict())
    assert vicregl.local_projector is None
    torch.testing.assert_close(vicregl(feats, views)["loss"], vicreg(feats, views)["loss"])


def test_alpha_zero_has_no_global_projector() -> None:
    method = VICRegL(12, 12, VICRegLConfig(alpha=0.0, local_projector="16-8"), arch="resnet18")
    out = method(_features(4, 3), _views(4, 3, 2))
    assert method.projector is None and "inv_global" not in out and torch.isfinite(out["loss"])


def test_alpha_combines_terms() -> None:
    feats, views = _features(6, 3), _views(6, 3, 2)
    method = VICRegL(12, 12, VICRegLConfig(alpha=0.75, projector="16-8", local_projector="16-8"), arch="resnet18")
    out = method(feats, views)
    glob = out["inv_global"] + out["var_global"] + out["cov_global"]
    loc = out["inv_local"] + out["var_local"] + out["cov_local"]
    torch.testing.assert_close(out["loss"], 0.75 * glob + 0.25 * loc)


def test_official_preset_ignores_flips() -> None:
    views = _views(2, 3, 2, flipped=True)
    official = VICRegL(12, 12, VICRegLConfig(preset="official", projector="8", local_projector="8"))
    corrected = VICRegL(12, 12, VICRegLConfig(preset="corrected", projector="8", local_projector="8"))
    g_off, g_cor = official.grids(views, 3, 3, 0), corrected.grids(views, 3, 3, 0)
    # Box x from 20 to 180 px: unflipped first column at 20 + 160/6, flipped at 180 - 160/6.
    assert g_off[0, 0, 0].item() == pytest.approx(20 + 160 / 6)
    assert g_cor[0, 0, 0].item() == pytest.approx(180 - 160 / 6)
    torch.testing.assert_close(g_off[..., 1], g_cor[..., 1])


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="alpha"):
        VICRegL(8, 8, VICRegLConfig(alpha=1.5))
    with pytest.raises(ValueError, match="preset"):
        VICRegL(8, 8, VICRegLConfig(preset="paper"))
    with pytest.raises(ValueError, match="features for 2 views"):
        VICRegL(12, 12, VICRegLConfig(projector="8", local_projector="8"))(_features(2, 2), _views(2, 3, 2))
    with pytest.raises(ValueError, match="at least 2 views"):
        VICRegLoss()([torch.randn(4, 8)], n_global=1)
    with pytest.raises(ValueError, match="grid"):
        VICRegLLocalLoss()([torch.randn(2, 4, 8)] * 2, [torch.randn(2, 5, 2)] * 2, n_global=2)
    with pytest.raises(ValueError, match="2 samples"):
        variance_loss(torch.randn(1, 4))


def test_the_tensor_level_criterion_equals_the_module() -> None:
    """VICRegLCriterion on the module's own projected tensors and Views.grids gives the module's loss and terms."""
    from densessl.objectives.vicregl import VICRegLCriterion

    torch.manual_seed(0)
    feats, views = _features(6, 3), _views(6, 3, 2, flipped=True)
    method = VICRegL(12, 12, VICRegLConfig(alpha=0.75, projector="16-8", local_projector="16-8"), arch="resnet18")
    expected = method(feats, views)
    pooled = torch.cat([f.pooled for f in feats])
    global_embeddings = list(method.projector.forward_groups(pooled, 3).split(6))
    local_embeddings = [method.local_projector(f.maps[-1]) for f in feats]
    assert local_embeddings[0].dim() == 3  # (B, N, D): the local projector's output, raster order
    grids = views.grids([f.maps[-1].shape[-2:] for f in feats])
    assert grids[0].shape == (6, 9, 2) and torch.equal(grids[1], method.grids(views, 3, 3, 1))
    got = VICRegLCriterion(alpha=0.75)(global_embeddings, local_embeddings, grids, n_global=2)
    for key in ("loss", "inv_global", "var_global", "cov_global", "inv_local", "var_local", "cov_local"):
        torch.testing.assert_close(got[key], expected[key])
