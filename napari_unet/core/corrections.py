"""Turn what a user painted into training annotations, merge rounds, save them.

The "Correct & retrain" loop: a model predicts nuclei into a Labels layer, the
user paints corrections (splits merged nuclei, erases false ones, draws missed
ones) and retrains. Only what the user touched is trustworthy, so the
annotations built here follow the *sparse* convention of
:mod:`napari_unet.core.targets`:

* ``0``: not annotated (the loss ignores the pixel);
* ``1``: background, seen by the user;
* ``>= 2``: one object each.

Functions
---------
:func:`to_sparse` / :func:`whole_layer_annotation`
    A fully checked label image in the sparse convention.
:func:`annotation_from_edits`
    The annotation implied by the difference between the layer before and after
    the user's edits.
:func:`regions_mask`
    Rasterise the regions a user checked completely (``checked`` of
    :func:`annotation_from_edits`).
:func:`merge_annotations`
    Combine the annotations of two rounds on the same image (later strokes win).
:func:`annotation_summary`, :func:`partial_f1`
    Describe an annotation; score a prediction against a partial annotation.
:func:`save_training_set`, :func:`load_training_set`
    A training set as a folder of TIFFs plus ``training_set.json``.

Nothing here imports napari, Qt or torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.targets import check_labels

# scipy.ndimage, tifffile and core.io / core.export are imported inside the
# functions that use them, so that importing this module (the widgets do when
# they open) stays fast.

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "REGION_KINDS",
    "SavedPair",
    "annotation_from_edits",
    "annotation_summary",
    "is_empty_annotation",
    "load_training_set",
    "merge_annotations",
    "partial_f1",
    "region_signature",
    "regions_mask",
    "sort_regions",
    "save_training_set",
    "to_sparse",
    "whole_layer_annotation",
]

INDEX_FILE = "training_set.json"
"""Name of the index file of a saved training set."""

FORMAT_NAME = "napari-unet training set"
"""Value of the ``format`` key of :data:`INDEX_FILE`."""

FORMAT_VERSION = 1
"""Version of the saved training-set layout that this module writes and reads."""

#: Default width of the background band around corrected objects, in median object
#: diameters (see :func:`annotation_from_edits`), and its limits in pixels. A quarter of a
#: diameter (the rule before) shows a fine-tune of a few painted nuclei about as many
#: object as background pixels: it then predicts false objects on the rest of such
#: images (docs/dev/correct_retrain.md).
AUTO_RING_DIAMETERS = 0.75
_MAX_AUTO_RING = 40
_MIN_AUTO_RING = 2
_INT32_MAX = int(np.iinfo(np.int32).max)
_UINT32_MAX = int(np.iinfo(np.uint32).max)
_STEM_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- helpers


def _labels(labels: Any, name: str) -> np.ndarray:
    """Validate a label image; bool -> uint8 (one id), whole floats -> int64."""
    labels = np.asarray(labels)
    if labels.ndim == 0:
        raise NapariUnetError(f"{name} must be an image (at least 1-D), got a scalar.")
    return check_labels(labels, name=name)


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise NapariUnetError(
            f"{name_a} shape {a.shape} and {name_b} shape {b.shape} differ; "
            "both must be label images of the same image."
        )


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the True pixels of `mask`, grown by `margin`, clipped to the array."""
    box = []
    for axis, size in enumerate(mask.shape):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other) if other else mask)
        box.append(slice(max(0, int(hits[0]) - margin), min(size, int(hits[-1]) + 1 + margin)))
    return tuple(box)


def _relabel_from(values: np.ndarray, ids: np.ndarray, first: int) -> np.ndarray:
    """Map each value (one of the sorted `ids`) to ``first + its index in ids``."""
    return (np.searchsorted(ids, values) + first).astype(np.int32)


def _equivalent_diameter(volume: np.ndarray, ndim: int) -> np.ndarray:
    """Diameter of the `ndim`-ball of the given volume (area in 2D)."""
    unit_ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
    return 2.0 * (np.asarray(volume, dtype=float) / unit_ball) ** (1.0 / ndim)


def _check_ring(ring: float | None) -> float | None:
    if ring is None:
        return None
    if isinstance(ring, bool) or not isinstance(ring, (int, float, np.integer, np.floating)):
        raise NapariUnetError(f"ring must be a number of pixels or None, got {ring!r}.")
    if not math.isfinite(float(ring)) or ring < 0:
        raise NapariUnetError(f"ring must be a finite number of pixels >= 0, got {ring!r}.")
    return float(ring)


# --------------------------------------------------------------------------- annotations


def to_sparse(labels: np.ndarray) -> np.ndarray:
    """Re-code fully annotated labels in the sparse convention (0 -> 1, k -> k + 1).

    Parameters
    ----------
    labels : (..., Y, X) ndarray of int or bool
        0 = background, k > 0 = objects. A bool mask is one object id (True).

    Returns
    -------
    (..., Y, X) ndarray of int32
        1 = background, k + 1 = objects; nothing is left "not annotated".

    Raises
    ------
    NapariUnetError
        Negative or non-integer labels, or an id too large for int32 once shifted.

    Examples
    --------
    >>> to_sparse(np.array([[0, 1], [3, 0]])).tolist()
    [[1, 2], [4, 1]]
    """
    labels = _labels(labels, "labels")
    high = int(labels.max()) if labels.size else 0
    if high >= _INT32_MAX:
        raise NapariUnetError(
            f"labels go up to {high}, too large to shift by one in int32; relabel them "
            "consecutively (skimage.segmentation.relabel_sequential) first."
        )
    out = labels.astype(np.int32, copy=True)
    out += 1  # 0 -> 1 (background), k -> k + 1
    return out


