"""``benchmarks/quality.py``: variants and recipes per data kind (synthetic, scenes), pretraining settings reaching
the training command, cached runs of other settings refused, the CPU model recorded, the paired-differences table,
and the scene-set mode (pool, step budget, folder layout) on a tiny scene set. Pretraining and probes are stubbed;
only the match precision / RankMe test runs a (random-init) backbone, on two tiny val images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402


def test_default_variants_of_each_data_kind() -> None:
    """Without ``--variants`` a scene set runs every scene row (no alpha = 0.9 row); synthetic runs all its rows."""
    assert quality.default_variants("scenes") == ["random", "vicreg", "vicregl_a0.75", "geometric", "learned",
                                                  "densecl", "pixpro"]
    assert "vicregl_a0.9" in quality.default_variants("synthetic")
    assert set(quality.ALL_VARIANTS) == set(quality.variants("synthetic")) | set(quality.variants("scenes"))


def test_vit_tiny_rows_use_the_vit_recipes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = quality.variants("scenes", "vit_tiny")
    assert table["vicregl_a0.75"][0] == "configs/pretrain/vicregl_vit_tiny_scenes.yaml"
    assert "densecl" not in table and "pixpro" not in table  # no ViT recipe for them
    root = _scene_set(tmp_path / "scenes")
    with pytest.raises(SystemExit):
        quality.main(["--data-root", str(root), "--arch", "vit_tiny", "--variants", "densecl"])
    assert "variants ['densecl'] do not exist for --data scenes --arch vit_tiny" in capsys.readouterr().err


def test_pretrain_set_needs_its_own_work_dir(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        quality.main(["--data", "synthetic", "--variants", "vicreg", "--pretrain-set", "vicregl.projector=64-64-16"])
    assert "--pretrain-set changes the pretraining: give it its own --work-dir" in capsys.readouterr().err


def test_pretrain_set_reaches_the_training_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = []
    monkeypatch.setattr(quality, "run", lambda cmd, log, threads: commands.append(cmd))
    root = _scene_set(tmp_path / "scenes")
    quality.pretrain("vicreg", "scenes", root, 0, tmp_path / "run", None, 1, extra=("vicregl.projector=64-64-16",))
    assert commands[0][-2:] == ["vicregl.alpha=1.0", "vicregl.projector=64-64-16"]  # after the variant's own
    assert f"data.root={root / 'images' / 'train'}" in commands[0]  # the scene set's train images


def test_a_cached_run_of_other_settings_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from densessl.config_io import save_config
    from densessl.train.config import load_config

    commands = []
    monkeypatch.setattr(quality, "run", lambda cmd, log, threads: commands.append(cmd))
    data_root, run_dir = _scene_set(tmp_path / "scenes"), tmp_path / "run"
    config, overrides = quality.variants("scenes")["vicreg"]
    run_dir.mkdir()
    save_config(load_config(quality.ROOT / config, [f"data.root={data_root / 'images' / 'train'}", *overrides,
                                                    "train.seed=0"]), run_dir / "config.yaml")
    (run_dir / "export").mkdir()
    (run_dir / "export" / "model.safetensors").write_bytes(b"")
    (run_dir / "pretrain_time.json").write_text(json.dumps({"seconds": 5.0}))
    assert quality.pretrain("vicreg", "scenes", data_root, 0, run_dir, None, 1) == 5.0  # same settings: reused
    with pytest.raises(SystemExit, match=r"train\.epochs: run 12, asked 24.*own --work-dir"):
        quality.pretrain("vicreg", "scenes", data_root, 0, run_dir, 24, 1)
    with pytest.raises(SystemExit, match=r"vicregl\.projector: run '1024-1024-1024', asked '64-64-16'"):
        quality.pretrain("vicreg", "scenes", data_root, 0, run_dir, None, 1, extra=("vicregl.projector=64-64-16",))
    assert commands == []  # nothing was pretrained


def test_pretrain_cpu_models_reads_each_cached_run(tmp_path: Path) -> None:
    for name, timing in (("vicreg_s0", {"seconds": 1.0, "cpu_model": "Intel(R) Xeon(R) Processor"}),
                         ("vicreg_s1", {"seconds": 1.0, "cpu_model": "AMD EPYC"}),
                         ("vicreg_s2", {"seconds": 1.0})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pretrain_time.json").write_text(json.dumps(timing))
    (tmp_path / "random_s0").mkdir()  # no pretraining: not listed
    runs = [tmp_path / n for n in ("vicreg_s0", "vicreg_s1", "vicreg_s2", "random_s0")]
    assert quality.pretrain_cpu_models(runs) == {"vicreg_s0": "Intel(R) Xeon(R) Processor", "vicreg_s1": "AMD EPYC",
                                                 "vicreg_s2": "unrecorded"}


def test_pretrain_records_the_cpu_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "run", lambda cmd, log, threads: None)
    quality.pretrain("vicreg", "synthetic", None, 0, tmp_path / "run", None, 1)
    timing = json.loads((tmp_path / "run" / "pretrain_time.json").read_text())
    assert timing["cpu_model"] == quality.cpu_model() and timing["cpu_model"]


def test_the_table_adds_same_seed_differences_to_vicreg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The loop over seeds and variants, with pretraining and probes stubbed: mean ± std rows and the ``paired``
    differences of every row to VICReg land in the result file."""
    scores = {("vicreg", 0): 10.0, ("vicreg", 1): 11.0, ("random", 0): 9.0, ("random", 1): 9.5}

    def fake_pretrain(variant, data, data_root, seed, run_dir, *args, **kwargs):
        return 60.0

    def fake_evaluate(weights, seed, protocol, out, *args, **kwargs):
        variant = "random" if weights == "random" else Path(weights).name.rsplit("_s", 1)[0]  # the run folder
        return scores[(variant, seed)] + (0.5 if protocol == "knn" else 0.0)

    monkeypatch.setattr(quality, "pretrain", fake_pretrain)
    monkeypatch.setattr(quality, "evaluate", fake_evaluate)
    out = tmp_path / "table.json"
    assert quality.main(["--data", "synthetic", "--variants", "random", "vicreg", "--seeds", "0", "1", "--no-match",
                         "--work-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["results"]["vicreg"]["linear"] == [10.0, 11.0]
    assert result["results"]["vicreg"]["pretrain_s"] == [60.0, 60.0]
    diff = result["paired"]["differences"]["random"]["knn"]
    assert diff["diffs"] == [-1.0, -1.5] and diff["ahead"] == 0
    printed = capsys.readouterr().out
    assert "10.50 ± 0.71" in printed and "same-seed difference to vicreg" in printed and "-1.25 ± 0.35 (0/2)" in printed


def _scene_set(root: Path, unlabeled: bool = False) -> Path:
    """A tiny scene set in the folder layout: 3 train and 2 val images with masks, optionally an unlabeled pool."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
            Image.fromarray(rng.integers(0, 2, (40, 48), dtype=np.uint8)).save(root / "masks" / split / f"{i}.png")
    if unlabeled:
        (root / "unlabeled").mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "unlabeled" / f"u{i}.jpg")
    (root / "classes.txt").write_text("background\nthing\n")
    return root


def test_scene_pool_is_the_train_images_or_links_the_unlabeled_pool(tmp_path: Path) -> None:
    plain = _scene_set(tmp_path / "plain")
    assert quality.scene_pool(plain, tmp_path / "work_plain") == plain / "images" / "train"
    assert quality.count_images(plain / "images" / "train") == 3
    ccp_like = _scene_set(tmp_path / "ccp", unlabeled=True)
    pool = quality.scene_pool(ccp_like, tmp_path / "work")
    assert pool == tmp_path / "work" / "pool"
    assert quality.count_images(pool) == 3 + 4  # train + unlabeled, never val
    assert quality.scene_pool(ccp_like, tmp_path / "work") == pool  # idempotent: the links are reused


def test_epochs_follow_the_step_budget() -> None:
    assert quality.epochs_for_steps(200, 572, 32) == 12  # Stanford Background: 17 steps an epoch -> 204 steps
    assert quality.epochs_for_steps(200, 845, 32) == 8  # LabelMeFacade: 26 steps an epoch -> 208 steps
    assert quality.epochs_for_steps(10, 1898, 32) == 1  # never below one epoch
    with pytest.raises(ValueError, match="too few for one step"):
        quality.epochs_for_steps(200, 16, 32)


def test_a_scene_set_selects_the_scene_recipes_and_its_own_work_dir(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = _scene_set(tmp_path / "my_scenes")
    seen = {}

    def fake_pretrain(variant, data, data_root, seed, run_dir, epochs, *args, **kwargs):
        seen.update(data=data, data_root=data_root, run_dir=run_dir, epochs=epochs)
        (run_dir / "export").mkdir(parents=True)
        (run_dir / "export" / "model.safetensors").write_bytes(b"")
        return 1.0

    monkeypatch.setattr(quality, "pretrain", fake_pretrain)
    monkeypatch.setattr(quality, "evaluate", lambda *args, **kwargs: 10.0)
    monkeypatch.setattr(quality, "count_images", lambda folder: 96)  # 3 steps of 32 an epoch
    out = tmp_path / "out.json"
    assert quality.main(["--data-root", str(root), "--variants", "vicreg", "--seeds", "0", "--no-match",
                         "--steps", "9", "--work-dir", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert seen["data"] == "scenes" and seen["epochs"] == 3 and seen["run_dir"] == tmp_path / "work" / "vicreg_s0"
    result = json.loads(out.read_text())
    assert result["settings"]["data_root"] == str(root)
    assert set(result["results"]["vicreg"]) == {"linear_last", "knn_last", "linear_l34", "knn_l34", "pretrain_s"}
    assert quality.variants("scenes")["densecl"][0] == "configs/pretrain/densecl_resnet18_scenes.yaml"
    assert "vicregl_a0.9" not in quality.variants("scenes")


def test_a_scene_set_is_evaluated_as_its_own_folder_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _scene_set(tmp_path / "scenes")
    commands = []

    def fake_run(cmd, log, threads):
        commands.append(cmd)
        Path(cmd[cmd.index("--out") + 1]).write_text(json.dumps({"mIoU": 12.5}))

    monkeypatch.setattr(quality, "run", fake_run)
    out = tmp_path / "knn_last.json"
    assert quality.evaluate("random", 0, "knn", out, 224, 1, "scenes", root, [-1]) == 12.5
    cmd = " ".join(commands[0])
    assert f"--dataset folder --data-root {root}" in cmd and "--arch resnet18" in cmd
    assert quality.evaluate("random", 0, "knn", out, 224, 1, "scenes", root, [-1]) == 12.5  # cached
    assert len(commands) == 1


def test_match_precision_and_rankme_read_the_scene_val_images(tmp_path: Path) -> None:
    root = _scene_set(tmp_path / "scenes")
    precision = quality.match_score(None, 0, 8, 64, tmp_path / "match.json", "scenes", root)
    assert 0.0 <= precision <= 100.0
    ranks = quality.rankme_scores(None, 0, 8, "scenes", root, tmp_path / "rankme.json")
    assert ranks["images"] == 2  # the scene set's two val images
    assert ranks["rankme_dense"] > 0


def test_a_folder_that_is_not_a_scene_set_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _scene_set(tmp_path / "scenes")
    (root / "masks" / "val" / "0.png").unlink()
    (root / "masks" / "val" / "1.png").unlink()
    (root / "masks" / "val").rmdir()
    with pytest.raises(SystemExit):
        quality.main(["--data-root", str(root), "--variants", "vicreg"])
    assert "is not a scene set in the folder layout: missing masks/val" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--data", "scenes"])
    assert "--data scenes needs --data-root DIR" in capsys.readouterr().err


def test_video_scores_run_the_propagation_tool_and_cache(tmp_path: Path) -> None:
    from tests.video import write_davis

    davis = write_davis(tmp_path / "davis", "2016")
    out = tmp_path / "run" / "davis2016_last.json"
    out.parent.mkdir()
    scores = quality.video_scores("random", 0, davis, -1, out, threads=1)
    assert set(scores) == {"JF", "J", "F"} and 0.0 <= scores["JF"] <= 100.0
    assert json.loads(out.read_text())["settings"]["level"] == -1
    out.write_text(json.dumps({"J&F": 1.0, "J": {"mean": 2.0}, "F": {"mean": 0.0}}))
    assert quality.video_scores("random", 0, davis, -1, out, threads=1) == {"JF": 1.0, "J": 2.0, "F": 0.0}  # cached


def test_video_root_must_be_a_davis_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _scene_set(tmp_path / "scenes")
    with pytest.raises(SystemExit):
        quality.main(["--data-root", str(root), "--video-root", str(tmp_path)])
    assert "is not a DAVIS folder: no ImageSets/2016/val.txt" in capsys.readouterr().err
