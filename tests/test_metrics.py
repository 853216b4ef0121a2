import json

import numpy as np
import pytest
import tifffile

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.metrics import (
    DSB_THRESHOLDS,
    evaluate,
    match_objects,
    pixel_scores,
    touching_objects,
)


def test_dsb_thresholds():
    assert len(DSB_THRESHOLDS) == 10
    assert DSB_THRESHOLDS[0] == 0.5 and DSB_THRESHOLDS[-1] == 0.95
    np.testing.assert_allclose(np.diff(DSB_THRESHOLDS), 0.05)


def _square(shape, y, x, size, value=1):
    out = np.zeros(shape, np.int32)
    out[y : y + size, x : x + size] = value
    return out


def test_shifted_square_known_iou():
    # 10x10 square shifted by 2 columns: intersection 80, union 120, IoU 2/3.
    gt = _square((20, 20), 0, 0, 10)
    pred = _square((20, 20), 0, 2, 10, value=9)
    m = match_objects(gt, pred)
    matched = [t < 2 / 3 for t in DSB_THRESHOLDS]  # 0.5, 0.55, 0.6, 0.65
    np.testing.assert_array_equal(m.tp, np.array(matched, int))
    np.testing.assert_array_equal(m.fp, 1 - np.array(matched, int))
    np.testing.assert_array_equal(m.fn, 1 - np.array(matched, int))
    assert m.n_true == m.n_pred == 1
    assert m.dsb_score == pytest.approx(0.4)
    assert m.pq == pytest.approx(2 / 3)
    assert m.f1(0.5) == 1.0 and m.f1(0.7) == 0.0
    assert m.precision(0.65) == 1.0 and m.recall(0.7) == 0.0
    assert m.ap(0.6) == 1.0
    with pytest.raises(NapariUnetError, match="0.52 was not evaluated"):
        m.ap(0.52)


@pytest.mark.parametrize("pred_pixels, iou", [(20, 0.5), (22, 0.55), (30, 0.75)])
def test_iou_equal_to_threshold_does_not_match(pred_pixels, iou):
    gt = np.zeros((4, 10), np.int32)
    gt[:, :] = 1  # 40 pixels
    pred = np.zeros_like(gt)
    pred.ravel()[:pred_pixels] = 3  # inside gt: IoU = pred_pixels / 40
    m = match_objects(gt, pred)
    expected = np.array([iou > t for t in DSB_THRESHOLDS], int)
    np.testing.assert_array_equal(m.tp, expected)
    assert not m.tp[list(DSB_THRESHOLDS).index(iou)]


def test_counts_with_unmatched_objects_and_non_consecutive_labels():
    shape = (30, 30)
    gt = (
        _square(shape, 0, 0, 10, 5) + _square(shape, 15, 15, 10, 1000) + _square(shape, 0, 20, 5, 7)
    )
    # Perfect match, 1 shifted by one row (IoU 90/110), one false positive.
    pred = _square(shape, 0, 0, 10, 2) + _square(shape, 16, 15, 10, 1) + _square(shape, 25, 0, 4, 3)
    m = match_objects(gt, pred)
    assert (m.n_true, m.n_pred) == (3, 3)
    iou2 = 90 / 110
    tp = np.array([1 + (iou2 > t) for t in DSB_THRESHOLDS])
    np.testing.assert_array_equal(m.tp, tp)
    np.testing.assert_array_equal(m.fp, 3 - tp)
    np.testing.assert_array_equal(m.fn, 3 - tp)
    np.testing.assert_allclose(m.matched_iou_sum[0], 1 + iou2)
    assert m.precision() == pytest.approx(2 / 3)
    assert m.f1() == pytest.approx(2 / 3)
    assert m.ap() == pytest.approx(2 / 4)
    assert m.pq == pytest.approx((1 + iou2) / (2 + 0.5 + 0.5))
    assert m.dsb_score == pytest.approx(np.mean(tp / (tp + 2 * (3 - tp))))


def test_empty_images():
    empty = np.zeros((5, 5), np.uint16)
    one = _square((5, 5), 1, 1, 2)
    both = match_objects(empty, empty)
    assert both.dsb_score == 1.0 and both.f1() == 1.0 and both.pq == 1.0
    assert both.precision() == 1.0 and both.recall() == 1.0
    missed = match_objects(one, empty)
    assert missed.dsb_score == 0.0 and missed.recall() == 0.0 and missed.precision() == 0.0
    spurious = match_objects(empty, one)
    assert spurious.dsb_score == 0.0 and spurious.precision() == 0.0
    assert int(spurious.fp[0]) == 1 and int(missed.fn[0]) == 1