def whole_layer_annotation(labels: np.ndarray) -> np.ndarray:
    """Annotation of a layer whose every object the user has checked.

    Every pixel counts: objects as they are, everything else background. Same
    as :func:`to_sparse`.

    Parameters
    ----------
    labels : (..., Y, X) ndarray of int or bool
        0 = background, k > 0 = objects.

    Returns
    -------
    (..., Y, X) ndarray of int32
        Sparse convention, without any 0 (not annotated) pixel.
    """
    return to_sparse(labels)


def is_empty_annotation(annotation: np.ndarray) -> bool:
    """Return True when nothing is annotated (every pixel is 0).

    Examples
    --------
    >>> is_empty_annotation(np.zeros((3, 3), np.int32))
    True
    """
    annotation = np.asarray(annotation)
    return not bool(np.any(annotation))


def annotation_from_edits(
    corrected: np.ndarray,
    baseline: np.ndarray | None = None,
    *,
    ring: float | None = None,
    return_ring: bool = False,
    checked: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Build a (partial) annotation from what the user painted or erased.

    Only the objects the user touched count. An object is *involved* when one of
    its pixels changed, either as an id of `corrected` (painted, grown, split
    off) or as an id of `baseline` (erased, shrunk, painted over). The annotated
    region is the union of the changed pixels, the whole extent in `corrected`
    of every involved id found there and the whole footprint in `baseline` of
    every involved baseline id. Inside it, labelled pixels of `corrected` are
    objects and empty ones are background (e.g. an erased false object).

    A band of background is added around the annotated objects and around what
    the user erased (false objects, trimmed pixels): pixels within `ring` pixels of
    them that are empty in `corrected` were seen by the user and left empty. The
    band is drawn in each 2D plane (the last two axes): a stack or time series is
    predicted and corrected plane by plane, so the planes around a painted one
    were not looked at. Pixels of other, untouched objects
    are never annotated (they may be wrong predictions nobody checked), nor is
    the rest of the image.

    A *checked* region (`checked`, e.g. rectangles the user drew around what they
    looked at completely) counts whole, edited or not: every object of `corrected`
    that has a pixel in it is annotated whole (in that plane), every empty pixel of it
    is background. No band is drawn around it, nor around edits inside it: the
    region's surroundings were not checked.

    Parameters
    ----------
    corrected : (..., Y, X) ndarray of int or bool
        The Labels layer after the user's edits; 0 = background. Any number of
        dimensions (2D images, 3D stacks). A bool mask is one object id
        (connected components are not split).
    baseline : (..., Y, X) ndarray of int or bool, optional
        The same layer before the edits (usually the prediction). None means
        all zeros: the user painted on an empty layer.
    ring : float, optional
        Width of the background band around annotated objects and erased pixels, in
        pixels (Euclidean distance within a plane); 0 for none. Default:
        :data:`AUTO_RING_DIAMETERS` (three quarters) of the median equivalent
        diameter of the annotated objects' cross-sections (of the erased ones when
        nothing was painted), rounded, at least 2 and at most 40.
    return_ring : bool
        Also return the band as a mask (for :func:`merge_annotations`: it was
        not drawn by the user, so it does not erase earlier objects).
    checked : (..., Y, X) ndarray of bool, optional
        Pixels the user checked completely (see :func:`regions_mask`); same shape as
        `corrected`. None: none.

    Returns
    -------
    (..., Y, X) ndarray of int32
        Sparse convention: 0 = not annotated, 1 = background, 2..N+1 = the
        annotated objects (in the order of their ids in `corrected`). All zeros
        when nothing changed (see :func:`is_empty_annotation`).
    (..., Y, X) ndarray of bool
        With `return_ring`: the band.

    Raises
    ------
    NapariUnetError
        A ``ValueError``: the shapes differ (both are named), or the labels are
        negative or not whole numbers, or `ring` is negative.

    Notes
    -----
    An id of `corrected` keeps all its pixels, connected or not: painting with
    the id of a distant untouched object annotates that object too (as part of
    the same object).

    Examples
    --------
    The user erased a false object (id 2) from a prediction: its pixel is background,
    and so is the band around it (2 px, the smallest), but never object 1, which the
    user did not touch:

    >>> before = np.array([[1, 1, 0, 0], [1, 1, 0, 2]])
    >>> after = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    >>> annotation_from_edits(after, before).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1]]
    >>> annotation_from_edits(after, before, ring=0).tolist()
    [[0, 0, 0, 0], [0, 0, 0, 1]]
    """
    from scipy import ndimage as ndi

    corrected = _labels(corrected, "corrected labels")
    ring = _check_ring(ring)
    out = np.zeros(corrected.shape, dtype=np.int32)
    band_mask = np.zeros(corrected.shape, dtype=bool)

    def done(result: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        return (result, band_mask) if return_ring else result

    if checked is None:
        checked = np.zeros(corrected.shape, dtype=bool)
    else:
        checked = np.asarray(checked)
        _same_shape(corrected, checked, "corrected labels", "checked regions")
        if checked.dtype != bool:
            raise NapariUnetError(
                f"checked regions must be a boolean mask, got dtype {checked.dtype}."
            )
    if baseline is None:
        changed = corrected != 0
        involved_base = np.zeros(corrected.shape, dtype=bool)
    else:
        baseline = _labels(baseline, "baseline labels")
        _same_shape(corrected, baseline, "corrected labels", "baseline labels")
        changed = corrected != baseline
        involved_base = _involved(baseline, changed)
    if not changed.any() and not checked.any():
        return done(out)
    # Every corrected id in the changed pixels or the touched baseline footprints, whole
    # (in the planes where it was touched: a 3D object's other planes were not looked at).
    # This region is closed: an unchanged pixel of an involved corrected id has that same
    # id in the baseline, so its footprint brings no new id.
    region = changed | involved_base
    region |= _involved(corrected, region)
    # the checked regions, with every object that has a pixel in them (whole)
    inspected = checked | _involved(corrected, checked)
    edited = region & ~inspected  # edits outside the checked regions: banded
    region |= inspected
    ids = np.unique(corrected[region])
    ids = ids[ids != 0]
    if ids.size > _INT32_MAX - 2:  # pragma: no cover - needs > 2**31 objects
        raise NapariUnetError("too many annotated objects for int32 labels.")
    objects = region & (corrected != 0)
    out[region & (corrected == 0)] = 1
    out[objects] = _relabel_from(corrected[objects], ids, 2)
    if not edited.any():
        ring = 0.0  # nothing edited outside the checked regions: no band
    if ring is None:
        # cross-sections: the area of each object in each plane where it appears; with
        # nothing painted, of what was erased (then a baseline was given: something changed)
        plane = np.broadcast_to(
            np.arange(math.prod(corrected.shape[:-2]), dtype=np.int64).reshape(
                corrected.shape[:-2] + (1, 1)
            ),
            corrected.shape,
        )
        if ids.size:
            sized, n, index = objects, ids.size, out[objects].astype(np.int64) - 2
        else:
            sized = region & (baseline != 0)
            erased_ids, index = np.unique(baseline[sized], return_inverse=True)
            n = erased_ids.size
        key = plane[sized] * n + index.astype(np.int64).ravel()
        areas = np.unique(key, return_counts=True)[1]
        median = float(np.median(_equivalent_diameter(areas, 2)))
        ring = float(min(_MAX_AUTO_RING, max(_MIN_AUTO_RING, round(AUTO_RING_DIAMETERS * median))))
    if ring > 0:
        # around the objects and around what the user erased (a false object's
        # surroundings were seen too)
        seen = edited
        box = _bbox(seen, math.ceil(ring))
        lead = (slice(None),) * (corrected.ndim - 2)
        box = lead + tuple(box[-2:])  # whole planes along the leading axes
        # distances within each plane only (the leading axes are far apart)
        sampling = [1e9] * (corrected.ndim - 2) + [1.0, 1.0]
        near = ndi.distance_transform_edt(~seen[box], sampling=sampling) <= ring
        band = near & (corrected[box] == 0) & (out[box] == 0)
        out[box][band] = 1
        band_mask[box] = band
    return done(out)


#: Shape kinds :func:`regions_mask` fills (napari's Shapes layer names); lines and
#: paths enclose nothing.
REGION_KINDS = ("rectangle", "polygon", "ellipse")


def _check_regions(regions: Any, what: str = "") -> list[tuple[str, np.ndarray]]:
    """Validate (kind, vertices) pairs as drawn regions; `what` prefixes the messages.

    A kind of :data:`REGION_KINDS`, at least 3 finite vertices of 2 or more coordinates.
    """
    out = []
    for k, item in enumerate(regions, 1):
        try:
            kind, vertices = item
            v = np.asarray(vertices, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise NapariUnetError(f"{what}region {k} is not a (kind, vertices) pair.") from exc
        if kind not in REGION_KINDS:
            raise NapariUnetError(
                f"{what}region {k} is a {kind!r}: only {', '.join(REGION_KINDS)} enclose pixels."
            )
        if v.ndim != 2 or v.shape[0] < 3 or v.shape[1] < 2:
            raise NapariUnetError(
                f"{what}region {k} has vertices of shape {v.shape}: expected at least 3 "
                "vertices of 2 or more coordinates."
            )
        if not np.all(np.isfinite(v)):
            raise NapariUnetError(f"{what}region {k} has vertices that are not finite numbers.")
        out.append((str(kind), v))
    return out


def sort_regions(
    regions: Sequence[tuple[str, Any]], learned: Sequence[tuple[str, Any]]
) -> tuple[list[int], list[int], list[int]]:
    """Sort drawn shapes into new regions, regions learned before, and the rest.

    The rest enclose nothing: lines, paths, any kind outside :data:`REGION_KINDS`.

    Parameters
    ----------
    regions : sequence of (kind, vertices)
        The shapes, in the labels' pixel coordinates.
    learned : sequence of (kind, vertices)
        The regions learned before (see :func:`region_signature`).

    Returns
    -------
    new, already_learned, enclose_nothing : list of int
        Indices into `regions`.

    Examples
    --------
    >>> box = [[0, 0], [0, 2], [2, 2], [2, 0]]
    >>> drawn = [("rectangle", box), ("line", box[:2]), ("polygon", box)]
    >>> sort_regions(drawn, learned=[("rectangle", box)])
    ([2], [0], [1])
    """
    known = {region_signature(kind, v) for kind, v in learned}
    new: list[int] = []
    old: list[int] = []
    lines: list[int] = []
    for i, (kind, vertices) in enumerate(regions):
        if kind not in REGION_KINDS:
            lines.append(i)
        elif region_signature(kind, vertices) in known:
            old.append(i)
        else:
            new.append(i)
    return new, old, lines


def regions_mask(shape: Sequence[int], regions: Sequence[tuple[str, Any]]) -> np.ndarray:
    """Rasterise drawn regions (rectangles, polygons, ellipses) into a boolean mask.

    A pixel is inside when its centre is inside or on the edge (pixel ``(r, c)`` is
    centred on ``(r, c)``, as in napari). Parts outside the image are dropped.

    Parameters
    ----------
    shape : sequence of int
        The mask's shape, ``(..., Y, X)``.
    regions : sequence of (kind, vertices)
        `kind` is one of :data:`REGION_KINDS`; `vertices` is an ``(N, D)`` array in the
        mask's pixel coordinates, the last two columns ``(y, x)``. With ``D == 2`` the
        region covers every plane of a stack; with ``D == len(shape)`` its leading
        coordinates (the same for all vertices, rounded) pick the plane. A rectangle or
        an ellipse has napari's four corner vertices (an ellipse's bounding box, possibly
        rotated).

    Returns
    -------
    ndarray of bool
        True inside any region.

    Raises
    ------
    NapariUnetError
        An unknown kind, too few vertices, vertices that are not finite or do not fit
        `shape`, or a region that is not flat in one plane of a stack.

    Examples
    --------
    >>> square = [[0.5, 0.5], [0.5, 2.5], [2.5, 2.5], [2.5, 0.5]]
    >>> regions_mask((4, 5), [("rectangle", square)]).astype(int).tolist()
    [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]
    """
    from skimage.draw import polygon as fill_polygon

    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        raise NapariUnetError(f"regions need an image of at least 2 axes, got shape {shape}.")
    mask = np.zeros(shape, dtype=bool)
    for k, (kind, v) in enumerate(_check_regions(regions), 1):
        if v.shape[1] not in (2, len(shape)):
            dims = "2" if len(shape) == 2 else f"2 or {len(shape)}"
            raise NapariUnetError(
                f"region {k} has vertices of {v.shape[1]} coordinates; this image needs {dims}."
            )
        lead: tuple[Any, ...] = (slice(None),) * (len(shape) - 2)
        if v.shape[1] == len(shape) and len(shape) > 2:
            planes = np.round(v[:, :-2]).astype(np.int64)
            if np.any(planes != planes[0]):
                raise NapariUnetError(
                    f"region {k} is not flat in one plane (its leading coordinates vary): "
                    "draw regions in the 2D view, one plane at a time."
                )
            plane = tuple(int(p) for p in planes[0])
            if any(p < 0 or p >= n for p, n in zip(plane, shape[:-2], strict=True)):
                continue  # a plane outside the image: nothing of it is inside
            lead = plane
        yx = v[:, -2:]
        if kind == "ellipse":
            if yx.shape[0] != 4:
                raise NapariUnetError(
                    f"region {k} is an ellipse with {yx.shape[0]} vertices: expected its "
                    "4 bounding-box corners."
                )
            centre = yx.mean(axis=0)
            a = (yx[1] - yx[0]) / 2
            b = (yx[3] - yx[0]) / 2
            t = np.linspace(0, 2 * np.pi, 181)[:-1, None]
            yx = centre + np.cos(t) * a + np.sin(t) * b
        # skimage counts a pixel in when its centre is inside the polygon
        rr, cc = fill_polygon(yx[:, 0], yx[:, 1], shape=shape[-2:])
        mask[(*lead, rr, cc)] = True
    return mask


def region_signature(kind: str, vertices: Any) -> bytes:
    """Identify a drawn region by its kind and vertices (rounded to 1/1000 pixel).

    Two regions with the same signature are the same region, to 1/1000 pixel; a region
    moved by any visible amount gets another one.

    Examples
    --------
    >>> region_signature("rectangle", [[0, 0], [0, 2], [2, 2], [2, 0]]) == region_signature(
    ...     "rectangle", np.array([[0, 0], [0, 2], [2, 2], [2, 0.0001]]))
    True
    """
    v = np.round(np.asarray(vertices, dtype=np.float64), 3) + 0.0  # -0.0 -> 0.0
    return str(kind).encode() + b":" + str(v.shape).encode() + b":" + v.tobytes()


def _involved(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Pixels of the ids of ``labels`` found in ``where``, plane by plane (last two axes).

    An id met in one plane of a stack brings its pixels in that plane only: a 3D object
    (one id across planes) touched in one plane is involved there, not in the others.
    """
    if not where.any():
        return np.zeros(labels.shape, dtype=bool)
    if labels.ndim == 2:
        ids = np.unique(labels[where])
        ids = ids[ids != 0]
        return np.isin(labels, ids) if ids.size else np.zeros(labels.shape, dtype=bool)
    n_ids = int(labels.max()) + 1
    planes = np.arange(math.prod(labels.shape[:-2]), dtype=np.int64).reshape(
        labels.shape[:-2] + (1, 1)
    )
    key = planes * n_ids + labels.astype(np.int64)
    keys = np.unique(key[where & (labels != 0)])
    return np.isin(key, keys) if keys.size else np.zeros(labels.shape, dtype=bool)


