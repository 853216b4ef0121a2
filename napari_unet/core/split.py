"""Split touching nuclei with a watershed (numpy, scipy and scikit-image only).

Two entry points:

- :func:`split_nuclei` turns a binary mask (or a label image) into instance
  labels with the distance-transform watershed.
- :func:`labels_from_probabilities` turns the UNet's foreground (and boundary)
  probability maps into instance labels.

Speed
-----
Every connected component is processed on its own, as if it were alone in the
image, but without a Python loop over components: the components are copied
into one compact *canvas*, each in its own box with an empty margin wide enough
that no filter reaches from one component into another, then the distance
transform, smoothing, maximum filter and watershed run once on the canvas, and
the result is copied back. The canvas is usually much smaller than the image
(it holds the components' bounding boxes, not the background), and components
with a single marker skip the watershed altogether. A 2048 x 2048 mask with
about 1000 touching nuclei takes a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.split_config import (
    MAX_SMOOTH,
    REFERENCE_DIAMETER,
    SplitConfig,
    check_split_params,
    split_settings,
)

__all__ = [
    "MAX_SMOOTH",
    "REFERENCE_DIAMETER",
    "SplitConfig",
    "labels_from_probabilities",
    "looks_like_intensities",
    "probability_mask",
    "split_nuclei",
    "split_settings",
]

_FOUR = ndi.generate_binary_structure(2, 1)  # objects are 4-connected (as the watershed floods)
_EIGHT = np.ones((3, 3), dtype=bool)  # marker plateaus may be 8-connected
_SPLIT_KWARGS = frozenset({"min_distance", "h", "smooth", "compactness"})
_INT32_MAX = int(np.iinfo(np.int32).max)


# --------------------------------------------------------------------------- checks


def looks_like_intensities(image: np.ndarray) -> bool:
    """Return True when an integer image is an intensity or probability map, not labels.

    In a label image or a mask a foreground pixel and its right-hand neighbour almost
    always hold the same value (they differ only where two objects touch); in an
    intensity or probability map (e.g. probabilities saved as uint8 0-255) most differ.

    Examples
    --------
    >>> labels = np.zeros((20, 20), np.uint8); labels[2:12, 2:12] = 1
    >>> looks_like_intensities(labels), looks_like_intensities(np.arange(400).reshape(20, 20))
    (False, True)
    """
    a = np.asarray(image)
    if a.ndim < 2 or a.shape[-1] < 2:
        return False
    left, right = a[..., :-1], a[..., 1:]
    both = (left > 0) & (right > 0)
    n = int(np.count_nonzero(both))
    return bool(n >= 100 and np.count_nonzero(both & (left != right)) > 0.3 * n)


def _check_mask(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """Return (array, is_label_image) for a bool / 0-1 mask or a label image."""
    mask = np.asarray(mask)
    if mask.ndim < 2:
        raise NapariUnetError(f"mask must be at least 2-D (Y, X), got shape {mask.shape}.")
    if mask.dtype == bool:
        return mask, False
    if np.issubdtype(mask.dtype, np.floating):
        if mask.size and not np.isin(mask, (0.0, 1.0)).all():
            raise NapariUnetError(
                f"mask has dtype {mask.dtype} with values other than 0 and 1 (range "
                f"{float(np.nanmin(mask)):g}..{float(np.nanmax(mask)):g}); pass a bool mask "
                "or an integer label image, or use labels_from_probabilities for a "
                "probability map."
            )
        return mask != 0, False
    if not np.issubdtype(mask.dtype, np.integer):
        raise NapariUnetError(f"mask has dtype {mask.dtype}; pass a bool mask or integer labels.")
    if np.issubdtype(mask.dtype, np.signedinteger) and mask.size and mask.min() < 0:
        raise NapariUnetError(
            f"mask has negative values (min {int(mask.min())}); labels must be >= 0."
        )
    values = mask[mask != 0]
    is_labels = bool(values.size) and bool((values != values[0]).any())
    return (mask if is_labels else mask != 0), is_labels


def _check_probabilities(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim < 2:
        raise NapariUnetError(f"{what} must be at least 2-D (Y, X), got shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype == bool):
        raise NapariUnetError(
            f"{what} has dtype {array.dtype}; pass probabilities as floats in [0, 1]."
        )
    array = array.astype(np.float32, copy=False)
    if array.size:
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise NapariUnetError(f"{what} holds NaN or infinite values.")
        if low < -1e-3 or high > 1 + 1e-3:
            raise NapariUnetError(
                f"{what} ranges {low:g}..{high:g}, outside [0, 1]; pass probabilities "
                "(apply a sigmoid or softmax to the network's raw output first)."
            )
    return array


# --------------------------------------------------------------------------- helpers


def _per_slice(
    shape: tuple[int, ...], arrays: tuple[np.ndarray | None, ...], fn: Callable[..., np.ndarray]
) -> np.ndarray:
    """Apply a 2-D labelling ``fn`` to every (Y, X) slice, keeping ids unique."""
    if len(shape) == 2:
        return fn(*arrays)
    out = np.zeros(shape, dtype=np.int32)
    offset = 0
    for index in np.ndindex(*shape[:-2]):
        labels = fn(*(None if a is None else a[index] for a in arrays))
        n = int(labels.max()) if labels.size else 0
        if offset + n > _INT32_MAX:
            raise NapariUnetError(
                f"more than {_INT32_MAX} objects in a stack of shape {shape}; process "
                "fewer slices at a time."
            )
        out[index] = np.where(labels > 0, labels + offset, 0)
        offset += n
    return out


def _fill_holes_per_object(labels: np.ndarray) -> None:
    """Fill, in place, background regions enclosed by a single object.

    A hole is a 4-connected background region that does not touch the image
    border. It is filled only when every pixel around it belongs to the same
    object, so the gap between three touching nuclei stays empty.
    """
    background = labels == 0
    holes, n_holes = ndi.label(background)
    if n_holes == 0:
        return
    is_hole = np.ones(n_holes + 1, dtype=bool)
    is_hole[0] = False
    edges = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    is_hole[edges] = False
    if not is_hole.any():
        return
    flat_holes = holes.ravel()
    hole_px = np.flatnonzero(is_hole[flat_holes])
    hole_id = flat_holes[hole_px]
    width = labels.shape[1]
    flat = labels.ravel()
    hid, obj = [], []
    # Hole pixels are never on the image border, so all 4 neighbours exist.
    for step in (-width, width, -1, 1):
        neighbour = flat[hole_px + step]
        ok = neighbour > 0
        hid.append(hole_id[ok])
        obj.append(neighbour[ok])
    hid_all = np.concatenate(hid)
    obj_all = np.concatenate(obj)
    # Per hole: the smallest and the largest neighbouring object id.
    low = np.full(n_holes + 1, np.iinfo(np.int64).max, dtype=np.int64)
    high = np.zeros(n_holes + 1, dtype=np.int64)
    np.minimum.at(low, hid_all, obj_all)
    np.maximum.at(high, hid_all, obj_all)
    fill = np.where(is_hole & (low == high), high, 0)
    values = fill[hole_id]
    chosen = values > 0
    flat[hole_px[chosen]] = values[chosen]


def _relabel(
    values: np.ndarray,
    pixels: np.ndarray,
    shape: tuple[int, int],
    min_size: int,
    fill_holes: bool,
) -> np.ndarray:
    """Build the output labels from the object id of each foreground pixel.

    Objects smaller than `min_size` pixels are dropped, the rest numbered
    1..N in raster order (of their first pixel), then holes are filled.

    Parameters
    ----------
    values : (P,) ndarray of int
        Object id (any positive numbers, 0 = none) of each pixel.
    pixels : (P,) ndarray of int
        Increasing flat indices of those pixels in an image of `shape`.
    shape : (int, int)
    min_size : int
    fill_holes : bool

    Returns
    -------
    (Y, X) ndarray of int32
    """
    out = np.zeros(shape, dtype=np.int32)
    if pixels.size == 0:
        return out
    values = values.astype(np.intp, copy=False)
    n = int(values.max()) + 1
    sizes = np.bincount(values, minlength=n)
    first = np.full(n, np.iinfo(np.intp).max, dtype=np.intp)
    np.minimum.at(first, values, pixels)
    kept = np.flatnonzero((sizes >= max(min_size, 1)) & (np.arange(n) > 0))
    kept = kept[np.argsort(first[kept], kind="stable")]
    lut = np.zeros(n, dtype=np.int32)
    lut[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    out.ravel()[pixels] = lut[values]
    if fill_holes and kept.size:
        _fill_holes_per_object(out)
    return out


def _finalize(labels: np.ndarray, min_size: int, fill_holes: bool) -> np.ndarray:
    """Drop objects < min_size, number 1..N in raster order, fill holes; int32."""
    pixels = np.flatnonzero(labels.ravel())
    return _relabel(labels.ravel()[pixels], pixels, labels.shape, min_size, fill_holes)


def _pack_boxes(heights: np.ndarray, widths: np.ndarray, margin: int) -> tuple[np.ndarray, ...]:
    """Shelf-pack boxes with `margin` empty pixels around each; return (ys, xs, H, W)."""
    n = len(heights)
    area = float(np.sum((heights + margin) * (widths + margin)))
    canvas_w = int(max(widths.max() + 2 * margin, math.ceil(math.sqrt(area))))
    order = np.argsort(-heights, kind="stable")
    ys = np.zeros(n, dtype=np.intp)
    xs = np.zeros(n, dtype=np.intp)
    y, x, shelf = margin, margin, 0
    sizes = zip(order.tolist(), heights[order].tolist(), widths[order].tolist(), strict=True)
    for i, h, w in sizes:
        if x + w + margin > canvas_w:
            y += shelf + margin
            x, shelf = margin, 0
        ys[i], xs[i] = y, x
        x += w + margin
        shelf = max(shelf, h)
    return ys, xs, y + shelf + margin, canvas_w


class _Pixels:
    """The foreground pixels of a 2-D component image, as flat lists.

    Attributes
    ----------
    pixels : (P,) ndarray of int
        Increasing flat indices in the image.
    component : (P,) ndarray of int
        Component id of each pixel.
    rows, cols : (P,) ndarray of int
        Where each pixel lies in the working array (the image itself, or the
        canvas of :meth:`packed`).
    shape : (int, int)
        Shape of the working array.
    """

    def __init__(self, components: np.ndarray, n: int, min_size: int = 0) -> None:
        self.image_shape = components.shape
        self.n = n
        flat = components.ravel()
        pixels = np.flatnonzero(flat)
        component = flat[pixels]
        if min_size > 1:
            self.keep = np.bincount(component, minlength=n + 1) >= min_size
            self.keep[0] = False
            small = ~self.keep[component]
            if small.any():
                pixels, component = pixels[~small], component[~small]
        else:
            self.keep = np.ones(n + 1, dtype=bool)
            self.keep[0] = False
        self.pixels = pixels
        self.component = component
        self.rows, self.cols = np.divmod(pixels, components.shape[1])
        self.shape = components.shape

    def packed(self, components: np.ndarray, margin: int) -> np.ndarray:
        """Move the pixels onto a canvas, each component in its own padded box.

        Returns the canvas of component ids; `rows`, `cols` and `shape` then
        refer to the canvas.
        """
        n, keep = self.n, self.keep
        boxes = ndi.find_objects(components)
        y0 = np.zeros(n + 1, dtype=np.intp)
        x0 = np.zeros(n + 1, dtype=np.intp)
        heights = np.zeros(n + 1, dtype=np.intp)
        widths = np.zeros(n + 1, dtype=np.intp)
        for k, box in enumerate(boxes, 1):
            if box is not None and keep[k]:
                y0[k], x0[k] = box[0].start, box[1].start
                heights[k], widths[k] = box[0].stop - box[0].start, box[1].stop - box[1].start
        kept = np.flatnonzero(keep[: len(boxes) + 1])
        py = np.zeros(n + 1, dtype=np.intp)
        px = np.zeros(n + 1, dtype=np.intp)
        py[kept], px[kept], canvas_h, canvas_w = _pack_boxes(heights[kept], widths[kept], margin)
        comp = self.component
        self.rows = self.rows - y0[comp] + py[comp]
        self.cols = self.cols - x0[comp] + px[comp]
        self.shape = (int(canvas_h), int(canvas_w))
        canvas = np.zeros(self.shape, dtype=np.int32)
        canvas[self.rows, self.cols] = comp
        return canvas


def _flood(
    px: _Pixels,
    markers: np.ndarray,
    landscape: np.ndarray,
    *,
    compactness: float = 0.0,
) -> np.ndarray:
    """Return the object id of every foreground pixel, flooding from markers.

    A component with no marker becomes one object, one with a single marker
    becomes that marker's object (no watershed needed), and only components
    with two or more markers are flooded, by one watershed restricted to them.
    Components must not touch each other (so a flood cannot cross).

    Parameters
    ----------
    px : _Pixels
        The foreground pixels, their components and places in the arrays below.
    markers : ndarray of int
        Marker ids 1..M, each inside one component (shape ``px.shape``).
    landscape : ndarray of float
        Flooded from low to high (shape ``px.shape``).
    compactness : float, optional
        Compact watershed parameter.

    Returns
    -------
    (P,) ndarray of int
        Object id per pixel of `px` (positive, not consecutive).
    """
    marker_at = markers[px.rows, px.cols]
    has = marker_at > 0
    marker_id = marker_at[has]
    n_markers = int(marker_id.max()) if marker_id.size else 0
    comp_of_marker = np.zeros(n_markers + 1, dtype=np.intp)
    comp_of_marker[marker_id] = px.component[has]
    present = np.zeros(n_markers + 1, dtype=bool)
    present[marker_id] = True
    per_comp = np.bincount(comp_of_marker[present], minlength=px.n + 1)
    lut = np.zeros(px.n + 1, dtype=np.intp)
    single = np.flatnonzero(present & (per_comp[comp_of_marker] == 1))
    lut[comp_of_marker[single]] = single
    unmarked = np.flatnonzero(per_comp[1:] == 0) + 1
    lut[unmarked] = n_markers + 1 + np.arange(unmarked.size)
    values = lut[px.component]
    in_multi = (per_comp > 1)[px.component]
    if in_multi.any():
        from skimage.segmentation import watershed

        rows, cols = px.rows[in_multi], px.cols[in_multi]
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        rows, cols = rows - box[0].start, cols - box[1].start
        region = np.zeros((box[0].stop - box[0].start, box[1].stop - box[1].start), dtype=bool)
        region[rows, cols] = True
        flooded = watershed(
            landscape[box],
            np.where(region, markers[box], 0),
            mask=region,
            connectivity=1,
            compactness=compactness,
        )
        values[in_multi] = flooded[rows, cols]
    return values


def probability_mask(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Return ``probabilities > threshold``, once they are checked to be probabilities.

    The foreground of :func:`labels_from_probabilities` without a boundary map; the
    mask a z-stack's probabilities are split in 3D from.

    Raises
    ------
    NapariUnetError
        When the values are not probabilities (floats in [0, 1], up to rounding), or
        `threshold` is not in [0, 1].
    """
    if not 0.0 <= threshold <= 1.0:
        raise NapariUnetError(f"threshold must lie in [0, 1], got {threshold!r}.")
    return _check_probabilities(probabilities, "foreground") > threshold


