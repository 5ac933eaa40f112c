"""DAVIS J and F on hand-built masks, with the values derived by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from densessl.video.metrics import (
    BoundaryScore,
    SequenceScores,
    boundary_score,
    boundary_tolerance,
    contour_accuracy,
    dilate_disk,
    evaluate_sequence,
    region_similarity,
    seg2bmap,
    summarize,
)


def _box(top: int, left: int, height: int, width: int, shape: tuple[int, int] = (100, 100)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + height, left:left + width] = True
    return mask


def test_iou_of_offset_squares_and_empty_masks() -> None:
    # 10x10 squares 3 px apart horizontally: intersection 10 * 7 = 70, union 200 - 70 = 130.
    assert region_similarity(_box(10, 10, 10, 10), _box(10, 13, 10, 10)) == pytest.approx(70 / 130)
    empty = np.zeros((100, 100), bool)
    assert region_similarity(empty, empty) == 1.0  # both empty: 1
    assert region_similarity(empty, _box(0, 0, 5, 5)) == 0.0
    assert region_similarity(_box(0, 0, 5, 5), empty) == 0.0


def test_iou_leaves_out_void_pixels() -> None:
    gt = _box(10, 10, 10, 10)
    pred = gt | _box(10, 20, 10, 1)  # 10 extra pixels ...
    void = _box(10, 20, 10, 1)  # ... that are void
    assert region_similarity(pred, gt) == pytest.approx(100 / 110)
    assert region_similarity(pred, gt, void) == 1.0


def test_seg2bmap_marks_the_pixels_before_a_change_and_not_the_image_border() -> None:
    band = np.zeros((100, 100), bool)
    band[50:] = True  # a band down to the bottom edge: its only boundary is row 49 (the last row and column
    expected = np.zeros((100, 100), bool)  # compare with the right / bottom neighbour only)
    expected[49] = True
    assert np.array_equal(seg2bmap(band), expected)
    square = _box(20, 20, 20, 20)  # rows/cols 20..39: outside top-left ring + inside bottom-right ring
    boundary = seg2bmap(square)
    assert boundary[19, 19:40].all() and boundary[19:40, 19].all()  # 21 + 20 px
    assert boundary[39, 20:40].all() and boundary[20:40, 39].all()  # 20 + 19 px
    assert boundary.sum() == 80


def test_disk_dilation_and_tolerance() -> None:
    point = np.zeros((21, 21), bool)
    point[10, 10] = True
    disk2 = dilate_disk(point, 2)
    assert disk2.sum() == 13  # dx^2 + dy^2 <= 4: 1 + 4 + 4 + 4
    assert disk2[12, 10] and disk2[11, 11] and not disk2[12, 11]  # (2, 1): 5 > 4
    assert dilate_disk(point, 8).sum() == 197  # lattice points in a radius-8 disk
    corner = np.zeros((5, 5), bool)
    corner[0, 0] = True
    assert dilate_disk(corner, 1).sum() == 3  # outside the image counts as background
    assert boundary_tolerance(480, 854) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance(100, 100) == 2  # ceil(0.008 * 141.4)
    assert boundary_tolerance(100, 100, bound_th=5) == 5  # >= 1: pixels


def test_contour_accuracy_within_and_beyond_the_tolerance() -> None:
    gt = np.zeros((100, 100), bool)
    gt[50:] = True  # boundary: row 49
    for shift, f in ((0, 1.0), (1, 1.0), (2, 1.0), (3, 0.0)):  # tolerance 2 px at 100x100
        pred = np.zeros((100, 100), bool)
        pred[50 + shift:] = True  # boundary: row 49 + shift
        assert contour_accuracy(pred, gt) == f, shift


def test_boundary_precision_and_recall_of_a_half_band() -> None:
    gt = np.zeros((100, 100), bool)
    gt[50:] = True  # boundary: row 49, 100 px
    pred = np.zeros((100, 100), bool)
    pred[50:, :50] = True  # boundary: row 49 cols 0..49 (50 px) + col 49 rows 50..99 (50 px) = 100 px
    score = boundary_score(pred, gt)
    # precision: row 49 cols 0..49 + col 49 rows 50, 51 (1 and 2 px from row 49) = 52 of 100
    # recall: row 49 cols 0..49 + cols 50, 51 (1 and 2 px from (49, 49)) = 52 of 100
    assert score.precision == pytest.approx(0.52) and score.recall == pytest.approx(0.52)
    assert score.f == pytest.approx(0.52)


def test_boundary_edge_cases() -> None:
    empty = np.zeros((100, 100), bool)
    square = _box(20, 20, 20, 20)
    assert boundary_score(empty, square) == BoundaryScore(1.0, 0.0, 0.0)  # no prediction
    assert (boundary_score(square, empty).precision, boundary_score(square, empty).recall) == (0.0, 1.0)
    assert boundary_score(square, empty).f == 0.0
    assert boundary_score(empty, empty).f == 1.0  # neither: P = R = 1
    assert boundary_score(square, square).f == 1.0


def _frames(*masks: np.ndarray) -> list[np.ndarray]:
    return [m.astype(np.uint8) for m in masks]


def test_first_and_last_frames_are_not_scored() -> None:
    obj = _box(20, 20, 20, 20)
    gt = _frames(obj, obj, obj, obj, obj)
    wrong = np.zeros((100, 100), np.uint8)
    pred = [wrong, obj.astype(np.uint8), obj.astype(np.uint8), obj.astype(np.uint8), wrong]
    scores = evaluate_sequence("seq", pred, gt)
    assert scores.j.shape == (1, 3) and scores.frames == 5
    assert scores.j_mean == 1.0 and scores.f_mean == 1.0 and scores.jf_mean == 1.0


def test_j_mean_and_recall_over_the_evaluated_frames() -> None:
    obj = _box(0, 0, 10, 10)
    half = _box(0, 0, 10, 4)  # IoU 40 / 100 = 0.4
    gt = _frames(obj, obj, obj, obj, obj)
    pred = _frames(obj, obj, half, np.zeros((100, 100), bool), obj)
    scores = evaluate_sequence("seq", pred, gt)
    assert scores.j[0] == pytest.approx([1.0, 0.4, 0.0])
    assert scores.j_mean == pytest.approx(1.4 / 3)
    assert scores.j_recall_per_object[0] == pytest.approx(1 / 3)  # only J > 0.5 counts


def test_objects_come_from_the_first_frame_and_are_averaged() -> None:
    first = np.zeros((100, 100), np.uint8)
    first[:10, :10] = 1
    first[50:60, 50:60] = 2
    later = first.copy()
    later[90:, 90:] = 3  # not in the first frame: not an object
    pred = later.copy()
    pred[pred == 2] = 0  # object 2 missed: J 0, object 1 perfect: J 1
    scores = evaluate_sequence("seq", [first, pred, pred], [first, later, later])
    assert scores.object_ids == [1, 2]
    assert scores.j_mean_per_object == pytest.approx([1.0, 0.0])
    assert scores.j_mean == pytest.approx(0.5)


def test_void_counts_as_background_unless_excluded() -> None:
    gt = np.zeros((100, 100), np.uint8)
    gt[:10, :10] = 1
    gt[:10, 10:20] = 255  # void next to the object
    pred = np.zeros((100, 100), np.uint8)
    pred[:10, :20] = 1  # covers object and void
    official = evaluate_sequence("seq", [gt, pred, gt], [gt, gt, gt])
    assert official.j[0, 0] == pytest.approx(0.5)  # the official semi-supervised evaluation: void = background
    excluded = evaluate_sequence("seq", [gt, pred, gt], [gt, gt, gt], exclude_void=True)
    assert excluded.j[0, 0] == 1.0


def test_overall_scores_are_means_over_objects_not_frames_or_sequences() -> None:
    long_one = SequenceScores("a", [1], j=np.ones((1, 12)), f=np.ones((1, 12)), frames=14)
    two_objects = SequenceScores("b", [1, 2], j=np.zeros((2, 3)), f=np.full((2, 3), 0.5), frames=5)
    overall = summarize([long_one, two_objects])
    # per-object J means 1, 0, 0 -> 1/3 (over frames: 12/18; over sequences: 1/2)
    assert overall.j_mean == pytest.approx(1 / 3) and overall.objects == 3
    assert overall.f_mean == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert overall.jf_mean == pytest.approx((overall.j_mean + overall.f_mean) / 2)
    assert overall.j_recall == pytest.approx(1 / 3) and overall.f_recall == pytest.approx(1 / 3)


def test_sequences_need_three_frames_and_one_object() -> None:
    obj = _box(0, 0, 10, 10).astype(np.uint8)
    with pytest.raises(ValueError, match="at least 3"):
        evaluate_sequence("short", [obj, obj], [obj, obj])
    empty = np.zeros((100, 100), np.uint8)
    with pytest.raises(ValueError, match="no object"):
        evaluate_sequence("empty", [empty] * 3, [empty] * 3)