def merge_annotations(
    old: np.ndarray, new: np.ndarray, *, new_ring: np.ndarray | None = None
) -> np.ndarray:
    """Combine two rounds of annotation of the same image; later strokes win.

    Where `new` is annotated (non-zero) the result is `new`. An object of `old`
    loses the pixels `new` annotates; if it overlaps an object of `new` (the
    user redrew it) its remaining pixels become 0 (not annotated), since the
    later drawing replaces it; if it only loses pixels to background of `new`
    it keeps the rest. Background of `old` stays where `new` is 0. The
    automatic background band of `new` (`new_ring`, see
    :func:`annotation_from_edits`) is weaker: it does not cover objects of
    `old` (a nucleus painted in an earlier round, still missed by the later
    prediction, is not erased by the band around a later stroke).

    Parameters
    ----------
    old, new : (..., Y, X) ndarray of int
        Annotations in the sparse convention (0 = not annotated, 1 =
        background, >= 2 = objects), `new` the later one.
    new_ring : (..., Y, X) ndarray of bool, optional
        The background band that :func:`annotation_from_edits` added to `new`.

    Returns
    -------
    (..., Y, X) ndarray of int32
        Sparse convention, objects numbered 2..N+1: the kept objects of `old`
        first (in the order of their ids), then those of `new`.

    Raises
    ------
    NapariUnetError
        A ``ValueError``: the shapes differ, or the labels are negative or not
        whole numbers.

    Examples
    --------
    >>> old = np.array([[2, 2, 1, 0]])
    >>> new = np.array([[0, 1, 3, 3]])
    >>> merge_annotations(old, new).tolist()
    [[2, 1, 3, 3]]
    """
    old = _labels(old, "earlier annotation")
    new = _labels(new, "later annotation")
    _same_shape(old, new, "earlier annotation", "later annotation")
    out = np.zeros(old.shape, dtype=np.int32)
    new_objects = new >= 2
    old_objects = old >= 2
    shielded = np.zeros(old.shape, dtype=bool)
    if new_ring is not None:
        _same_shape(old, np.asarray(new_ring), "earlier annotation", "later band")
        shielded = np.asarray(new_ring, dtype=bool) & (new == 1) & old_objects
    new_annotated = (new != 0) & ~shielded
    redrawn = np.unique(old[old_objects & new_objects])
    keep = old_objects & ~new_annotated
    if redrawn.size:
        keep &= ~np.isin(old, redrawn)
    out[(old == 1) & ~new_annotated] = 1
    out[(new == 1) & ~shielded] = 1
    old_ids = np.unique(old[keep])
    new_ids = np.unique(new[new_objects])
    if old_ids.size + new_ids.size > _INT32_MAX - 2:  # pragma: no cover
        raise NapariUnetError("too many annotated objects for int32 labels.")
    out[keep] = _relabel_from(old[keep], old_ids, 2)
    out[new_objects] = _relabel_from(new[new_objects], new_ids, 2 + old_ids.size)
    return out


