"""3D objects from a 2D network: labels of z-stacks (numpy, scipy and scikit-image only).

The network predicts each z-slice on its own (:func:`napari_unet.core.predict.iter_predict`);
this module turns the stacked foreground (and boundary) probabilities into one object per
nucleus in 3D, so a nucleus spanning 12 slices is one object, not 12:

- :func:`split_nuclei_3d` splits a 3D mask with a watershed on the anisotropy-aware
  distance transform (``scipy.ndimage.distance_transform_edt(..., sampling=...)``), from
  3D markers (h-maxima of the distance, or maxima at least ``min_distance`` apart).
- :func:`labels_from_probabilities_3d` thresholds the foreground and splits it, or, with a
  boundary map, grows 3D seeds (foreground away from the boundary) over the foreground.

Distances (``min_distance``, ``h``, ``smooth``) are in y/x pixels: a z-step of 3 pixels
(``spacing=(3, 1, 1)``) counts 3 pixels of distance. Sizes (``min_size``) are in voxels.
Every connected component is processed in its own bounding box, so working memory follows
the largest object, not the stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.options import resolve_axes

if TYPE_CHECKING:
    from napari_unet.core.split import SplitConfig

__all__ = [
    "FIRST_AXIS_CHOICES",
    "guess_axes",
    "voxel_size_from_scale",
    "labels_from_probabilities_3d",
    "split_by_axes",
    "split_image",
    "min_volume",
    "spacing_from_voxel_size",
    "split_nuclei_3d",
]

_SIX = ndi.generate_binary_structure(3, 1)  # objects are face-connected (as the watershed floods)
_ALL = np.ones((3, 3, 3), dtype=bool)  # marker plateaus may touch at edges and corners
#: A z-step more than this many times the pixel size (or less than its inverse) is refused:
#: a typo (nm for um) rather than a microscope.
MAX_ANISOTROPY = 50.0


#: What the first axis of a 3D image is, as the widgets ask: "auto" (from the layer's axis
#: labels: ``t``, ``time``, ``frame`` ... make a time series, anything else a z-stack), "z"
#: (a z-stack: 3D objects) or "time" (a time series: 2D objects per frame).
FIRST_AXIS_CHOICES = ("auto", "z", "time")

#: napari axis labels that name a z axis.
Z_AXIS_NAMES = frozenset({"z", "depth", "plane", "planes", "slice", "slices", "focus"})


def guess_axes(
    ndim: int, axis_labels: Sequence[object] | None = None, first_axis: str = "auto"
) -> str:
    """Return the axes of an image with ``ndim`` axes (channels left out).

    A 3D image is a z-stack (``ZYX``) unless ``first_axis`` is "time" or, with "auto",
    the layer names its first axis like time (``t``, ``time``, ``frame``: ``TYX``). A 4D
    image is a time series of z-stacks (``TZYX``). 2D: ``YX``; more than 4D: frames of 2D
    images (see :func:`napari_unet.core.options.resolve_axes`).

    Examples
    --------
    >>> guess_axes(3), guess_axes(3, ["t", "y", "x"]), guess_axes(3, None, "time")
    ('ZYX', 'TYX', 'TYX')
    """
    from napari_unet.core.io import TIME_AXIS_NAMES

    if first_axis not in FIRST_AXIS_CHOICES:
        raise NapariUnetError(
            f"first_axis must be one of {FIRST_AXIS_CHOICES}, got {first_axis!r}."
        )
    if ndim != 3:
        return resolve_axes(None, ndim)
    if first_axis == "auto":
        names = [str(a).strip().lower() for a in (axis_labels or ())]
        is_time = len(names) >= 3 and names[-3] in TIME_AXIS_NAMES
        first_axis = "time" if is_time else "z"
    return "TYX" if first_axis == "time" else "ZYX"


def voxel_size_from_scale(
    scale: Sequence[float] | None, axes: str
) -> tuple[float, float, float] | None:
    """Return the (z, y, x) voxel size of a layer's ``scale`` for a z-stack, else None.

    None when the axes hold no Z, or the scale is napari's default (all 1: unknown).

    Examples
    --------
    >>> voxel_size_from_scale((2.0, 0.5, 0.5), "ZYX"), voxel_size_from_scale((1, 1, 1), "ZYX")
    ((2.0, 0.5, 0.5), None)
    """
    if scale is None or "Z" not in axes or len(scale) < 3:
        return None
    z = float(scale[-len(axes) + axes.index("Z")])
    y, x = float(scale[-2]), float(scale[-1])
    if z == y == x == 1.0:
        return None
    return (z, y, x)


def spacing_from_voxel_size(voxel_size: Sequence[float] | None) -> tuple[float, float, float]:
    """Return the (z, y, x) sampling in y/x pixels for a voxel size (z, y, x) in any unit.

    The y/x pixel becomes 1 (their geometric mean where they differ), so distances in the
    result are in pixels as in 2D. None gives (1, 1, 1): z-steps as long as the pixels.

    Raises
    ------
    NapariUnetError
        When the voxel size is not three positive numbers, or z is more than
        :data:`MAX_ANISOTROPY` times the pixel size (or less than its inverse).

    Examples
    --------
    >>> spacing_from_voxel_size((2.0, 0.5, 0.5))
    (4.0, 1.0, 1.0)
    """
    if voxel_size is None:
        return (1.0, 1.0, 1.0)
    try:
        values = [float(v) for v in voxel_size]
    except (TypeError, ValueError):
        raise NapariUnetError(
            f"voxel size must be three numbers (z, y, x), got {voxel_size!r}."
        ) from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise NapariUnetError(
            f"voxel size must be three positive numbers (z, y, x), got {voxel_size!r}."
        )
    z, y, x = values
    pixel = math.sqrt(y * x)
    ratio = z / pixel
    if not 1 / MAX_ANISOTROPY <= ratio <= MAX_ANISOTROPY:
        raise NapariUnetError(
            f"voxel size {tuple(values)} makes a z-step {ratio:.3g} times the pixel size; "
            "give z, y and x in the same unit (e.g. 1.0 0.2 0.2 for 1 um steps and 0.2 um "
            "pixels)."
        )
    return (ratio, y / pixel, x / pixel)


def min_volume(min_area: float, spacing: Sequence[float]) -> int:
    """Return the voxels of the ball whose middle slice has ``min_area`` pixels.

    The 2D settings' smallest object (an area in pixels) becomes a volume: a ball of that
    cross-section, counted in voxels of ``spacing`` (a z-step of 3 pixels holds 3 times
    fewer voxels).

    Examples
    --------
    >>> min_volume(20, (1, 1, 1)), min_volume(20, (3, 1, 1))
    (67, 22)
    """
    if min_area <= 0:
        return 0
    radius = math.sqrt(float(min_area) / math.pi)
    return max(1, int(round(4.0 / 3.0 * math.pi * radius**3 / float(spacing[0]))))


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise NapariUnetError(f"spacing must be three positive numbers (z, y, x), got {spacing!r}.")
    return values  # type: ignore[return-value]


def _check_volume(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise NapariUnetError(f"{what} must be 3-D (Z, Y, X), got shape {array.shape}.")
    return array


def _markers(
    dist: np.ndarray,
    inside: np.ndarray,
    spacing: tuple[float, float, float],
    h: float | None,
    min_distance: float,
) -> tuple[np.ndarray, int]:
    """Label the 3D markers of one component's distance map."""
    if h is not None:
        from skimage.morphology import local_maxima, reconstruction

        domes = reconstruction(dist - h, dist, method="dilation")
        peaks = local_maxima(domes, connectivity=3, allow_borders=True) & inside
    else:
        size = tuple(2 * max(0, int(round(min_distance / s))) + 1 for s in spacing)
        top = ndi.maximum_filter(dist, size=size, mode="constant", cval=0.0)
        peaks = (dist == top) & inside
    markers, n = ndi.label(peaks, structure=_ALL)
    return markers, int(n)


