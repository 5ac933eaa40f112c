"""ConfusionMatrix / SegMetrics on hand-computed examples, and SegEvalResult renderings."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist

from densessl.seg.metrics import ConfusionMatrix
from densessl.seg.result import SegEvalResult


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def test_perfect_prediction_is_100() -> None:
    target = torch.randint(0, 4, (2, 8, 8))
    cm = ConfusionMatrix(4)
    cm.update(target.clone(), target)
    metrics = cm.compute()
    assert metrics.miou == 100.0 and metrics.pixel_acc == 100.0 and metrics.mean_acc == 100.0
    assert metrics.num_pixels == 128


def test_one_wrong_pixel_exact_values() -> None:
    cm = ConfusionMatrix(2)
    cm.update(_t([0, 1, 1, 1]), _t([0, 0, 1, 1]))
    m = cm.compute()
    # class 0: TP 1, FN 1, FP 0 -> 1/2; class 1: TP 2, FP 1 -> 2/3
    assert m.per_class_iou == pytest.approx([50.0, 200.0 / 3.0])
    assert m.miou == pytest.approx((50.0 + 200.0 / 3.0) / 2.0)
    assert m.pixel_acc == pytest.approx(75.0)
    assert m.per_class_acc == pytest.approx([50.0, 100.0])
    assert m.mean_acc == pytest.approx(75.0)
    assert cm.matrix.tolist() == [[1, 1], [0, 2]]
    assert cm.matrix.dtype == torch.int64


def test_ignore_pixels_are_skipped() -> None:
    cm = ConfusionMatrix(2, ignore_index=255)
    target = _t([[0, 255], [1, 255]])
    pred = _t([[0, 1], [1, 0]])  # predictions on ignored pixels are wrong but must not count
    cm.update(pred, target)
    m = cm.compute()
    assert m.miou == 100.0 and m.num_pixels == 2


def test_absent_class_is_nan_and_excluded_predicted_only_class_counts() -> None:
    cm = ConfusionMatrix(4)
    cm.update(_t([0, 0, 1, 2]), _t([0, 0, 1, 1]))
    m = cm.compute()
    # class 0: 2/2; class 1: TP 1, FN 1 -> 1/2; class 2: only predicted -> 0; class 3: absent -> NaN
    assert m.per_class_iou[:3] == pytest.approx([100.0, 50.0, 0.0])
    assert math.isnan(m.per_class_iou[3])
    assert m.miou == pytest.approx(50.0)
    assert math.isnan(m.per_class_acc[2]) and math.isnan(m.per_class_acc[3])
    assert m.mean_acc == pytest.approx(75.0)


def test_empty_matrix_is_nan() -> None:
    cm = ConfusionMatrix(3)
    cm.update(_t([1, 2]), _t([255, 255]))
    m = cm.compute()
    assert math.isnan(m.miou) and math.isnan(m.pixel_acc) and m.num_pixels == 0


def test_batches_and_merge_equal_one_update() -> None:
    pred, target = torch.randint(0, 5, (6, 10, 10)), torch.randint(0, 5, (6, 10, 10))
    target[0, :3] = 255
    whole = ConfusionMatrix(5)
    whole.update(pred, target)
    first, second = ConfusionMatrix(5), ConfusionMatrix(5)
    first.update(pred[:2], target[:2])
    first.update(pred[2:4], target[2:4])
    second.update(pred[4:], target[4:])
    assert torch.equal(first.merge(second).matrix, whole.matrix)
    with pytest.raises(ValueError, match="num_classes=4"):
        whole.merge(ConfusionMatrix(4))


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (_t([0, 1]), _t([0, 1, 1]), r"\(2,\) vs \(3,\)"),
        (_t([0, 1]), _t([0, 7]), r"target values \[7\]"),
        (_t([0, 3]), _t([0, 1]), r"pred values \[3\]"),
        (torch.zeros(2), _t([0, 1]), "integer"),
    ],
)
def test_bad_inputs_raise(pred: torch.Tensor, target: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConfusionMatrix(3).update(pred, target)


def test_all_reduce_identity_without_and_with_a_process_group(tmp_path) -> None:
    cm = ConfusionMatrix(2)
    cm.update(_t([0, 1, 1]), _t([0, 0, 1]))
    before = cm.matrix.clone()
    assert torch.equal(cm.all_reduce().matrix, before)  # not initialized: no-op
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert torch.equal(cm.all_reduce().matrix, before)  # one rank: the sum is itself
    finally:
        dist.destroy_process_group()


def test_result_to_dict_and_table() -> None:
    cm = ConfusionMatrix(3)
    cm.update(_t([0, 1]), _t([0, 1]))
    result = SegEvalResult(metrics=cm.compute(), settings={"k": 3, "loss": float("nan"), "size": (2, 2)},
                           class_names=["a", "b", "c"])
    record = result.to_dict()
    assert record["mIoU"] == 100.0 and record["per_class_iou"] == {"a": 100.0, "b": 100.0, "c": None}
    assert record["settings"] == {"k": 3, "loss": None, "size": [2, 2]}
    json.dumps(record, allow_nan=False)
    table = result.format_table()
    assert "mIoU" in table and "n/a" in table and "settings: k=3" in table