# --------------------------------------------------------------------------- split_nuclei


def _components(mask: np.ndarray, is_labels: bool) -> tuple[np.ndarray, int]:
    if is_labels:
        from skimage.measure import label

        components, n = label(mask, background=0, connectivity=1, return_num=True)
        return components.astype(np.int32, copy=False), int(n)
    components, n = ndi.label(mask, structure=_FOUR)
    return components, int(n)


def _peak_markers(dist: np.ndarray, inside: np.ndarray, min_distance: int) -> np.ndarray:
    """One marker per group of local maxima closer than min_distance (Chebyshev)."""
    size = 2 * min_distance + 1
    local_max = ndi.maximum_filter(dist, size=size, mode="constant", cval=0.0)
    candidates = np.flatnonzero(((dist == local_max) & inside).ravel())
    markers = np.zeros(dist.shape, dtype=np.int32)
    if candidates.size == 0:
        return markers
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    coords = np.column_stack(np.divmod(candidates, dist.shape[1]))
    # Candidates within min_distance of each other have equal values (each is
    # the maximum of the other's window): they are one plateau or ridge.
    pairs = cKDTree(coords).query_pairs(r=min_distance, p=np.inf, output_type="ndarray")
    n = candidates.size
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), (n, n))
    _, group = connected_components(graph, directed=False)
    markers.ravel()[candidates] = group.astype(np.int32) + 1
    return markers