def _fill_holes(box_labels: np.ndarray, value: int) -> None:
    """Fill, in place, the holes of object ``value`` (in 3D, then slice by slice)."""
    mine = box_labels == value
    filled = ndi.binary_fill_holes(mine)
    for z in range(filled.shape[0]):
        filled[z] = ndi.binary_fill_holes(filled[z])
    box_labels[filled & (box_labels == 0)] = value


def _grow_boxes(mask_components: np.ndarray, n: int):
    """Yield (k, box) for each component, the box one voxel larger on every side."""
    shape = mask_components.shape
    for k, box in enumerate(ndi.find_objects(mask_components, max_label=n), 1):
        if box is None:
            continue
        yield (
            k,
            tuple(
                slice(max(0, b.start - 1), min(dim, b.stop + 1))
                for b, dim in zip(box, shape, strict=True)
            ),
        )


def _split_components(
    components: np.ndarray,
    n: int,
    split_one,
    *,
    min_size: int,
    fill_holes: bool,
) -> np.ndarray:
    """Label each component with ``split_one(inside, box)``; return int32 labels 1..N."""
    out = np.zeros(components.shape, dtype=np.int32)
    next_id = 0
    for k, box in _grow_boxes(components, n):
        inside = components[box] == k
        count = int(np.count_nonzero(inside))
        if count < max(min_size, 1):
            continue
        parts, n_parts = split_one(inside, box)
        target = out[box]
        if n_parts <= 1:
            next_id += 1
            target[inside] = next_id
            if fill_holes:
                _fill_holes(target, next_id)
            continue
        sizes = np.bincount(parts[inside].ravel(), minlength=n_parts + 1)
        keep = sizes >= max(min_size, 1)
        keep[0] = False
        lut = np.zeros(n_parts + 1, dtype=np.int32)
        ids = np.arange(next_id + 1, next_id + 1 + int(keep.sum()), dtype=np.int32)
        lut[keep] = ids
        mapped = lut[parts]
        target[inside] = mapped[inside]
        next_id += ids.size
        if fill_holes:
            for value in ids.tolist():
                _fill_holes(target, value)
    return out