def annotation_summary(annotation: np.ndarray) -> dict[str, Any]:
    """Count what an annotation in the sparse convention holds.

    Parameters
    ----------
    annotation : (..., Y, X) ndarray of int
        0 = not annotated, 1 = background, >= 2 = objects.

    Returns
    -------
    dict
        Plain Python values (JSON-ready): ``objects`` (number of object ids),
        ``object_pixels``, ``background_pixels``, ``annotated_fraction`` (of
        all pixels; 0.0 for an empty array) and ``fully_annotated`` (True when
        no pixel is 0 and the array is not empty).

    Examples
    --------
    >>> annotation_summary(np.array([[0, 1], [2, 3]]))["objects"]
    2
    """
    annotation = _labels(annotation, "annotation")
    objects = annotation >= 2
    annotated = int(np.count_nonzero(annotation))
    return {
        "objects": int(np.unique(annotation[objects]).size),
        "object_pixels": int(np.count_nonzero(objects)),
        "background_pixels": int(np.count_nonzero(annotation == 1)),
        "annotated_fraction": annotated / annotation.size if annotation.size else 0.0,
        "fully_annotated": bool(annotation.size and annotated == annotation.size),
    }


def partial_f1(pred: np.ndarray, annotation: np.ndarray, *, iou: float = 0.5) -> dict[str, Any]:
    """Object F1 of a prediction against a possibly partial annotation.

    The true objects are the annotation's objects (ids >= 2). A predicted object
    is scored only if at least half of its pixels lie in the annotated region
    (annotation != 0); the others fall where nobody looked and count neither as
    true nor as false positives. Scored objects are matched one-to-one with
    :func:`napari_unet.core.metrics.match_objects`, so a pair matches when its
    IoU (over the objects' whole extents) is strictly greater than `iou`. With a
    full annotation (no 0 pixel) the result equals the object F1 of
    :func:`napari_unet.core.metrics.evaluate` against ``annotation - 1``.

    Parameters
    ----------
    pred : (..., Y, X) ndarray of int
        Predicted instance labels, 0 = background.
    annotation : (..., Y, X) ndarray of int
        Sparse convention: 0 = not annotated, 1 = background, >= 2 = objects.
    iou : float, optional
        IoU threshold in [0, 1). Default 0.5.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn`` (int); ``precision``, ``recall``, ``f1`` (float);
        ``n_annotated_objects``; ``n_scored_predictions`` and
        ``n_ignored_predictions`` (predicted objects scored / left out). The
        ratios follow :class:`napari_unet.core.metrics.ObjectMatch` (1.0 when
        there is nothing to find and nothing was found, 0.0 for an empty
        denominator otherwise), except that they are NaN when nothing at all is
        annotated: there is nothing to score against.

    Raises
    ------
    NapariUnetError
        A ``ValueError``: the shapes differ, the labels are negative or not whole
        numbers, or `iou` is outside [0, 1).

    Examples
    --------
    >>> annotation = np.array([[2, 2, 1, 0, 0]])
    >>> pred = np.array([[5, 5, 0, 7, 7]])  # 7 lies where nobody annotated
    >>> partial_f1(pred, annotation)["f1"]
    1.0
    """
    from napari_unet.core.metrics import match_objects

    pred = _labels(pred, "prediction")
    annotation = _labels(annotation, "annotation")
    _same_shape(pred, annotation, "prediction", "annotation")
    if not (0 <= float(iou) < 1):
        raise NapariUnetError(f"iou must lie in [0, 1), got {iou!r}.")
    annotated = annotation != 0
    gt = np.where(annotation >= 2, annotation, 0)
    flat = pred.ravel()
    high = int(flat.max()) if flat.size else 0
    if high <= 2 * flat.size + 1024:  # small ids: count them directly, no sort
        index = flat.astype(np.intp, copy=False)
        total = np.bincount(index, minlength=high + 1)
        is_object = total > 0
        is_object[0] = False
    else:
        ids, index = np.unique(flat, return_inverse=True)
        index = index.reshape(-1)
        total = np.bincount(index, minlength=ids.size)
        is_object = ids != 0
    inside = np.bincount(index, weights=annotated.ravel(), minlength=total.size)
    keep = is_object & (2 * inside >= total)
    scored = np.where(keep[index].reshape(pred.shape), pred, 0)
    n_pred_objects = int(np.count_nonzero(is_object))
    match = match_objects(gt, scored, thresholds=(float(iou),))
    nothing = not annotated.any()
    nan = float("nan")
    return {
        "tp": int(match.tp[0]),
        "fp": int(match.fp[0]),
        "fn": int(match.fn[0]),
        "precision": nan if nothing else match.precision(float(iou)),
        "recall": nan if nothing else match.recall(float(iou)),
        "f1": nan if nothing else match.f1(float(iou)),
        "n_annotated_objects": int(match.n_true),
        "n_scored_predictions": int(match.n_pred),
        "n_ignored_predictions": n_pred_objects - int(match.n_pred),
    }