def _h_maxima_markers(dist: np.ndarray, inside: np.ndarray, h: float) -> np.ndarray:
    """Markers at the regional maxima of the h-dome reconstruction of `dist`.

    Unlike ``skimage.morphology.h_maxima``, two equal peaks joined by a saddle
    less than `h` below them give one marker, not two.
    """
    from skimage.morphology import local_maxima, reconstruction

    domes = reconstruction(dist - h, dist, method="dilation")
    maxima = local_maxima(domes, connectivity=2, allow_borders=True) & inside
    markers, _ = ndi.label(maxima, structure=_EIGHT)
    return markers


def _split_2d(
    mask: np.ndarray,
    is_labels: bool,
    *,
    min_distance: int,
    h: float | None,
    smooth: float,
    min_size: int,
    fill_holes: bool,
    compactness: float,
) -> np.ndarray:
    components, n = _components(mask, is_labels)
    px = _Pixels(components, n, min_size)
    if px.pixels.size == 0:
        return np.zeros(mask.shape, dtype=np.int32)
    radius = int(4.0 * smooth + 0.5) if smooth > 0 else 0
    # maxima further apart than the image is wide cannot exist: a larger min_distance
    # gives the same markers, and would only widen the canvas below without end
    min_distance = min(min_distance, max(mask.shape) + 1)
    # Empty pixels between two components on the canvas so that no filter
    # reaches from one into the other: the maximum filter reads the smoothed
    # map up to min_distance away, which reads the distance map `radius`
    # further; the h-dome reconstruction needs a zero between the two blurs.
    margin = min_distance + radius + 1 if h is None else 2 * radius + 2
    inside = px.packed(components, margin) > 0
    dist = ndi.distance_transform_edt(inside)
    if smooth > 0:
        dist = ndi.gaussian_filter(dist, smooth, mode="constant", cval=0.0)
    if h is None:
        markers = _peak_markers(dist, inside, min_distance)
    else:
        markers = _h_maxima_markers(dist, inside, h)
    np.negative(dist, out=dist)  # flood from the centres outwards
    values = _flood(px, markers, dist, compactness=compactness)
    return _relabel(values, px.pixels, mask.shape, min_size, fill_holes)