def split_nuclei_3d(
    mask: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    min_distance: float = 4,
    h: float | None = None,
    smooth: float = 1.0,
    min_size: int = 30,
    fill_holes: bool = True,
) -> np.ndarray:
    """Split touching nuclei in a 3D mask with a distance-transform watershed.

    Each face-connected component is treated on its own: its Euclidean distance
    transform (to the background; the stack's border is not background), measured with
    the voxel ``spacing`` (so a z-step of 3 pixels counts 3),
    optionally smoothed, gives markers at its maxima, and a watershed on the negated
    distance splits the component between them. A component with one marker stays one
    object. A label image is split label by label: borders between labels stay.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of bool or int
        Foreground mask, or a label image.
    spacing : (float, float, float), optional
        Voxel size (z, y, x) in y/x pixels (see :func:`spacing_from_voxel_size`).
    min_distance : float, optional
        Markers are the maxima of the distance map within this many pixels (in every
        direction, z measured with ``spacing``); used when ``h`` is None.
    h : float, optional
        Markers are the maxima that stand at least ``h`` pixels of distance above the
        saddle to their neighbour (h-maxima); ``min_distance`` is then ignored.
    smooth : float, optional
        Sigma (pixels, z scaled by ``spacing``) of a Gaussian on the distance map; 0: none.
    min_size : int, optional
        Objects smaller than this many voxels are removed.
    fill_holes : bool, optional
        Fill holes enclosed by a single object (in 3D and in each slice).

    Returns
    -------
    (Z, Y, X) ndarray of int32
        0 = background, objects 1..N.

    Examples
    --------
    >>> zz, yy, xx = np.mgrid[:20, :30, :50]
    >>> ball = lambda x0: (zz - 10) ** 2 + (yy - 15) ** 2 + (xx - x0) ** 2 < 81
    >>> int(split_nuclei_3d(ball(15) | ball(31), h=1.0).max())
    2
    """
    spacing = _check_spacing(spacing)
    mask = _check_volume(mask, "mask")
    if not (math.isfinite(min_distance) and min_distance > 0):
        raise NapariUnetError(f"min_distance must be a positive number, got {min_distance!r}.")
    if h is not None and not (math.isfinite(h) and h > 0):
        raise NapariUnetError(f"h must be a positive number (or None), got {h!r}.")
    if not (math.isfinite(smooth) and smooth >= 0):
        raise NapariUnetError(f"smooth must be 0 or more pixels, got {smooth!r}.")
    if int(min_size) != min_size or min_size < 0:
        raise NapariUnetError(f"min_size must be a whole number >= 0, got {min_size!r}.")
    if mask.dtype == bool or not np.issubdtype(mask.dtype, np.integer):
        components, n = ndi.label(mask != 0, structure=_SIX)
    else:
        from skimage.measure import label

        if mask.size and mask.min() < 0:
            raise NapariUnetError(f"mask has negative values (min {int(mask.min())}).")
        components = label(mask, background=0, connectivity=1).astype(np.int32, copy=False)
        n = int(components.max()) if components.size else 0
    sigma = tuple(smooth / s for s in spacing)

    def split_one(inside: np.ndarray, box) -> tuple[np.ndarray, int]:
        # the stack's border is not background: a nucleus cut by it (by the first or last
        # slice, or by a crop) keeps its depth there (on StarDist's 3D example, right half:
        # F1 0.833, against 0.679 with the border as background; the same on synthetic stacks)
        dist = ndi.distance_transform_edt(inside, sampling=spacing)
        if smooth > 0:
            dist = ndi.gaussian_filter(dist, sigma, mode="constant", cval=0.0)
        markers, n_markers = _markers(dist, inside, spacing, h, float(min_distance))
        if n_markers <= 1:
            return markers, n_markers
        from skimage.segmentation import watershed

        return watershed(-dist, markers, mask=inside), n_markers

    return _split_components(
        components, int(n), split_one, min_size=int(min_size), fill_holes=fill_holes
    )


