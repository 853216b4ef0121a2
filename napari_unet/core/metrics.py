"""Pixel and object scores for instance segmentation (numpy and scipy only).

Object matching follows the DSB2018 Kaggle rules and the StarDist paper: a
predicted object matches a true one at threshold ``t`` when their IoU is
strictly greater than ``t``. For ``t >= 0.5`` such a match is unique (two
objects cannot both overlap a third by more than half), so no assignment
problem has to be solved; below 0.5 an optimal one-to-one assignment is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet.core.errors import NapariUnetError

__all__ = [
    "DSB_THRESHOLDS",
    "ObjectMatch",
    "evaluate",
    "match_objects",
    "pixel_scores",
    "touching_objects",
]

DSB_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.5, 1.0, 0.05), 2))
"""IoU thresholds of the DSB2018 score: 0.5, 0.55, ..., 0.95."""

# Dense contingency tables up to this many cells (8 bytes each); sparse above.
_DENSE_TABLE_CELLS = 1 << 22


def _ratio(num: float, den: float, nothing_either_side: bool) -> float:
    """Return num / den; if den is 0, 1.0 when nothing was to be found nor found, else 0.0."""
    if den > 0:
        return float(num) / float(den)
    return 1.0 if nothing_either_side else 0.0


def _check_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """Return a non-negative integer label array (bool -> uint8, whole floats -> int64)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        if labels.size and not (
            np.isfinite(labels).all() and np.array_equal(labels, np.round(labels))
        ):
            raise NapariUnetError(
                f"{what} has dtype {labels.dtype} with non-integer values; pass an "
                "instance label image (0 = background, 1..N = objects)."
            )
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise NapariUnetError(f"{what} has dtype {labels.dtype}; pass an integer label image.")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise NapariUnetError(
            f"{what} has negative values (min {int(labels.min())}); labels must be >= 0."
        )
    return labels