def test_low_threshold_uses_one_to_one_assignment():
    # One prediction overlapping two true objects with IoU 1/3 each.
    gt = np.zeros((2, 6), np.int32)
    gt[:, :3] = 1
    gt[:, 3:] = 2
    pred = np.zeros_like(gt)
    pred[:, 2:4] = 1  # 4 px: overlaps each gt by 2 px; IoU = 2 / (6 + 4 - 2) = 0.25
    m = match_objects(gt, pred, thresholds=(0.2, 0.5))
    np.testing.assert_array_equal(m.tp, [1, 0])
    np.testing.assert_array_equal(m.fn, [1, 2])
    np.testing.assert_allclose(m.matched_iou_sum, [0.25, 0.0])


def test_match_objects_errors():
    with pytest.raises(NapariUnetError, match=r"\(4, 5\).*\(5, 4\)"):
        match_objects(np.zeros((4, 5), int), np.zeros((5, 4), int))
    with pytest.raises(NapariUnetError, match="negative"):
        match_objects(np.zeros((2, 2), int), -np.ones((2, 2), int))
    with pytest.raises(NapariUnetError, match="non-integer"):
        match_objects(np.zeros((2, 2), int), np.full((2, 2), 0.5))
    with pytest.raises(NapariUnetError, match=r"\[0, 1\)"):
        match_objects(np.zeros((2, 2), int), np.zeros((2, 2), int), thresholds=(1.0,))


def _random_labels(rng, shape, n):
    """Random overlapping rectangles, later ones on top; ids random and sparse."""
    labels = np.zeros(shape, np.int64)
    ids = rng.choice(10_000, size=n, replace=False) + 1
    for i in ids:
        y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        h, w = rng.integers(2, 12, size=2)
        labels[y : y + h, x : x + w] = i
    return labels


def _brute_force(gt, pred, thresholds):
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [j for j in np.unique(pred) if j]
    iou = np.zeros((len(g_ids), len(p_ids)))
    for a, i in enumerate(g_ids):
        for b, j in enumerate(p_ids):
            inter = np.sum((gt == i) & (pred == j))
            union = np.sum((gt == i) | (pred == j))
            iou[a, b] = inter / union
    tp, sums = [], []
    for t in thresholds:
        hit = iou > t
        # for t >= 0.5 every row and column has at most one hit
        assert (hit.sum(0) <= 1).all() and (hit.sum(1) <= 1).all()
        tp.append(int(hit.sum()))
        sums.append(float(iou[hit].sum()))
    return np.array(tp), np.array(sums), len(g_ids), len(p_ids)


@pytest.mark.parametrize("seed", range(6))
def test_match_objects_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = _random_labels(rng, (40, 50), 15)
    # Prediction: the truth jittered by a random shift, some objects dropped, some added.
    pred = np.roll(gt, rng.integers(-1, 2, size=2), axis=(0, 1)) * 3
    pred[pred == pred.max()] = 0
    pred = np.maximum(pred, _random_labels(rng, (40, 50), 4) * (pred == 0))
    tp, sums, n_g, n_p = _brute_force(gt, pred, DSB_THRESHOLDS)
    m = match_objects(gt, pred)
    np.testing.assert_array_equal(m.tp, tp)
    np.testing.assert_allclose(m.matched_iou_sum, sums)
    assert (m.n_true, m.n_pred) == (n_g, n_p)
    np.testing.assert_array_equal(m.fp, n_p - tp)
    np.testing.assert_array_equal(m.fn, n_g - tp)


def test_match_objects_on_large_images():
    # speed is measured by bench/split_speed.py, not here
    rng = np.random.default_rng(0)
    shape = (2048, 2048)
    gt = np.zeros(shape, np.int32)
    centres = rng.integers(0, 2048 - 40, size=(1000, 2))
    for k, (y, x) in enumerate(centres, 1):
        gt[y : y + rng.integers(20, 40), x : x + rng.integers(20, 40)] = k
    pred = np.roll(gt, 3, axis=1)
    m = match_objects(gt, pred)
    assert m.n_true == len(np.unique(gt)) - 1
    assert m.tp[0] > 0.9 * m.n_true


