"""Object size: measure it in label images, estimate it in raw images (numpy and scipy only).

The size of an object is its *equivalent diameter*, ``2 * sqrt(area / pi)`` (the diameter
of the disc of the same area), and the size of the objects of an image is the median over
its objects. Training with size normalisation resizes every image so that this median
becomes the model's ``object_diameter``; prediction resizes images the same way, with the
diameter given by the user or estimated here from the raw image, without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.errors import NapariUnetError

__all__ = [
    "DiameterEstimate",
    "estimate_diameter",
    "mask_diameter",
    "median_diameter",
    "object_diameters",
    "resize_yx",
    "resized_shape",
]


def object_diameters(labels: np.ndarray) -> np.ndarray:
    """Return the equivalent diameter ``2 * sqrt(area / pi)`` of every object, in pixels.

    Parameters
    ----------
    labels : (..., M, N) ndarray of int or bool
        A label image (0 = background), or a mask whose 4-connected components are the
        objects.

    Returns
    -------
    (K,) ndarray of float64
        One value per object present, by increasing label.

    Examples
    --------
    >>> lab = np.zeros((20, 20), int); lab[2:6, 2:6] = 1; lab[10:18, 10:18] = 2
    >>> np.round(object_diameters(lab), 2)
    array([4.51, 9.03])
    """
    lab = np.asarray(labels)
    if lab.dtype == bool or (lab.size and lab.max() == 1):
        lab, _ = ndi.label(lab > 0, structure=_four(lab.ndim))
    if lab.size and lab.min() < 0:
        raise NapariUnetError(f"labels must be >= 0, got a minimum of {int(lab.min())}.")
    areas = np.bincount(lab.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    return 2.0 * np.sqrt(areas / np.pi)


def median_diameter(labels: np.ndarray) -> float:
    """Return the median equivalent diameter of the objects of ``labels`` (NaN if none).

    Examples
    --------
    >>> lab = np.zeros((20, 20), int); lab[2:6, 2:6] = 1; lab[10:18, 10:18] = 2
    >>> round(median_diameter(lab), 2)
    6.77
    """
    d = object_diameters(labels)
    return float(np.median(d)) if d.size else float("nan")


def _four(ndim: int) -> np.ndarray:
    """4-connectivity within each (Y, X) plane, none across planes."""
    s = np.zeros((3,) * ndim, bool)
    s[(1,) * (ndim - 2)] = ndi.generate_binary_structure(2, 1)
    return s


@dataclass(frozen=True)
class DiameterEstimate:
    """What :func:`estimate_diameter` found.

    Attributes
    ----------
    diameter : float
        Typical (median) object diameter in pixels of the image given; NaN when no
        objects were found.
    method : str
        How it was measured.
    n_objects : int
        Objects it is based on.
    confidence : {"good", "low", "none"}
        "low" when few objects were found or they vary much in size; "none" when there
        were none (``diameter`` is NaN).
    notes : str
        A sentence for the user.
    """

    diameter: float
    method: str
    n_objects: int
    confidence: str
    notes: str = ""

    @property
    def found(self) -> bool:
        """True when a diameter was found."""
        return bool(np.isfinite(self.diameter))


#: The first look at an image is a centre crop of this many pixels a side, at full resolution.
_FIRST_CROP = 512
#: Objects larger than this (pixels, in that crop) are measured again on a downsampled copy of
#: more of the image.
_LARGE = 32
#: Objects are measured with at least this many pixels across (by downsampling less).
_MIN_ACROSS = 16
#: The second look covers at most this many pixels a side (of the downsampled copy).
_SECOND_SIDE = 1024
#: The most pixels a side that the second look reads (at full resolution).
_MAX_SIDE = 4096
#: Objects smaller than this (pixels) are measured again with less smoothing.
_SMALL = 16
#: Objects grow from Otsu's threshold down to this fraction of the way from the background.
_LOW = 0.8
#: Foreground pieces with fewer pixels than this are noise.
_MIN_AREA = 9


def estimate_diameter(
    image,
    *,
    channel_axis: int | None = None,
    polarity: str = "auto",
) -> DiameterEstimate:
    """Estimate the typical (median) object diameter of a raw image, without a model.

    1. **Objects bright.** The image is normalised (1st-99.8th percentiles); one whose
       background is bright is inverted (``polarity="auto"``, as
       :class:`napari_unet.core.data.Normalisation` does); a colour image of a stained
       slide (H&E) is reduced to its haematoxylin (nuclear stain) density by colour
       deconvolution; channels are averaged.
    2. **Foreground.** An uneven background is subtracted (the 10th percentile of blocks
       an eighth of the image wide, interpolated), the image smoothed (sigma 1 pixel;
       0.5 when the objects turn out smaller than 16 pixels) and thresholded: Otsu's
       threshold (of values clipped at the 99.5th percentile, so that a few very bright
       spots do not set it) seeds objects that grow into pixels down to 80 % of the way
       from the background to it (hysteresis), so that dim and textured nuclei come out
       whole.
    3. **Objects.** The distance transform gives every clump's inscribed radius; their
       median sets the scale of a watershed split of the clumps into single objects
       (:func:`napari_unet.core.split.split_nuclei` with h-maxima markers), and objects
       much thinner than the typical one (fibres, debris, fragments) are left out.
       The median equivalent diameter of the rest is the estimate.

    This is cheap: a centre crop of 512 x 512 pixels is measured first, and when its
    objects are large, a copy of the image downsampled so that objects stay at least 16
    pixels across is measured instead (at most 1024 x 1024 pixels of it).

    Parameters
    ----------
    image : (M, N) or (M, N, C) array-like
        A raw 2D image (numpy, dask or zarr), channels on ``channel_axis``.
    channel_axis : int or None
        Axis of the channels, or None for a single-channel image.
    polarity : {"auto", "keep"}
        "auto": images with a bright background are inverted first; "keep": objects
        are taken to be bright.

    Returns
    -------
    DiameterEstimate
        ``diameter`` is NaN when no objects were found.

    Raises
    ------
    NapariUnetError
        When the image is not 2D (with channels).

    Notes
    -----
    Measured on synthetic nuclei of 8 to 120 px, Fluo-N2DH-GOWT1 (60 px), NIH3T3 (90 px),
    MICCAI H&E (10 to 30 px) and DSB2018 images: see ``bench/size_estimate.py`` and the
    user guide. It misses when the nuclei lie inside larger objects that stand out as
    much (cells with a stained cytoplasm): it then measures the cells.

    Examples
    --------
    >>> yy, xx = np.mgrid[:200, :200]
    >>> img = np.zeros((200, 200), np.float32)
    >>> for cy, cx in [(40, 40), (40, 120), (120, 60), (150, 150), (100, 170)]:
    ...     img[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = 1.0
    >>> round(estimate_diameter(img).diameter)
    30
    """
    if polarity not in ("auto", "keep"):
        raise NapariUnetError(f"polarity must be 'auto' or 'keep', got {polarity!r}.")
    shape = tuple(np.shape(image)) if not hasattr(image, "shape") else tuple(image.shape)
    spatial = [
        i for i in range(len(shape)) if channel_axis is None or i != channel_axis % len(shape)
    ]
    if len(spatial) != 2:
        raise NapariUnetError(
            f"estimate_diameter takes a 2D image (with channels on channel_axis), got shape "
            f"{shape} with channel_axis={channel_axis}."
        )
    H, W = shape[spatial[0]], shape[spatial[1]]
    first = _measure(image, spatial, channel_axis, polarity, _centre(H, W, _FIRST_CROP), 1)
    if H <= _FIRST_CROP and W <= _FIRST_CROP:
        return first  # nothing more to see
    if first.found and first.diameter < _LARGE and first.n_objects >= 20:
        return first  # small objects, and enough of them
    # more of the image, downsampled so that objects stay _MIN_ACROSS pixels across
    factor = 1
    while first.found and factor < 8 and first.diameter / (2 * factor) >= _MIN_ACROSS:
        factor *= 2
    side = min(_SECOND_SIDE * factor, _MAX_SIDE)
    second = _measure(image, spatial, channel_axis, polarity, _centre(H, W, side), factor)
    return second if second.found or not first.found else first


def _centre(H: int, W: int, side: int) -> tuple[int, int, int, int]:
    """Return the centre crop ``(y0, y1, x0, x1)`` of at most ``side`` pixels a side."""
    h, w = min(H, side), min(W, side)
    y0, x0 = (H - h) // 2, (W - w) // 2
    return y0, y0 + h, x0, x0 + w


def _measure(
    image,
    spatial: list[int],
    channel_axis: int | None,
    polarity: str,
    box: tuple[int, int, int, int],
    factor: int,
) -> DiameterEstimate:
    """Estimate in one crop of the image, downsampled by ``factor`` (block means)."""
    y0, y1, x0, x1 = box
    y1 -= (y1 - y0) % factor
    x1 -= (x1 - x0) % factor
    index = [slice(None)] * len(spatial + ([] if channel_axis is None else [channel_axis]))
    index[spatial[0]], index[spatial[1]] = slice(y0, y1), slice(x0, x1)
    crop = np.asarray(image[tuple(index)])
    if channel_axis is None:
        crop = crop[None]
    else:
        crop = np.moveaxis(crop, channel_axis % crop.ndim, 0)
    c, h, w = crop.shape
    if factor > 1:
        crop = crop.reshape(c, h // factor, factor, w // factor, factor)
        crop = crop.mean(axis=(2, 4), dtype=np.float32)
    grey = _object_map(crop.astype(np.float32, copy=False), polarity)
    est = _estimate_from_map(grey)
    if factor == 1 or not est.found:
        return est
    return replace(est, diameter=est.diameter * factor)


def _object_map(img: np.ndarray, polarity: str) -> np.ndarray:
    """Return a 2D float32 map of a ``(C, M, N)`` image in which objects are bright."""
    from napari_unet.core.data import Normalisation

    norm = Normalisation(polarity=polarity)
    lo, hi = norm.ranges(img)
    if img.shape[0] == 3 and polarity == "auto" and _is_colour(img):
        sub = img[:, ::4, ::4].reshape(3, -1)
        white = np.percentile(sub, 99.8, axis=1)
        if float(np.mean(np.median(sub, axis=1) / np.maximum(white, 1e-6))) > 0.4:
            # a stained slide (H&E) on a light background: nuclei are the haematoxylin
            return _haematoxylin(img, white)
    return np.mean(norm.apply(img, lo, hi), axis=0)


def _is_colour(img: np.ndarray) -> bool:
    """Return True when the channels of a ``(3, M, N)`` image differ (a stain, not grey)."""
    sub = img[:, ::4, ::4]
    span = float(np.percentile(sub, 99.8) - np.percentile(sub, 1)) or 1.0
    return float(np.mean(np.abs(sub - sub.mean(axis=0)))) > 0.02 * span


def _haematoxylin(img: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Haematoxylin (nuclear stain) density of a brightfield RGB image ``(3, M, N)``.

    Colour deconvolution (Ruifrok and Johnston) of the optical density, with the
    background (``white``, per channel) as the incident light.
    """
    from skimage.color import hed_from_rgb

    white = np.maximum(np.asarray(white, np.float32).reshape(3, 1, 1), 1e-6)
    od = -np.log(np.clip(img / white, 1e-3, 1.0))
    h = np.tensordot(np.asarray(hed_from_rgb[:, 0], np.float32), od, axes=(0, 0))
    lo, hi = np.percentile(h[::2, ::2], [1.0, 99.8])
    return (h - lo) / max(float(hi - lo), 1e-6)


def _background(grey: np.ndarray, q: float = 10.0) -> np.ndarray:
    """Return a smooth background: the ``q``-th percentile of blocks 1/8 of the image wide."""
    H, W = grey.shape
    block = int(np.clip(min(H, W) / 8, 32, 256))
    ny, nx = max(1, H // block), max(1, W // block)
    ys = np.linspace(0, H, ny + 1).astype(int)
    xs = np.linspace(0, W, nx + 1).astype(int)
    grid = np.empty((ny, nx), np.float32)
    for i in range(ny):
        for j in range(nx):
            grid[i, j] = np.percentile(grey[ys[i] : ys[i + 1] : 2, xs[j] : xs[j + 1] : 2], q)
    if ny >= 3 and nx >= 3:
        grid = ndi.median_filter(grid, 3, mode="nearest")
    # block centres -> pixels, linear in between, constant beyond the outer centres
    cy = (ys[:-1] + ys[1:] - 1) / 2
    cx = (xs[:-1] + xs[1:] - 1) / 2
    gy = np.interp(np.arange(H), cy, np.arange(ny))
    gx = np.interp(np.arange(W), cx, np.arange(nx))
    return ndi.map_coordinates(grid, np.meshgrid(gy, gx, indexing="ij"), order=1, mode="nearest")


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


def _estimate_from_map(grey: np.ndarray) -> DiameterEstimate:
    """Estimate the median object diameter of a map in which objects are bright."""
    flat = grey - _background(grey)
    est = _threshold_and_measure(flat, 1.0)
    if est.found and est.diameter < _SMALL:  # less smoothing: it would widen them
        finer = _threshold_and_measure(flat, 0.5)
        est = finer if finer.found else est
    return est


def _threshold_and_measure(flat: np.ndarray, sigma: float) -> DiameterEstimate:
    from skimage.filters import apply_hysteresis_threshold, threshold_otsu

    smooth = ndi.gaussian_filter(flat, sigma)
    sub = smooth[::2, ::2].ravel()
    sub = np.minimum(sub, np.percentile(sub, 99.5))
    if not np.ptp(sub) > 0:
        return DiameterEstimate(float("nan"), "threshold + watershed", 0, "none", "no objects")
    high = float(threshold_otsu(sub))
    base = float(np.median(sub))
    mask = apply_hysteresis_threshold(smooth, base + _LOW * (high - base), high)
    return _diameter_of_mask(ndi.binary_fill_holes(mask), "threshold + watershed")


def mask_diameter(mask: np.ndarray) -> DiameterEstimate:
    """Estimate the typical diameter of the nuclei of a mask whose touching nuclei are merged.

    The foreground's clumps are split with a watershed at the scale of their inscribed
    radius, pieces much thinner than the typical one are left out, and the median
    equivalent diameter of the rest is the estimate (what :func:`estimate_diameter`
    does after thresholding).

    Parameters
    ----------
    mask : (M, N) ndarray of bool or int
        A mask, or a label image (only ``mask > 0`` is used).

    Returns
    -------
    DiameterEstimate

    Examples
    --------
    >>> yy, xx = np.mgrid[:80, :120]
    >>> mask = ((yy - 40) ** 2 + (xx - 40) ** 2 < 20**2) | ((yy - 40) ** 2 + (xx - 76) ** 2 < 20**2)
    >>> round(mask_diameter(mask).diameter)
    39
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise NapariUnetError(f"mask_diameter takes a 2D mask, got shape {mask.shape}.")
    return _diameter_of_mask(ndi.binary_fill_holes(mask > 0), "mask + watershed")


def _diameter_of_mask(mask: np.ndarray, method: str) -> DiameterEstimate:
    from napari_unet.core.split import split_nuclei

    none = DiameterEstimate(float("nan"), method, 0, "none", "no objects found")
    clumps, n = ndi.label(mask)
    if n == 0:
        return none
    areas = np.bincount(clumps.ravel())[1:].astype(float)
    edt = ndi.distance_transform_edt(mask)
    radii = np.asarray(ndi.maximum(edt, clumps, np.arange(1, n + 1)), float)
    keep = areas >= _MIN_AREA
    if not keep.any():
        return none
    r = _weighted_median(radii[keep], areas[keep])
    labels = split_nuclei(
        mask, h=max(0.5, 0.15 * r), smooth=min(50.0, max(0.5, r / 6)), min_size=_MIN_AREA
    )
    m = int(labels.max())
    if m == 0:
        return none
    inner = np.asarray(ndi.maximum(edt, labels, np.arange(1, m + 1)), float)
    areas = np.bincount(labels.ravel(), minlength=m + 1)[1:].astype(float)
    # thin pieces (fibres, debris, fragments of dim objects) do not count
    ok = inner >= 0.35 * _weighted_median(inner, areas)
    d = 2.0 * np.sqrt(areas[ok] / np.pi)
    diameter = float(np.median(d))
    spread = float(np.percentile(d, 90) / max(np.percentile(d, 10), 1e-6))
    fraction = float(mask.mean())
    notes = []
    if d.size < 10:
        notes.append(f"only {d.size} object(s) found")
    if spread > 3:
        notes.append(f"object sizes vary a lot (10th to 90th percentile x{spread:.1f})")
    if fraction > 0.6:
        notes.append(f"{fraction:.0%} of the image looked like objects")
    confidence = "low" if notes else "good"
    return DiameterEstimate(diameter, method, int(d.size), confidence, "; ".join(notes))


# --------------------------------------------------------------------------- resizing


def resized_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """Return ``(M, N)`` scaled by ``factor`` and rounded (at least 1 pixel each)."""
    return max(1, int(round(shape[0] * factor))), max(1, int(round(shape[1] * factor)))


def _axis_plan(n_in: int, n_out: int, start: int, stop: int):
    """Linear interpolation along one axis, as ``scipy.ndimage.zoom(grid_mode=True)``.

    Returns the first and last source index needed (with the anti-aliasing blur's
    reach), the blur sigma, and for output pixels ``start..stop-1`` the lower source
    index and the weight of the upper one.
    """
    step = n_in / n_out
    sigma = max(0.0, (step - 1) / 2)  # only when shrinking, as the training's resize
    reach = int(4.0 * sigma + 0.5) if sigma > 0 else 0
    x = (np.arange(start, stop) + 0.5) * step - 0.5
    x = np.clip(x, 0, n_in - 1)  # mode "nearest" at the borders
    lo = np.minimum(np.floor(x).astype(np.intp), max(n_in - 2, 0))
    w = (x - lo).astype(np.float32)
    first = max(0, int(lo.min()) - reach) if lo.size else 0
    last = min(n_in, int(lo.max()) + 2 + reach) if lo.size else 0
    return first, last, sigma, lo, w


def resize_window(read, in_shape: tuple[int, int], out_shape: tuple[int, int], rows, cols):
    """Return rows ``rows`` and columns ``cols`` of an image resized to ``out_shape``.

    The image is linearly interpolated, smoothed first along an axis that shrinks
    (Gaussian, sigma ``(in / out - 1) / 2``), exactly as a whole-image
    :func:`resize_yx` would give it, while reading only the source window it needs.

    Parameters
    ----------
    read : callable
        ``read(ys, xs)`` returns the source pixels ``(..., len(ys), len(xs))`` of the
        slices ``ys`` and ``xs``.
    in_shape, out_shape : (int, int)
    rows, cols : slice
        Output window (``start`` and ``stop`` given, step 1).

    Returns
    -------
    (..., len(rows), len(cols)) ndarray of float32
    """
    ry = _axis_plan(in_shape[0], out_shape[0], rows.start, rows.stop)
    rx = _axis_plan(in_shape[1], out_shape[1], cols.start, cols.stop)
    (y0, y1, sy, ly, wy), (x0, x1, sx, lx, wx) = ry, rx
    win = np.asarray(read(slice(y0, y1), slice(x0, x1)), dtype=np.float32)
    if sy > 0 or sx > 0:
        sigma = (0.0,) * (win.ndim - 2) + (sy, sx)
        win = ndi.gaussian_filter(win, sigma, mode="nearest", truncate=4.0)
    ly, lx = ly - y0, lx - x0
    hy, hx = np.minimum(ly + 1, win.shape[-2] - 1), np.minimum(lx + 1, win.shape[-1] - 1)
    win = win[..., ly, :] * (1 - wy)[:, None] + win[..., hy, :] * wy[:, None]
    return win[..., lx] * (1 - wx) + win[..., hx] * wx


def resize_yx(array: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of ``array`` to ``out_shape``, linearly, anti-aliased.

    The same interpolation as the training's object size normalisation
    (``scipy.ndimage.zoom`` with ``grid_mode=True``, order 1, borders repeated, after a
    Gaussian of sigma ``(in / out - 1) / 2`` along an axis that shrinks).

    Parameters
    ----------
    array : (..., M, N) array-like
    out_shape : (int, int)

    Returns
    -------
    (..., P, Q) ndarray of float32

    Examples
    --------
    >>> resize_yx(np.arange(4.0).reshape(2, 2), (4, 4))[0]
    array([0.  , 0.25, 0.75, 1.  ], dtype=float32)
    """
    a = np.asarray(array)
    out_shape = (int(out_shape[0]), int(out_shape[1]))
    if out_shape == tuple(a.shape[-2:]):
        return a.astype(np.float32, copy=False)
    return resize_window(
        lambda ys, xs: a[..., ys, xs],
        a.shape[-2:],
        out_shape,
        slice(0, out_shape[0]),
        slice(0, out_shape[1]),
    )