def _consecutive(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the nonzero labels of a 1-D array to 1..n, keeping 0; return (mapped, n)."""
    if flat.size == 0:
        return flat.astype(np.int64), 0
    high = int(flat.max())
    if high <= 2 * flat.size + 1024:
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat, minlength=high + 1) > 0
        present[0] = False
        lut = np.cumsum(present, dtype=np.int64)
        return lut[flat], int(lut[-1])
    uniq, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    if uniq[0] != 0:
        return inverse + 1, len(uniq)
    return inverse, len(uniq) - 1


@dataclass(frozen=True, eq=False)
class ObjectMatch:
    """Counts of matched objects between a true and a predicted label image.

    Attributes
    ----------
    thresholds : (T,) ndarray of float
        IoU thresholds; a pair matches at ``t`` when IoU > ``t``.
    tp, fp, fn : (T,) ndarray of int
        True positives (matched pairs), false positives (unmatched predicted
        objects) and false negatives (unmatched true objects) per threshold.
    n_true, n_pred : int
        Number of objects in the ground truth and in the prediction.
    matched_iou_sum : (T,) ndarray of float
        Sum of the IoUs of the matched pairs per threshold.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_true: int
    n_pred: int
    matched_iou_sum: np.ndarray

    def _index(self, t: float) -> int:
        hits = np.flatnonzero(np.isclose(self.thresholds, t, rtol=0.0, atol=1e-9))
        if hits.size == 0:
            raise NapariUnetError(
                f"threshold {t} was not evaluated; available: "
                f"{[float(x) for x in self.thresholds]}."
            )
        return int(hits[0])

    def _empty(self, i: int) -> bool:
        return bool(self.tp[i] + self.fp[i] + self.fn[i] == 0)

    def precision(self, t: float = 0.5) -> float:
        """TP / (TP + FP) at IoU threshold `t` (1.0 when both images are empty)."""
        i = self._index(t)
        return _ratio(self.tp[i], self.tp[i] + self.fp[i], self._empty(i))

    def recall(self, t: float = 0.5) -> float:
        """TP / (TP + FN) at IoU threshold `t` (1.0 when both images are empty)."""
        i = self._index(t)
        return _ratio(self.tp[i], self.tp[i] + self.fn[i], self._empty(i))

    def f1(self, t: float = 0.5) -> float:
        """2 TP / (2 TP + FP + FN) at IoU threshold `t` (1.0 when both images are empty)."""
        i = self._index(t)
        return _ratio(2 * self.tp[i], 2 * self.tp[i] + self.fp[i] + self.fn[i], self._empty(i))

    def ap(self, t: float = 0.5) -> float:
        """TP / (TP + FP + FN) at IoU threshold `t`, the DSB2018 "average precision"."""
        i = self._index(t)
        return _ratio(self.tp[i], self.tp[i] + self.fp[i] + self.fn[i], self._empty(i))

    @property
    def dsb_score(self) -> float:
        """Mean of :meth:`ap` over all thresholds (1.0 when both images are empty)."""
        return float(np.mean([self.ap(float(t)) for t in self.thresholds]))

    @property
    def pq(self) -> float:
        """Panoptic quality at IoU 0.5: matched IoU sum / (TP + FP/2 + FN/2)."""
        i = self._index(0.5)
        den = self.tp[i] + 0.5 * self.fp[i] + 0.5 * self.fn[i]
        return _ratio(self.matched_iou_sum[i], den, self._empty(i))


def _iou_pairs(
    gt: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """IoU of every overlapping (true, predicted) pair, from a contingency table.

    Returns
    -------
    iou : (P,) ndarray of float
    gi, pj : (P,) ndarray of int
        Consecutive ids (1-based) of the true and predicted object of each pair.
    n_true, n_pred : int
    """
    g, n_g = _consecutive(gt.ravel())
    p, n_p = _consecutive(pred.ravel())
    area_g = np.bincount(g, minlength=n_g + 1)
    area_p = np.bincount(p, minlength=n_p + 1)
    both = (g > 0) & (p > 0)
    width = n_p + 1
    keys = g[both] * width + p[both]
    if (n_g + 1) * width <= _DENSE_TABLE_CELLS:
        table = np.bincount(keys, minlength=(n_g + 1) * width)
        cells = np.flatnonzero(table)
        inter = table[cells]
    else:
        cells, inter = np.unique(keys, return_counts=True)
    gi, pj = np.divmod(cells, width)
    iou = inter / (area_g[gi] + area_p[pj] - inter)
    return iou, gi, pj, n_g, n_p


def _assign(iou: np.ndarray, gi: np.ndarray, pj: np.ndarray, t: float) -> tuple[int, float]:
    """Return (number of matches, IoU sum) of a one-to-one matching with IoU > t."""
    valid = iou > t
    if t >= 0.5 or not valid.any():
        return int(valid.sum()), float(iou[valid].sum())
    from scipy.optimize import linear_sum_assignment

    rows, gi_c = np.unique(gi[valid], return_inverse=True)
    cols, pj_c = np.unique(pj[valid], return_inverse=True)
    scores = np.zeros((len(rows), len(cols)))
    scores[gi_c, pj_c] = iou[valid]
    n_min = min(len(rows), len(cols))
    # Most matches first, then the highest IoU sum (as StarDist does).
    cost = -(scores > t).astype(float) - scores / (2 * n_min)
    r, c = linear_sum_assignment(cost)
    matched = scores[r, c] > t
    return int(matched.sum()), float(scores[r, c][matched].sum())


def match_objects(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS
) -> ObjectMatch:
    """Match the objects of a true and a predicted instance label image.

    Parameters
    ----------
    gt, pred : (..., Y, X) ndarray of int
        Instance label images of the same shape; 0 = background. Labels need
        not be consecutive.
    thresholds : sequence of float, optional
        IoU thresholds in [0, 1); a pair matches when IoU > t (strictly, as in
        the DSB2018 score). Default :data:`DSB_THRESHOLDS`.

    Returns
    -------
    ObjectMatch
        TP, FP, FN and the matched IoU sum per threshold.

    Raises
    ------
    NapariUnetError
        If the shapes differ, the images are not label images, or a threshold
        is outside [0, 1).

    Examples
    --------
    >>> gt = np.zeros((4, 8), int); gt[:, :4] = 1
    >>> pred = np.zeros((4, 8), int); pred[:, 1:5] = 7
    >>> m = match_objects(gt, pred)  # IoU = 12 / 20 = 0.6
    >>> int(m.tp[0]), int(m.tp[2])  # matched at 0.5, not at 0.6
    (1, 0)
    """
    gt = _check_labels(gt, "ground truth")
    pred = _check_labels(pred, "prediction")
    if gt.shape != pred.shape:
        raise NapariUnetError(
            f"ground truth shape {gt.shape} and prediction shape {pred.shape} differ; "
            "compare label images of the same image."
        )
    ts = np.asarray(thresholds, dtype=float).reshape(-1)
    if ts.size == 0 or ts.min() < 0 or ts.max() >= 1:
        raise NapariUnetError(f"IoU thresholds must lie in [0, 1), got {list(ts)}.")
    iou, gi, pj, n_g, n_p = _iou_pairs(gt, pred)
    tp = np.zeros(ts.size, dtype=np.int64)
    iou_sum = np.zeros(ts.size, dtype=float)
    for k, t in enumerate(ts):
        tp[k], iou_sum[k] = _assign(iou, gi, pj, float(t))
    return ObjectMatch(
        thresholds=ts,
        tp=tp,
        fp=n_p - tp,
        fn=n_g - tp,
        n_true=n_g,
        n_pred=n_p,
        matched_iou_sum=iou_sum,
    )


def pixel_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice and IoU of the foreground (nonzero) pixels.

    Parameters
    ----------
    pred, gt : (..., Y, X) ndarray
        Predicted and true masks or label images of the same shape.

    Returns
    -------
    dict
        ``{"dice": float, "iou": float}``; both 1.0 when both masks are empty.

    Raises
    ------
    NapariUnetError
        If the shapes differ.

    Examples
    --------
    >>> pixel_scores(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
    {'dice': 0.5, 'iou': 0.3333333333333333}
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise NapariUnetError(
            f"prediction shape {pred.shape} and ground truth shape {gt.shape} differ."
        )
    inter, n_pred, n_gt = _pixel_counts(pred, gt)
    return _pixel_dict(inter, n_pred, n_gt)


def _pixel_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    p = pred != 0
    g = gt != 0
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def _pixel_dict(inter: int, n_pred: int, n_gt: int) -> dict[str, float]:
    empty = n_pred + n_gt == 0
    return {
        "dice": _ratio(2 * inter, n_pred + n_gt, empty),
        "iou": _ratio(inter, n_pred + n_gt - inter, empty),
    }


def evaluate(
    gts: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
) -> dict:
    """Score predicted label images against ground truth over a set of images.

    Parameters
    ----------
    gts, preds : sequence of (..., Y, X) ndarray of int
        True and predicted instance label images, pairwise of equal shape.
    names : sequence of str, optional
        One name per image for the per-image table; default ``"0"``, ``"1"``...

    Returns
    -------
    dict
        JSON-serialisable (plain ``int`` / ``float``):

        - ``n_images``, ``n_true``, ``n_pred``
        - ``precision``, ``recall``, ``f1``, ``ap50``, ``pq``: pooled over
          images (TP, FP, FN summed, as in the StarDist paper) at IoU 0.5;
          ``ap50`` = TP / (TP + FP + FN)
        - ``dsb_score``: the DSB2018 score, per image the mean over
          :data:`DSB_THRESHOLDS` of TP / (TP + FP + FN), averaged over images
        - ``ap_by_threshold``: pooled TP / (TP + FP + FN) per threshold
        - ``dice``, ``iou``: pixel scores of the foreground, pooled
        - ``per_image``: list of ``{"name", "dsb_score", "f1", "n_true", "n_pred"}``

    Raises
    ------
    NapariUnetError
        If the sequences differ in length or are empty, or shapes differ.
    """
    gts = list(gts)
    preds = list(preds)
    if len(gts) != len(preds):
        raise NapariUnetError(
            f"got {len(gts)} ground-truth images but {len(preds)} predictions; "
            "pass one prediction per ground-truth image."
        )
    if not gts:
        raise NapariUnetError("no images to evaluate.")
    names = [str(i) for i in range(len(gts))] if names is None else [str(n) for n in names]
    if len(names) != len(gts):
        raise NapariUnetError(f"got {len(names)} names for {len(gts)} images.")

    ts = np.asarray(DSB_THRESHOLDS)
    tp = np.zeros(ts.size, dtype=np.int64)
    fp = np.zeros_like(tp)
    fn = np.zeros_like(tp)
    iou_sum = np.zeros(ts.size)
    n_true = n_pred = inter = pix_pred = pix_gt = 0
    per_image = []
    for name, gt, pred in zip(names, gts, preds, strict=True):
        try:
            match = match_objects(gt, pred, ts)
        except NapariUnetError as exc:
            raise NapariUnetError(f"image {name!r}: {exc}") from exc
        tp += match.tp
        fp += match.fp
        fn += match.fn
        iou_sum += match.matched_iou_sum
        n_true += match.n_true
        n_pred += match.n_pred
        counts = _pixel_counts(np.asarray(pred), np.asarray(gt))
        inter, pix_pred, pix_gt = inter + counts[0], pix_pred + counts[1], pix_gt + counts[2]
        per_image.append(
            {
                "name": name,
                "dsb_score": match.dsb_score,
                "f1": match.f1(0.5),
                "n_true": int(match.n_true),
                "n_pred": int(match.n_pred),
            }
        )
    pooled = ObjectMatch(ts, tp, fp, fn, n_true, n_pred, iou_sum)
    result: dict = {
        "n_images": len(gts),
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "precision": pooled.precision(0.5),
        "recall": pooled.recall(0.5),
        "f1": pooled.f1(0.5),
        "ap50": pooled.ap(0.5),
        "dsb_score": float(np.mean([p["dsb_score"] for p in per_image])),
        "pq": pooled.pq,
        "ap_by_threshold": {f"{t:.2f}": pooled.ap(float(t)) for t in ts},
    }
    result.update(_pixel_dict(inter, pix_pred, pix_gt))
    result["per_image"] = per_image
    return result


def touching_objects(labels: np.ndarray) -> np.ndarray:
    """Return the ids of objects that touch another object.

    Two objects touch when a pixel of one is next to a pixel of the other,
    diagonals included (8-connectivity in 2-D, full connectivity in N-D).

    Parameters
    ----------
    labels : (..., Y, X) ndarray of int
        Instance label image, 0 = background.

    Returns
    -------
    (K,) ndarray
        Sorted ids (dtype of `labels`) of the objects with a different
        nonzero neighbour.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 0], [0, 2, 0, 3]])
    >>> touching_objects(labels).tolist()
    [1, 2]
    """
    labels = _check_labels(labels, "labels")
    found = []
    ndim = labels.ndim
    # Half of the neighbourhood offsets: each unordered pair of neighbours once.
    for offset in np.ndindex(*(3,) * ndim):
        step = tuple(o - 1 for o in offset)
        if step <= (0,) * ndim:
            continue
        src = tuple(slice(max(-s, 0), labels.shape[d] - max(s, 0)) for d, s in enumerate(step))
        dst = tuple(slice(max(s, 0), labels.shape[d] - max(-s, 0)) for d, s in enumerate(step))
        a, b = labels[src], labels[dst]
        touch = (a != b) & (a != 0) & (b != 0)
        if touch.any():
            found.extend((a[touch], b[touch]))
    if not found:
        return np.zeros(0, dtype=labels.dtype)
    return np.unique(np.concatenate(found))