def labels_from_probabilities_3d(
    foreground: np.ndarray,
    boundary: np.ndarray | None = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    min_size: int = 30,
    fill_holes: bool = True,
    split: bool = True,
    min_seed_size: int = 8,
    min_distance: float = 4,
    h: float | None = None,
    smooth: float = 1.0,
) -> np.ndarray:
    """Turn stacked probability maps into 3D instance labels.

    Without ``boundary``: ``foreground > threshold`` is split by :func:`split_nuclei_3d`
    (or, with ``split=False``, its face-connected components are the objects). With
    ``boundary``: the seeds are the 3D regions of ``(foreground > threshold) &
    (boundary < boundary_threshold)`` of at least ``min_seed_size`` voxels, grown by a
    watershed on the boundary map over the foreground; a component without a seed stays
    one object.

    Parameters
    ----------
    foreground, boundary : (Z, Y, X) ndarray of float
        Probabilities in [0, 1], slice by slice from the network.
    spacing : (float, float, float), optional
        Voxel size (z, y, x) in y/x pixels.
    threshold, boundary_threshold : float, optional
    min_size : int, optional
        Objects smaller than this many voxels are removed.
    fill_holes, split : bool, optional
    min_seed_size : int, optional
        Smallest seed (voxels) with ``boundary``.
    min_distance, h, smooth : optional
        :func:`split_nuclei_3d`'s marker settings, in pixels.

    Returns
    -------
    (Z, Y, X) ndarray of int32

    Examples
    --------
    >>> zz, yy, xx = np.mgrid[:20, :30, :50]
    >>> fg = ((zz - 10) ** 2 + (yy - 15) ** 2 + (xx - 25) ** 2 < 81) * 0.9
    >>> int(labels_from_probabilities_3d(fg, h=1.0).max())
    1
    """
    spacing = _check_spacing(spacing)
    fg = _check_volume(foreground, "foreground")
    for name, value in (("threshold", threshold), ("boundary_threshold", boundary_threshold)):
        if not 0.0 <= value <= 1.0:
            raise NapariUnetError(f"{name} must lie in [0, 1], got {value!r}.")
    inside = fg > threshold
    if boundary is None:
        if split:
            return split_nuclei_3d(
                inside,
                spacing=spacing,
                min_distance=min_distance,
                h=h,
                smooth=smooth,
                min_size=min_size,
                fill_holes=fill_holes,
            )
        components, n = ndi.label(inside, structure=_SIX)
        return _split_components(
            components,
            int(n),
            lambda inside_box, box: (inside_box.astype(np.int32), 1),
            min_size=int(min_size),
            fill_holes=fill_holes,
        )
    bd = _check_volume(boundary, "boundary")
    if bd.shape != fg.shape:
        raise NapariUnetError(
            f"boundary shape {bd.shape} differs from foreground shape {fg.shape}."
        )
    seeds, n_seeds = ndi.label(inside & (bd < boundary_threshold), structure=_SIX)
    if n_seeds:
        sizes = np.bincount(seeds.ravel(), minlength=n_seeds + 1)
        keep = sizes >= max(int(min_seed_size), 1)
        keep[0] = False
        lut = np.zeros(n_seeds + 1, dtype=np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        seeds = lut[seeds]
    components, n = ndi.label(inside, structure=_SIX)

    def grow(inside_box: np.ndarray, box) -> tuple[np.ndarray, int]:
        local = np.where(inside_box, seeds[box], 0)
        values = np.unique(local)
        values = values[values > 0]
        if values.size <= 1:
            return local, int(values.size)
        from skimage.segmentation import watershed

        lut = np.zeros(int(values.max()) + 1, dtype=np.int32)
        lut[values] = np.arange(1, values.size + 1, dtype=np.int32)
        return watershed(bd[box], lut[local], mask=inside_box), int(values.size)

    return _split_components(
        components, int(n), grow, min_size=int(min_size), fill_holes=fill_holes
    )


def split_by_axes(
    mask: np.ndarray,
    axes: str | None = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    min_distance: float = 4,
    h: float | None = None,
    smooth: float = 1.0,
    min_size: int = 10,
    fill_holes: bool = True,
) -> np.ndarray:
    """Split touching nuclei in 2D or 3D as the mask's axes say.

    A z-stack (``ZYX``) is split in 3D (:func:`split_nuclei_3d`), a time series of
    stacks (``TZYX``) in 3D per time point, anything else (``YX``, ``TYX``) slice by slice
    in 2D (:func:`napari_unet.core.split.split_nuclei`). Object ids are unique over the
    whole array.

    Parameters
    ----------
    mask : ndarray of bool or int
        A mask or a label image.
    axes : str, optional
        One of :data:`napari_unet.core.options.STACK_AXES`; None: by the number of
        dimensions (3: a z-stack, 4: ``TZYX``).
    spacing : (float, float, float), optional
        Voxel size (z, y, x) in y/x pixels, for z-stacks.
    min_distance, h, smooth, fill_holes : optional
        As :func:`split_nuclei_3d` (distances in pixels).
    min_size : int, optional
        Smallest object: pixels in 2D, voxels in 3D.

    Returns
    -------
    ndarray of int32, the shape of ``mask``
    """
    mask = np.asarray(mask)
    axes = resolve_axes(axes, mask.ndim)
    if "Z" not in axes:
        from napari_unet.core.split import split_nuclei

        return split_nuclei(
            mask,
            min_distance=max(1, int(round(min_distance))),
            h=h,
            smooth=smooth,
            min_size=int(min_size),
            fill_holes=fill_holes,
        )
    settings = dict(
        spacing=spacing,
        min_distance=min_distance,
        h=h,
        smooth=smooth,
        min_size=int(min_size),
        fill_holes=fill_holes,
    )
    if axes == "ZYX":
        return split_nuclei_3d(mask, **settings)
    out = np.zeros(mask.shape, dtype=np.int32)
    offset = 0
    for t in range(mask.shape[0]):
        lab = split_nuclei_3d(mask[t], **settings)
        out[t] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max()) if lab.size else 0
    return out