# --------------------------------------------------------------------------- save / load


class _PairLike(Protocol):
    name: str
    image: np.ndarray
    labels: np.ndarray
    sparse: bool


@dataclass
class SavedPair:
    """One image with its annotation, as :func:`load_training_set` returns it.

    Attributes
    ----------
    name : str
        The name it was saved under (usually the image layer's name).
    image : (..., Y, X[, C]) ndarray
        Channels-last if it has channels; dtype as saved.
    labels : (..., Y, X) ndarray of int
        Instance labels, or an annotation in the sparse convention.
    sparse : bool
        True when `labels` follows the sparse convention (0 = not annotated,
        1 = background, >= 2 = objects).
    checked_regions : list of (kind, vertices)
        The checked regions already learned on this image (see :func:`regions_mask`),
        in the labels' pixel coordinates; empty when none were saved.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    sparse: bool = False
    checked_regions: list[tuple[str, np.ndarray]] = field(default_factory=list)


def _has_channels(image: np.ndarray, labels: np.ndarray, name: str) -> bool:
    """Return True when `image` is `labels`' shape plus a channel axis last."""
    if image.shape == labels.shape:
        return False
    if image.ndim == labels.ndim + 1 and image.shape[:-1] == labels.shape:
        return True
    raise NapariUnetError(
        f"training pair {name!r}: image shape {image.shape} does not fit labels shape "
        f"{labels.shape}; the labels must have the image's shape (without a channel axis, "
        "which comes last)."
    )