def test_pixel_scores():
    pred = np.zeros((4, 4), int)
    gt = np.zeros((4, 4), int)
    pred[:2] = 1  # 8 px
    gt[1:3] = 5  # 8 px, 4 shared
    assert pixel_scores(pred, gt) == {"dice": 0.5, "iou": pytest.approx(1 / 3)}
    assert pixel_scores(np.zeros((2, 2)), np.zeros((2, 2))) == {"dice": 1.0, "iou": 1.0}
    assert pixel_scores(np.ones((2, 2)), np.zeros((2, 2))) == {"dice": 0.0, "iou": 0.0}
    with pytest.raises(NapariUnetError, match="differ"):
        pixel_scores(np.zeros((2, 2)), np.zeros((2, 3)))


def test_evaluate_pools_counts():
    shape = (20, 20)
    gt1 = _square(shape, 0, 0, 10, 1) + _square(shape, 12, 12, 6, 2)
    pred1 = _square(shape, 0, 0, 10, 1)  # one TP (IoU 1), one FN
    gt2 = _square(shape, 0, 0, 10, 1)
    pred2 = _square(shape, 0, 2, 10, 4) + _square(shape, 15, 0, 3, 5)  # IoU 2/3 TP, one FP
    result = evaluate([gt1, gt2], [pred1, pred2], names=["a", "b"])
    json.dumps(result)  # plain types only
    assert result["n_images"] == 2 and result["n_true"] == 3 and result["n_pred"] == 3
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["ap50"] == pytest.approx(2 / 4)
    assert result["pq"] == pytest.approx((1 + 2 / 3) / 3)
    # DSB: image a is 1/2 at every threshold; image b matches at 4 of 10 thresholds (1/2 each).
    dsb_a, dsb_b = 0.5, (4 * 0.5 + 6 * 0.0) / 10
    assert result["dsb_score"] == pytest.approx((dsb_a + dsb_b) / 2)
    assert result["ap_by_threshold"]["0.50"] == pytest.approx(0.5)
    assert result["ap_by_threshold"]["0.70"] == pytest.approx(1 / 5)
    inter, n_pred, n_gt = 100 + 80, 100 + 109, 136 + 100
    assert result["dice"] == pytest.approx(2 * inter / (n_pred + n_gt))
    assert result["iou"] == pytest.approx(inter / (n_pred + n_gt - inter))
    assert [p["name"] for p in result["per_image"]] == ["a", "b"]
    assert result["per_image"][0] == {
        "name": "a",
        "dsb_score": 0.5,
        "f1": pytest.approx(2 / 3),
        "n_true": 2,
        "n_pred": 1,
    }


def test_evaluate_errors():
    with pytest.raises(NapariUnetError, match="2 ground-truth images but 1"):
        evaluate([np.zeros((2, 2), int)] * 2, [np.zeros((2, 2), int)])
    with pytest.raises(NapariUnetError, match="no images"):
        evaluate([], [])
    with pytest.raises(NapariUnetError, match="image 'x'.*differ"):
        evaluate([np.zeros((2, 2), int)], [np.zeros((3, 2), int)], names=["x"])


def test_touching_objects():
    labels = np.array(
        [
            [1, 1, 0, 0, 0, 4],
            [0, 0, 2, 0, 0, 0],  # 2 touches 1 diagonally
            [0, 0, 0, 0, 3, 3],
            [5, 5, 0, 0, 6, 6],  # 3 and 6 share an edge
        ]
    )
    assert touching_objects(labels).tolist() == [1, 2, 3, 6]
    assert touching_objects(np.zeros((3, 3), int)).size == 0
    stack = np.zeros((2, 3, 3), int)
    stack[0, 0, 0] = 7
    stack[1, 1, 1] = 8  # touches 7 through the corner in 3-D
    stack[1, 2, 0] = 9
    assert touching_objects(stack).tolist() == [7, 8, 9]


def test_real_masks_match_themselves_and_shifted(dsb_small):
    gts, shifted = [], []
    for _, mask_path in dsb_small:
        gt = tifffile.imread(mask_path)
        gts.append(gt)
        shifted.append(np.roll(gt, 1, axis=1))
        m = match_objects(gt, gt)
        assert m.dsb_score == 1.0 and m.n_true == len(np.unique(gt)) - 1
    perfect = evaluate(gts, gts)
    assert perfect["dsb_score"] == 1.0 and perfect["f1"] == 1.0 and perfect["dice"] == 1.0
    moved = evaluate(gts, shifted)
    # A one-pixel shift keeps IoU > 0.5 for nearly all nuclei but costs the high thresholds.
    assert moved["f1"] > 0.9
    assert 0.6 < moved["dsb_score"] < 0.8  # measured: 0.70
    assert moved["ap_by_threshold"]["0.95"] < 0.1