def split_nuclei(
    mask: np.ndarray,
    *,
    min_distance: int = 4,
    h: float | None = None,
    smooth: float = 1.0,
    min_size: int = 10,
    fill_holes: bool = True,
    compactness: float = 0.0,
) -> np.ndarray:
    """Split touching nuclei in a mask with a distance-transform watershed.

    Each connected component (4-connected: pixels that meet only at a corner
    are not connected) is treated on its own: its Euclidean distance
    transform (optionally smoothed) gives markers at its local maxima, and a
    watershed on the negated distance, restricted to the component, splits it
    between the markers. A component with one marker stays one object.

    Parameters
    ----------
    mask : (Y, X) or (..., Y, X) ndarray of bool or int
        Foreground mask (bool, 0/1, or any single nonzero value), or a label
        image. With a label image every label is split on its own, so borders
        between different labels stay borders: splitting never merges objects
        that were already separated.
    min_distance : int, optional
        Markers are the maxima of the distance map within a
        ``(2 * min_distance + 1)`` square window (as
        ``skimage.feature.peak_local_max(min_distance=...)``); maxima closer
        than that are merged into one marker. Larger values split less.
    h : float, optional
        If given, use the h-maxima of the distance map as markers instead:
        maxima that stand out by at least `h` pixels of distance (the regional
        maxima of the h-dome reconstruction, so two peaks joined by a saddle
        less than `h` below them give one marker); `min_distance` is then
        ignored.
    smooth : float, optional
        Sigma of a Gaussian applied to the distance map (0 = none). Smoothing
        removes the spurious maxima of ragged outlines.
    min_size : int, optional
        Objects smaller than this many pixels are removed (not merged).
    fill_holes : bool, optional
        Fill holes enclosed by a single object.
    compactness : float, optional
        Compact watershed (skimage); 0 = classic watershed.

    Returns
    -------
    ndarray of int32, same shape as `mask`
        0 = background, objects 1..N numbered in raster order. For ND input
        every (Y, X) slice is labelled on its own, ids unique across slices.

    Raises
    ------
    NapariUnetError
        If `mask` is not at least 2-D, is float with values other than 0/1,
        has negative labels, or a parameter is out of range.

    Notes
    -----
    The image border counts as background for the distance transform, so a
    nucleus cut by the border gets its marker inside (unlike ``peak_local_max``
    with its default ``exclude_border``, which drops such nuclei).

    Holes are filled per object *after* the split. A large hole inside one
    nucleus makes a ring-shaped distance ridge that can split it; where
    objects never enclose background, fill the mask's holes first
    (``scipy.ndimage.binary_fill_holes``). That is not done here because a
    ring of touching nuclei (around a gland lumen, say) would then merge.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :60]
    >>> mask = ((yy - 20) ** 2 + (xx - 20) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 38) ** 2 < 144)
    >>> int(split_nuclei(mask).max())
    2
    """
    check_split_params(min_distance, h, smooth, min_size)
    array, is_labels = _check_mask(mask)

    def one(plane: np.ndarray) -> np.ndarray:
        return _split_2d(
            plane,
            is_labels,
            min_distance=int(min_distance),
            h=h,
            smooth=float(smooth),
            min_size=int(min_size),
            fill_holes=fill_holes,
            compactness=float(compactness),
        )

    return _per_slice(array.shape, (array,), one)