def split_image(
    data: np.ndarray,
    config: SplitConfig | None = None,
    *,
    probabilities: bool = False,
    axes: str | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Split touching nuclei in a mask, a label image or foreground probabilities.

    What Split nuclei (the widget, its live preview too) and ``napari-unet split`` run.
    Probabilities are thresholded at ``config.threshold``
    (:func:`napari_unet.core.split.probability_mask`), then split as a mask. With
    ``axes`` naming a Z the split is in 3D (:func:`split_by_axes`, ``min_size`` in
    voxels); otherwise every (Y, X) plane is split in 2D
    (:func:`napari_unet.core.split.split_nuclei`).

    Parameters
    ----------
    data : ndarray
        A mask or label image, or (``probabilities``) foreground probabilities in [0, 1].
    config : SplitConfig, optional
        The settings (default ``SplitConfig()``).
    probabilities : bool
        `data` holds probabilities.
    axes : str, optional
        The axes of `data` (:data:`napari_unet.core.options.STACK_AXES`); None: 2D planes.
    spacing : (float, float, float), optional
        A z-stack's voxel size (z, y, x) in y/x pixels (default: all 1).

    Returns
    -------
    ndarray of int32, the shape of `data`
    """
    from napari_unet.core.split import SplitConfig, probability_mask, split_nuclei

    config = config if config is not None else SplitConfig()
    mask = probability_mask(data, config.threshold) if probabilities else data
    if axes is not None and "Z" in axes:
        return split_by_axes(
            mask, axes, spacing=spacing or (1.0, 1.0, 1.0), **config.split_kwargs()
        )
    return split_nuclei(mask, **config.split_kwargs())