def _write_image(path: Path, image: np.ndarray, has_channels: bool) -> None:
    import tifffile

    from napari_unet.core.io import atomic_write

    rgb = has_channels and image.shape[-1] == 3 and image.dtype in (np.uint8, np.uint16)
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, image, compression="zlib", photometric="rgb" if rgb else "minisblack")


def save_training_set(
    folder: str | os.PathLike[str],
    pairs: Sequence[_PairLike],
    *,
    overwrite: bool = False,
    checked_regions: Mapping[str, Sequence[tuple[str, Any]]] | None = None,
) -> list[Path]:
    """Save a training set to a folder, so that it survives a restart.

    Layout::

        images/<stem>.tif     each image as it is (dtype and axes kept, zlib)
        labels/<stem>.tif     its labels: uint16 (uint32 above 65535), as given
                              (sparse convention for sparse pairs)
        training_set.json     the index: format, version and, per pair, name,
                              stem, files, shapes, dtype, channel axis, sparse
                              flag, annotation summary and the checked regions
                              already learned (kind and vertices, if any)

    Stems come from the names (:func:`napari_unet.core.io.safe_stems`).
    Each file is written atomically, the index last, so an interrupted save of
    a new folder leaves no index (and no training set to load by mistake).

    Parameters
    ----------
    folder : str or path-like
        Created if missing.
    pairs : sequence of objects with ``name``, ``image``, ``labels``, ``sparse``
        E.g. the session's ``TrainingPair`` or :class:`SavedPair`. ``image`` is
        ``(..., Y, X)`` or channels-last ``(..., Y, X, C)``; ``labels`` is
        ``(..., Y, X)`` of int.
    overwrite : bool, optional
        Replace an existing index and existing files of the same names. Other
        files in the folder are left alone. Default False.
    checked_regions : mapping of name to list of (kind, vertices), optional
        Per pair name, the checked regions already learned on it (so that a later
        session skips them too); names without a pair are ignored.

    Returns
    -------
    list of Path
        Every file written, the index last.

    Raises
    ------
    NapariUnetError
        Nothing to save, a pair whose image and labels do not fit or whose
        labels are not whole numbers >= 0, a checked region that is not a rectangle,
        polygon or ellipse of finite vertices, a file that exists while `overwrite`
        is False, or a folder that cannot be written. Everything is checked
        before anything is written.
    """
    from napari_unet.core.io import (
        atomic_write,
        check_writable_folder,
        safe_stems,
        write_labels_tiff,
    )

    pairs = list(pairs)
    if not pairs:
        raise NapariUnetError("there is nothing to save: the training set is empty.")
    checked = []
    for pair in pairs:
        name = str(pair.name)
        image = np.asarray(pair.image)
        labels = _labels(pair.labels, f"the labels of {name!r}")
        if labels.ndim < 2:
            raise NapariUnetError(
                f"the labels of {name!r} must be at least 2-D (Y, X), got shape {labels.shape}."
            )
        if labels.size and int(labels.max()) > _UINT32_MAX:
            raise NapariUnetError(
                f"the labels of {name!r} go up to {int(labels.max())}, more than a TIFF "
                "uint32 can hold; relabel them consecutively first."
            )
        if image.dtype.kind not in "biuf":
            raise NapariUnetError(
                f"the image {name!r} has dtype {image.dtype}; save images of numbers."
            )
        has_channels = _has_channels(image, labels, name)
        sparse = bool(pair.sparse)
        # a full annotation in the sparse convention (int64: no overflow at uint32 max)
        summary = annotation_summary(labels if sparse else labels.astype(np.int64) + 1)
        learned = _check_regions(
            (checked_regions or {}).get(name, ()), f"the checked regions of {name!r}: "
        )
        regions = [{"kind": kind, "vertices": v.tolist()} for kind, v in learned]
        checked.append((name, image, labels, sparse, has_channels, summary, regions))

    folder = Path(folder).expanduser()
    stems = safe_stems([c[0] for c in checked])
    index = folder / INDEX_FILE
    image_files = [folder / "images" / f"{s}.tif" for s in stems]
    label_files = [folder / "labels" / f"{s}.tif" for s in stems]
    if not overwrite:
        clash = [p for p in [index, *image_files, *label_files] if p.exists()]
        if clash:
            raise NapariUnetError(
                f"{folder} already holds {clash[0].relative_to(folder).as_posix()}"
                + (f" and {len(clash) - 1} other file(s)" if len(clash) > 1 else "")
                + "; tick overwrite or choose another folder."
            )
    for path in [index, *image_files, *label_files]:
        if path.is_dir():
            raise NapariUnetError(f"{path} is a folder; choose another folder to save into.")
    check_writable_folder(folder)

    written: list[Path] = []
    entries = []
    for item, stem, image_file, label_file in zip(
        checked, stems, image_files, label_files, strict=True
    ):
        name, image, labels, sparse, has_channels, summary, regions = item
        _write_image(image_file, image, has_channels)
        written.append(image_file)
        written.append(write_labels_tiff(label_file, labels, overwrite=True))
        entries.append(
            {
                "name": name,
                "stem": stem,
                "image": f"images/{stem}.tif",
                "labels": f"labels/{stem}.tif",
                "image_shape": list(image.shape),
                "image_dtype": image.dtype.name,
                "has_channels": has_channels,
                "labels_shape": list(labels.shape),
                "sparse": sparse,
                "summary": summary,
            }
        )
        if regions:
            entries[-1]["checked_regions"] = regions
    document = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pairs": entries,
    }
    with atomic_write(index) as tmp:
        tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
    written.append(index)
    return written