# --------------------------------------------------------------------------- probabilities


def _from_boundary(
    foreground: np.ndarray,
    boundary: np.ndarray,
    *,
    threshold: float,
    boundary_threshold: float,
    min_seed_size: int,
    min_size: int,
    fill_holes: bool,
) -> np.ndarray:
    inside = foreground > threshold
    components, n = ndi.label(inside, structure=_FOUR)
    px = _Pixels(components, n)
    if px.pixels.size == 0:
        return np.zeros(foreground.shape, dtype=np.int32)
    seeds, n_seeds = ndi.label(inside & (boundary < boundary_threshold), structure=_FOUR)
    if n_seeds:
        sizes = np.bincount(seeds.ravel(), minlength=n_seeds + 1)
        keep = sizes >= max(min_seed_size, 1)
        keep[0] = False
        lut = np.zeros(n_seeds + 1, dtype=np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        seeds = lut[seeds]
    values = _flood(px, seeds, boundary)
    return _relabel(values, px.pixels, foreground.shape, min_size, fill_holes)


def labels_from_probabilities(
    foreground: np.ndarray,
    boundary: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    min_size: int = 10,
    fill_holes: bool = True,
    split: bool = True,
    min_seed_size: int = 4,
    **split_kwargs: float,
) -> np.ndarray:
    """Turn predicted probability maps into instance labels.

    With a `boundary` map, the seeds are the connected regions of
    ``(foreground > threshold) & (boundary < boundary_threshold)`` (seeds
    smaller than `min_seed_size` pixels are dropped); a watershed on the
    boundary map grows them over ``foreground > threshold``. A foreground
    region without a seed is kept as one object. Without `boundary`, the mask
    ``foreground > threshold`` is split with :func:`split_nuclei` (or, with
    ``split=False``, its 4-connected components are the objects).

    Parameters
    ----------
    foreground : (Y, X) or (..., Y, X) ndarray of float
        Probability in [0, 1] that a pixel belongs to an object (rim included).
    boundary : ndarray of float, optional
        Probability in [0, 1] of the thin band at object edges, including the
        interface between touching objects; same shape as `foreground`.
    threshold : float, optional
        Foreground probability above which a pixel is an object pixel.
    boundary_threshold : float, optional
        Boundary probability below which an object pixel can seed an object.
    min_size : int, optional
        Objects smaller than this many pixels are removed.
    fill_holes : bool, optional
        Fill holes enclosed by a single object.
    split : bool, optional
        Without `boundary`: split touching objects with :func:`split_nuclei`.
    min_seed_size : int, optional
        With `boundary`: smallest seed, in pixels.
    **split_kwargs
        ``min_distance``, ``h``, ``smooth``, ``compactness`` for
        :func:`split_nuclei` (used only without `boundary` and with `split`).

    Returns
    -------
    ndarray of int32, same shape as `foreground`
        0 = background, objects 1..N in raster order; ND input is labelled
        slice by slice over the leading axes, ids unique across slices.

    Raises
    ------
    NapariUnetError
        If the maps are not probabilities in [0, 1], their shapes differ, or
        a parameter is out of range.
    TypeError
        If `split_kwargs` holds a name :func:`split_nuclei` does not take.

    Examples
    --------
    >>> fg = np.zeros((20, 30)); fg[5:15, 3:27] = 0.9
    >>> bd = np.zeros_like(fg); bd[5:15, 14:16] = 0.9  # an interface at x = 14, 15
    >>> int(labels_from_probabilities(fg, bd).max())
    2
    """
    unknown = set(split_kwargs) - _SPLIT_KWARGS
    if unknown:
        raise TypeError(
            f"labels_from_probabilities() got unexpected keyword arguments {sorted(unknown)}; "
            f"split options are {sorted(_SPLIT_KWARGS)}."
        )
    fg = _check_probabilities(foreground, "foreground")
    bd = None
    if boundary is not None:
        bd = _check_probabilities(boundary, "boundary")
        if bd.shape != fg.shape:
            raise NapariUnetError(
                f"boundary shape {bd.shape} differs from foreground shape {fg.shape}."
            )
    for name, value in (("threshold", threshold), ("boundary_threshold", boundary_threshold)):
        if not 0.0 <= value <= 1.0:
            raise NapariUnetError(f"{name} must lie in [0, 1], got {value!r}.")
    check_split_params(
        int(split_kwargs.get("min_distance", 4)),
        split_kwargs.get("h"),
        float(split_kwargs.get("smooth", 1.0)),
        min_size,
    )
    if int(min_seed_size) != min_seed_size or min_seed_size < 1:
        raise NapariUnetError(f"min_seed_size must be a whole number >= 1, got {min_seed_size!r}.")

    def one(plane: np.ndarray, plane_boundary: np.ndarray | None) -> np.ndarray:
        if plane_boundary is not None:
            return _from_boundary(
                plane,
                plane_boundary,
                threshold=threshold,
                boundary_threshold=boundary_threshold,
                min_seed_size=int(min_seed_size),
                min_size=int(min_size),
                fill_holes=fill_holes,
            )
        inside = plane > threshold
        if split:
            return split_nuclei(inside, min_size=min_size, fill_holes=fill_holes, **split_kwargs)
        components, _ = ndi.label(inside, structure=_FOUR)
        return _finalize(components, int(min_size), fill_holes)

    return _per_slice(fg.shape, (fg, bd), one)
