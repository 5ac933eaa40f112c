"""``benchmarks/quality_merge.py``: seeds of several quality result files in one table, same-seed differences."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality_merge  # noqa: E402

SETTINGS = {"data": "scenes", "dataset": "stanford_background", "arch": "resnet18", "epochs": None,
            "pretrain_set": [], "input_size": 224, "protocol_levels": {"last": [-1]}, "match_images": 64,
            "match_size": 224, "threads": 2,
            "variants": {"vicreg": ["recipe.yaml", ["vicregl.alpha=1.0"]], "vicregl_a0.75": ["recipe.yaml", []]}}


def _result(seeds: list[int], vicreg: list[float], vicregl: list[float], cpu: str = "Intel") -> dict:
    return {"machine": {"cpu_model": cpu}, "settings": {**SETTINGS, "seeds": seeds},
            "results": {"vicreg": {"knn_last": vicreg, "pretrain_s": [1.0] * len(seeds)},
                        "vicregl_a0.75": {"knn_last": vicregl, "pretrain_s": [1.0] * len(seeds)}}}


def test_paired_differences_are_per_seed_and_count_the_seeds_ahead() -> None:
    rows = {"vicreg": {"knn_last": [9.0, 10.0, 9.5], "pretrain_s": [1.0, 1.0, 1.0]},
            "vicregl_a0.75": {"knn_last": [9.5, 10.1, 9.4], "pretrain_s": [2.0, 2.0, 2.0]}}
    paired = quality_merge.paired_differences(rows, "vicreg")
    assert list(paired) == ["vicregl_a0.75"] and list(paired["vicregl_a0.75"]) == ["knn_last"]
    d = paired["vicregl_a0.75"]["knn_last"]
    assert d["diffs"] == pytest.approx([0.5, 0.1, -0.1])
    assert d["mean"] == pytest.approx(0.5 / 3)
    assert d["std"] == pytest.approx(0.3055, abs=1e-4)
    assert (d["ahead"], d["seeds"]) == (2, 3)
    assert quality_merge.paired_differences(rows, "densecl") == {}
    assert "+0.17 ± 0.31 (2/3)" in quality_merge.format_paired(paired, "vicreg")


def test_merge_concatenates_disjoint_seeds_in_file_order() -> None:
    merged, notes = quality_merge.merge_results(
        [_result([0, 1], [9.0, 9.2], [9.4, 9.3]), _result([3], [9.9], [10.0])], ["a.json", "b.json"])
    assert notes == []
    assert merged["settings"]["seeds"] == [0, 1, 3]
    assert merged["results"]["vicreg"]["knn_last"] == [9.0, 9.2, 9.9]
    assert merged["results"]["vicregl_a0.75"]["knn_last"] == [9.4, 9.3, 10.0]
    assert merged["merged_from"] == ["a.json", "b.json"]


def test_merge_refuses_other_settings_and_repeated_seeds() -> None:
    other = _result([3], [9.9], [10.0])
    other["settings"]["epochs"] = 24
    with pytest.raises(ValueError, match="b.json and a.json differ in 'epochs'"):
        quality_merge.merge_results([_result([0], [9.0], [9.4]), other], ["a.json", "b.json"])
    with pytest.raises(ValueError, match=r"seed\(s\) \[0\] of b.json are already in a.json"):
        quality_merge.merge_results([_result([0, 1], [9.0, 9.1], [9.4, 9.5]), _result([0], [9.0], [9.4])],
                                    ["a.json", "b.json"])
    recipe = _result([3], [9.9], [10.0])
    recipe["settings"]["variants"] = {**SETTINGS["variants"], "vicreg": ["other.yaml", []]}
    with pytest.raises(ValueError, match="vicreg was pretrained from different recipes"):
        quality_merge.merge_results([_result([0], [9.0], [9.4]), recipe], ["a.json", "b.json"])


def test_one_seed_may_come_from_two_files_with_other_variants() -> None:
    pretrained = _result([0, 1], [9.0, 9.2], [9.4, 9.3])
    del pretrained["results"]["vicreg"]  # seeds 0-1 of VICRegL alone; VICReg's seed 1 and 0 come later, in that order
    later = _result([1, 0], [9.1, 8.9], [0.0, 0.0])
    del later["results"]["vicregl_a0.75"]
    merged, notes = quality_merge.merge_results([pretrained, later], ["a.json", "b.json"])
    assert notes == [] and merged["settings"]["seeds"] == [0, 1]
    assert merged["results"]["vicreg"]["knn_last"] == [8.9, 9.1]  # aligned by seed, not by file order
    assert merged["results"]["vicregl_a0.75"]["knn_last"] == [9.4, 9.3]
    paired = quality_merge.paired_differences(merged["results"], "vicreg")
    assert paired["vicregl_a0.75"]["knn_last"]["diffs"] == pytest.approx([0.5, 0.2])
    third = _result([2], [9.5], [9.9])
    del third["results"]["vicregl_a0.75"]
    merged, notes = quality_merge.merge_results([pretrained, later, third], ["a.json", "b.json", "c.json"])
    assert list(merged["results"]) == ["vicreg"] and merged["results"]["vicreg"]["knn_last"] == [8.9, 9.1, 9.5]
    assert notes == ["variant vicregl_a0.75 has no value for seed(s) [2]: left out"]


def test_match_settings_matter_only_when_both_files_have_the_column() -> None:
    with_match = _result([0], [9.0], [9.4])
    with_match["results"]["vicreg"]["match"] = [40.0]
    no_match = _result([1], [9.9], [10.0])
    no_match["settings"]["match_images"] = 16  # a --no-match file: its match settings changed no value
    merged, notes = quality_merge.merge_results([with_match, no_match], ["a.json", "b.json"])
    assert "match" not in merged["results"]["vicreg"] and any("match" in n for n in notes)
    other_match = _result([1], [9.9], [10.0])
    other_match["settings"]["match_images"] = 16
    other_match["results"]["vicreg"]["match"] = [41.0]
    with pytest.raises(ValueError, match="differ in 'match_images'"):
        quality_merge.merge_results([with_match, other_match], ["a.json", "b.json"])


def test_files_of_two_scene_sets_do_not_merge() -> None:
    other_set = _result([1], [9.9], [10.0])
    other_set["settings"]["dataset"] = "labelmefacade"
    with pytest.raises(ValueError, match="differ in 'dataset'"):
        quality_merge.merge_results([_result([0], [9.0], [9.4]), other_set], ["a.json", "b.json"])


def test_merge_leaves_out_what_one_file_lacks_and_warns_on_cpu_models() -> None:
    second = _result([3], [9.9], [10.0], cpu="AMD")
    del second["results"]["vicregl_a0.75"]
    second["results"]["vicreg"]["linear_last"] = [11.0]
    merged, notes = quality_merge.merge_results([_result([0], [9.0], [9.4]), second], ["a.json", "b.json"])
    assert list(merged["results"]) == ["vicreg"]
    assert list(merged["results"]["vicreg"]) == ["knn_last", "pretrain_s"]
    assert any("vicregl_a0.75 has no value for seed(s) [3]" in n for n in notes)
    assert any("['linear_last'] not in every file" in n for n in notes)
    assert any("different CPU models (AMD, Intel)" in n for n in notes)
    with pytest.raises(ValueError, match=r"vicregl_a0.75 \(no seed\(s\) \[3\]\)"):
        quality_merge.merge_results([_result([0], [9.0], [9.4]), second], ["a.json", "b.json"],
                                    variants=["vicreg", "vicregl_a0.75"])


def test_cli_writes_the_merged_file_and_refuses_to_overwrite_an_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "merged.json"
    a.write_text(json.dumps(_result([0, 1], [9.0, 9.2], [9.4, 9.3])))
    b.write_text(json.dumps(_result([2], [9.9], [10.0])))
    assert quality_merge.main([str(a), str(b), "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["settings"]["seeds"] == [0, 1, 2]
    diff = merged["paired"]["differences"]["vicregl_a0.75"]["knn_last"]
    assert diff["ahead"] == 3 and diff["seeds"] == 3
    printed = capsys.readouterr().out
    assert "seeds [0, 1, 2]" in printed and "same-seed difference to vicreg" in printed
    with pytest.raises(SystemExit):
        quality_merge.main([str(a), str(b), "--out", str(a)])
    assert "is one of the inputs" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit):
        quality_merge.main([str(a), str(tmp_path / "bad.json"), "--out", str(out)])
    assert "cannot read" in capsys.readouterr().err