def _read_tiff(path: Path, what: str, folder: Path) -> np.ndarray:
    import tifffile

    from napari_unet.core.io import _READ_ERRORS

    if not path.is_file():
        raise NapariUnetError(
            f"the training set in {folder} is incomplete: {what} "
            f"{path.relative_to(folder).as_posix()} is missing."
        )
    try:
        return np.asarray(tifffile.imread(path))
    except _READ_ERRORS as exc:
        raise NapariUnetError(
            f"the training set in {folder} is damaged: {what} "
            f"{path.relative_to(folder).as_posix()} cannot be read ({exc})."
        ) from exc


def _fit_shape(array: np.ndarray, shape: Any) -> np.ndarray:
    """Restore the saved shape (tifffile may drop axes of length 1)."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        return array
    if array.shape != shape and array.size == math.prod(shape):
        return array.reshape(shape)
    return array


def _damaged(folder: Path, why: str) -> NapariUnetError:
    return NapariUnetError(
        f"{INDEX_FILE} in {folder} is damaged ({why}); save the training set again, "
        "or restore the file."
    )


def load_training_set(folder: str | os.PathLike[str]) -> list[SavedPair]:
    """Load a training set written by :func:`save_training_set`.

    Only JSON and TIFF pixels are read; nothing from the files is executed, and
    only files under ``images/`` and ``labels/`` named by the index are opened.

    Parameters
    ----------
    folder : str or path-like
        The folder holding ``training_set.json``.

    Returns
    -------
    list of SavedPair
        In the saved order.

    Raises
    ------
    NapariUnetError
        The folder is missing or holds no ``training_set.json``; the index is
        damaged or of an unknown format version; an image or labels file is
        missing or unreadable; an image does not fit its labels; labels are not
        whole numbers >= 0.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise NapariUnetError(f"training-set folder {folder} does not exist.")
    if not folder.is_dir():
        raise NapariUnetError(f"{folder} is a file; choose the folder of a saved training set.")
    index = folder / INDEX_FILE
    if not index.is_file():
        raise NapariUnetError(
            f"{folder} is not a saved training set: it has no {INDEX_FILE}. Choose the "
            "folder that 'Save training set' wrote."
        )
    try:
        document = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(folder, str(exc)) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise _damaged(folder, f"it is not a {FORMAT_NAME} index")
    version = document.get("version")
    if version != FORMAT_VERSION:
        raise NapariUnetError(
            f"{INDEX_FILE} in {folder} has format version {version!r}; this napari-unet "
            f"reads version {FORMAT_VERSION}. Open it with the napari-unet that saved it "
            "(or update napari-unet)."
        )
    entries = document.get("pairs")
    if not isinstance(entries, list):
        raise _damaged(folder, "it has no list of pairs")
    out: list[SavedPair] = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _damaged(folder, f"pair {k} is not a record")
        name, stem, sparse = entry.get("name"), entry.get("stem"), entry.get("sparse")
        if not isinstance(name, str) or not isinstance(sparse, bool):
            raise _damaged(folder, f"pair {k} lacks a name or sparse flag")
        if not isinstance(stem, str) or not _STEM_RE.match(stem):
            raise _damaged(folder, f"pair {name!r} has an invalid file stem {stem!r}")
        image = _read_tiff(folder / "images" / f"{stem}.tif", f"the image of {name!r}", folder)
        labels = _read_tiff(folder / "labels" / f"{stem}.tif", f"the labels of {name!r}", folder)
        image = _fit_shape(image, entry.get("image_shape"))
        labels = _fit_shape(labels, entry.get("labels_shape"))
        if labels.dtype.kind not in "iu":
            raise NapariUnetError(
                f"the training set in {folder} is damaged: the labels of {name!r} have dtype "
                f"{labels.dtype}, not whole numbers."
            )
        if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
            raise NapariUnetError(
                f"the training set in {folder} is damaged: the labels of {name!r} hold "
                "negative values."
            )
        fits = image.shape == labels.shape or (
            image.ndim == labels.ndim + 1 and image.shape[:-1] == labels.shape
        )
        if not fits or labels.ndim < 2:
            raise NapariUnetError(
                f"the training set in {folder} is damaged: the image of {name!r} has shape "
                f"{image.shape} but its labels have shape {labels.shape}."
            )
        saved_regions = entry.get("checked_regions", [])
        if not isinstance(saved_regions, list) or not all(
            isinstance(r, dict) for r in saved_regions
        ):
            raise _damaged(folder, f"the checked regions of {name!r} are not a list of records")
        try:
            learned = _check_regions(
                [(r.get("kind"), r.get("vertices")) for r in saved_regions],
                f"the checked regions of {name!r}: ",
            )
        except NapariUnetError as exc:
            raise _damaged(folder, str(exc)) from exc
        out.append(
            SavedPair(name=name, image=image, labels=labels, sparse=sparse, checked_regions=learned)
        )
    return out
