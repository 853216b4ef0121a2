"""Image layouts, percentile normalisation, patch sampling and augmentation.

Inside the core a 2D training sample is channels-first ``(C, Y, X)`` float32,
normalised so that the ``low`` and ``high`` percentiles of each channel map to
0 and 1 (CSBDeep/StarDist-style). With ``polarity="auto"`` an image whose
background is bright (brightfield, H&E: its median lies above the middle of its
range) is inverted, so that objects are bright on a dark background whatever
the microscope, as in fluorescence. The settings are stored with the model and
applied the same way at prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.targets import Targets, check_labels, make_targets

__all__ = [
    "Normalisation",
    "Sample",
    "PatchSampler",
    "channels_first",
    "prepare_samples",
    "find_channel_axis",
    "guess_channel_axis",
    "MAX_CHANNELS",
    "POLARITIES",
    "SCALE_LIMITS",
    "median_object_diameter",
    "resize_pair",
]

_MAX_PERCENTILE_PIXELS = 4_000_000
POLARITIES = ("keep", "auto")


@dataclass(frozen=True)
class Normalisation:
    """Per-image, per-channel percentile normalisation.

    Parameters
    ----------
    low, high : float
        Percentiles mapped to 0 and 1.
    polarity : {"keep", "auto"}
        "auto": an image whose median (after scaling) lies above 0.5 in at least
        one channel has a bright background and is inverted, all channels together,
        so objects come out bright on dark. On DSB2018 this separates every
        fluorescence image (median at most 0.19) from every brightfield and H&E
        image (at least 0.64); on the H&E tiles of ``external/miccai_he_nuclei``
        the red channel's median is 0.52 to 0.82, while the mean over channels,
        the rule before, fell to 0.44 on dense tissue and left 7 of 15 tiles
        uninverted. Models saved before this option keep "keep".
    """

    low: float = 1.0
    high: float = 99.8
    polarity: str = "keep"

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise NapariUnetError(f"polarity must be one of {POLARITIES}, got {self.polarity!r}.")

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {
            "mode": "percentile",
            "low": self.low,
            "high": self.high,
            "polarity": self.polarity,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Normalisation:
        """Inverse of :meth:`to_dict`."""
        return cls(
            low=float(d.get("low", 1.0)),
            high=float(d.get("high", 99.8)),
            polarity=str(d.get("polarity", "keep")),
        )

    def ranges(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return per-channel (low, high) values of ``image`` laid out ``(C, ..., Y, X)``.

        Large arrays (dask or zarr too) are subsampled on a regular grid, so the
        cost is bounded whatever the image size. For an image that
        ``polarity="auto"`` inverts, each channel's pair comes back swapped
        (low > high), which :meth:`apply` maps to ``1 - x``.
        """
        _check_finite(image)
        c = image.shape[0]
        n = int(np.prod(image.shape[1:]))
        step = max(1, int(np.ceil(np.sqrt(n / _MAX_PERCENTILE_PIXELS))))
        index = (slice(None),) + (slice(None),) * (image.ndim - 3) + (slice(None, None, step),) * 2
        sub = np.asarray(image[index], dtype=np.float32).reshape(c, -1)
        if not np.all(np.isfinite(sub)):
            raise NapariUnetError(
                "The image contains NaN or infinite values; replace them (e.g. with 0) before "
                "training or predicting."
            )
        lo, hi = np.percentile(sub, [self.low, self.high], axis=1)
        if self.polarity == "auto" and sub.size:
            median = np.median(sub, axis=1)
            position = (median - lo) / np.maximum(hi - lo, 1e-6)
            # the brightest channel decides: under a stain (H&E) the background is bright
            # in every channel, but dense tissue pulls the medians of the stained
            # channels down (to 0.35 on MICCAI H&E tiles, whose red stays above 0.5)
            if float(np.max(position)) > 0.5:  # bright background: invert
                lo, hi = hi, lo
        return lo.astype(np.float32), hi.astype(np.float32)

    def apply(self, image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Normalise ``image`` (C, ...) with ranges from :meth:`ranges`; returns float32.

        ``(x - lo) / (hi - lo)``; swapped ranges (``lo > hi``) invert the image.
        """
        shape = (-1,) + (1,) * (image.ndim - 1)
        span = np.asarray(hi, dtype=np.float32) - np.asarray(lo, dtype=np.float32)
        span = np.where(span < 0, np.minimum(span, -1e-6), np.maximum(span, 1e-6))
        scale = 1.0 / span
        out = (np.asarray(image, dtype=np.float32) - lo.reshape(shape)) * scale.reshape(shape)
        return out


def _check_finite(image) -> None:
    """Refuse NaN, infinite and float32-overflowing values of an in-memory float image.

    The whole image is checked (one pass; the percentiles look at a subsample only), so a
    single NaN in a large image is found before training, not as a NaN loss later. Lazy
    (dask, zarr) images are checked on the subsample :meth:`Normalisation.ranges` reads.
    """
    if not isinstance(image, np.ndarray) or image.dtype.kind != "f" or not image.size:
        return
    if not np.isfinite(image).all():
        n = int(image.size - np.count_nonzero(np.isfinite(image)))
        raise NapariUnetError(
            f"The image contains NaN or infinite values ({n} of {image.size} pixels); replace "
            "them (e.g. with 0) before training or predicting."
        )
    high = float(np.abs(image).max())
    if high > float(np.finfo(np.float32).max):
        raise NapariUnetError(
            f"The image holds values up to {high:.3g}, beyond what 32-bit floats hold "
            f"({float(np.finfo(np.float32).max):.3g}); rescale it (e.g. divide by its maximum) "
            "before training or predicting."
        )


MAX_CHANNELS = 8  # multi-channel microscopy rarely has more; a longer axis is a stack
"""Most channels an image may have (grey + alpha, RGB, RGBA, up to 4 stains);
an image with a longer extra axis than its labels is taken for a stack."""


def find_channel_axis(image_shape: tuple[int, ...], labels_shape: tuple[int, ...]) -> int | None:
    """Find the channel axis of an image given the shape of its labels.

    The labels define the spatial (and stack) shape; an image with one more axis
    has a channel axis, looked for at the end first (napari RGB), then at the front.
    That axis may hold at most :data:`MAX_CHANNELS` channels: a longer one means a
    stack paired with 2D labels, which is refused.

    Returns
    -------
    int or None
        Axis index in ``image_shape``, or None when the image has no channel axis.

    Raises
    ------
    NapariUnetError
        When the shapes cannot be matched.
    """
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    if image_shape == labels_shape:
        return None
    if len(image_shape) == len(labels_shape) + 1:
        candidates = [len(image_shape) - 1] + list(range(len(image_shape) - 1))
        for ax in candidates:
            if image_shape[:ax] + image_shape[ax + 1 :] == labels_shape:
                if image_shape[ax] > MAX_CHANNELS:
                    raise NapariUnetError(
                        f"Image shape {image_shape} does not match labels shape {labels_shape}: "
                        f"axis {ax} of the image has {image_shape[ax]} planes, more than the "
                        f"{MAX_CHANNELS} channels an image may have, so it looks like a stack "
                        "with 2D labels. Give labels for every plane (same shape as the image), "
                        "or train on one plane."
                    )
                return ax
    raise NapariUnetError(
        f"Image shape {image_shape} does not match labels shape {labels_shape}: the labels must "
        "cover the image pixel for pixel (an RGB or multi-channel image may have one extra axis). "
        "Check you picked the labels painted on this image, and that 2D labels are not paired "
        "with a 3D stack or the reverse."
    )


def guess_channel_axis(
    shape: Sequence[int],
    in_channels: int,
    *,
    rgb: bool | None = None,
    axes: str | None = None,
) -> int | None:
    """Return the channel axis of an image without labels, for a model taking ``in_channels``.

    The rule the command line, the widgets, the demo and the benchmarks share (with
    labels, :func:`find_channel_axis` decides). What is known about the image decides,
    in this order:

    1. ``axes``, the letters a file names its axes with (ImageJ hyperstacks, OME-TIFF):
       ``C``, or ``S`` for the samples of an RGB TIFF, is the channel axis (counted from
       the end); letters of ``TZYX`` only, ending in ``YX``, mean no channel axis.
    2. ``rgb``, napari's ``layer.rgb``, when the image is a layer: True, channels are
       last (-1); False, the layer shows no colour channels, so only a multi-channel
       model's are looked for: an axis of ``in_channels`` at the end, then at the start.
    3. Neither (a file without axes): its shape. A last axis of at most
       :data:`MAX_CHANNELS` behind two longer axes (longer than 4 and than it) holds
       channels: grey + alpha, two channels, RGB(A) and up to 8 stains, as PNG and TIFF
       store them (a 2-pixel-wide image never); so does a first axis of the model's
       channel count in a 3D image. Anything else is a stack of planes.

    Parameters
    ----------
    shape : tuple of int
        The image's shape.
    in_channels : int
        The channels the model takes.
    rgb : bool, optional
        napari's ``layer.rgb`` (None: not a layer).
    axes : str, optional
        The file's axis letters, one per axis (None: unknown).

    Returns
    -------
    int or None
        The axis (negative when counted from the end), or None: no channel axis (the
        core then repeats a grey image on every channel, or explains the mismatch).

    Examples
    --------
    >>> guess_channel_axis((512, 512, 3), 3), guess_channel_axis((5, 512, 512), 1)
    (-1, None)
    >>> guess_channel_axis((2, 64, 64), 2, rgb=False)
    0
    >>> guess_channel_axis((2, 64, 64), 1, axes="CYX")
    -3
    """
    shape = tuple(shape)
    if axes and len(axes) == len(shape):
        for letter in ("C", "S"):
            if letter in axes:
                return axes.index(letter) - len(shape)
        if axes.endswith("YX") and set(axes) <= set("TZYX"):
            return None  # the file says: no channel axis
    if rgb is not None:
        if rgb:
            return -1
        if in_channels == 1 or len(shape) < 3:
            return None
        for axis in (len(shape) - 1, 0):
            if shape[axis] == in_channels:
                return axis
        return None
    if len(shape) >= 3 and shape[-1] <= MAX_CHANNELS and min(shape[-3:-1]) > max(4, shape[-1]):
        return -1  # grey+alpha, RGB(A) and stacks of them, channels last as PNG/TIFF store them
    if len(shape) == 3 and in_channels > 1 and shape[0] == in_channels:
        return 0
    return None


def channels_first(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Return ``image`` laid out ``(C, ..., Y, X)`` (C = 1 when there is no channel axis).

    Works on numpy and dask arrays without loading the data.
    """
    if channel_axis is None:
        return image[None]
    ax = channel_axis % image.ndim
    if image.ndim < 3 or ax == image.ndim - 2:
        raise NapariUnetError(
            f"channel_axis={channel_axis} points at a spatial axis of an image of shape "
            f"{image.shape}; the channel axis must be the last axis or one before Y and X."
        )
    axes = [ax] + [i for i in range(image.ndim) if i != ax]
    return image.transpose(axes)


@dataclass
class Sample:
    """One 2D training image with its targets.

    Attributes
    ----------
    image : (C, M, N) ndarray of float32
        Normalised image.
    targets : Targets
    name : str
    """

    image: np.ndarray
    targets: Targets
    name: str = ""
    fg_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: Flat positions of annotated pixels when only part of the image is annotated
    #: (sparse labels), so that the patches not centred on an object still fall where
    #: the loss counts; None when every pixel is annotated.
    valid_index: np.ndarray | None = None
    #: Factor the image and labels were resized by (object size normalisation); 1 = as is.
    scale: float = 1.0
    #: Median object diameter of the labels before resizing (pixels); NaN without objects.
    diameter: float = float("nan")
    #: Part of the starting model's own training data, replayed while fine-tuning so that
    #: it does not forget (drawn at ``PatchSampler.replay_share``); never validated.
    replay: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """Spatial shape ``(M, N)``."""
        return self.image.shape[-2:]


def crop_sample(
    sample: Sample,
    rows: slice,
    cols: slice,
    name: str | None = None,
    *,
    seed: int = 0,
) -> Sample:
    """Return the part ``rows, cols`` of a sample, with its targets cut the same way.

    The image and every per-pixel target (foreground, boundary, valid, weight,
    boundary weight, instances) are cropped; the settings (``boundary_valid``,
    ``boundary_width``, ``contact_gap``) are kept. The targets are those of the whole
    image, cut: an object crossing the edge of the crop keeps no boundary along the cut,
    as it goes on beyond it. The foreground positions (and, for a partly annotated
    sample, the annotated positions) used to centre patches are recomputed for the
    crop, at most as many as the sample holds (a random subset, drawn with `seed`,
    when there are more).

    Parameters
    ----------
    sample : Sample
    rows, cols : slice
        Parts of the Y and X axes (steps other than 1 are refused).
    name : str, optional
        Name of the crop; by default the sample's with the rows and columns appended
        (``"name [y0:y1, x0:x1]"``), so that it still starts with the sample's name.
    seed : int

    Raises
    ------
    NapariUnetError
        An empty crop or a step other than 1.
    """
    import dataclasses

    h, w = sample.shape
    (y0, y1, sy), (x0, x1, sx) = rows.indices(h), cols.indices(w)
    if sy != 1 or sx != 1:
        raise NapariUnetError(
            f"A crop takes every pixel of its rows and columns, got {rows}, {cols}."
        )
    if y1 <= y0 or x1 <= x0:
        raise NapariUnetError(
            f"The crop rows {y0}:{y1}, columns {x0}:{x1} of {sample.name!r} ({h}x{w}) is empty."
        )
    sl = (slice(y0, y1), slice(x0, x1))
    t = sample.targets

    def cut(a):
        return None if a is None else np.ascontiguousarray(a[sl])

    targets = dataclasses.replace(
        t,
        foreground=cut(t.foreground),
        boundary=cut(t.boundary),
        valid=cut(t.valid),
        weight=cut(t.weight),
        instances=cut(t.instances),
        boundary_weight=cut(t.boundary_weight),
    )
    rng = np.random.default_rng(seed)

    def positions(mask: np.ndarray, cap: int) -> np.ndarray:
        index = np.flatnonzero(mask).astype(np.int64)
        if index.size > cap:
            index = np.sort(rng.choice(index, cap, replace=False))
        return index

    changes = {
        "image": np.ascontiguousarray(sample.image[(slice(None),) + sl]),
        "targets": targets,
        "name": name if name is not None else f"{sample.name} [{y0}:{y1}, {x0}:{x1}]",
        "fg_index": positions(targets.foreground, sample.fg_index.size),
    }
    valid_index = getattr(sample, "valid_index", None)
    if valid_index is not None:  # partly annotated: None again where the crop is all annotated
        changes["valid_index"] = (
            None if targets.valid.all() else positions(targets.valid, valid_index.size)
        )
    return dataclasses.replace(sample, **changes)


#: Limits of the factor by which object size normalisation resizes an image.
SCALE_LIMITS = (1 / 8, 4.0)


def median_object_diameter(labels: np.ndarray, *, sparse: bool = False) -> float:
    """Median equivalent diameter ``2 * sqrt(area / pi)`` of the objects of a 2D label image.

    In sparse labels (0 = not annotated, 1 = background) objects are the values >= 2.
    A binary mask counts its connected components. NaN when there is no object.
    """
    lab = np.asarray(labels)
    if sparse:
        lab = np.where(lab >= 2, lab, 0)
    if lab.max(initial=0) == 1:  # a binary mask: its connected components
        from scipy import ndimage as ndi

        lab, _ = ndi.label(lab > 0)
    areas = np.bincount(lab.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return float("nan")
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))


def resize_pair(
    image: np.ndarray, labels: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a channels-first image ``(C, M, N)`` and its labels ``(M, N)`` by ``factor``.

    The image is interpolated linearly (smoothed first when it shrinks, so that it is
    not aliased); the labels take the nearest value, so objects keep their ids.
    """
    from scipy import ndimage as ndi

    m, n = labels.shape[-2:]
    out = (max(1, int(round(m * factor))), max(1, int(round(n * factor))))
    f = (out[0] / m, out[1] / n)
    img = image.astype(np.float32, copy=False)
    if factor < 1:
        sigma = [0.0] + [max(0.0, (1 / fi - 1) / 2) for fi in f]
        img = ndi.gaussian_filter(img, sigma, mode="nearest")
    img = ndi.zoom(img, (1,) + f, order=1, grid_mode=True, mode="nearest")
    lab = ndi.zoom(labels, f, order=0, grid_mode=True, mode="nearest")
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


def prepare_samples(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    normalisation: Normalisation,
    names: Sequence[str] | None = None,
    sparse: bool = False,
    border_weight: float = 0.0,
    border_sigma: float = 5.0,
    boundary_width: int = 1,
    interface_weight: float = 0.0,
    contact_gap: int = 0,
    max_fg_index: int = 20_000,
    seed: int = 0,
    in_channels: int | None = None,
    object_diameter: float | None = None,
) -> list[Sample]:
    """Validate image/label pairs and turn them into normalised 2D samples.

    Stacks (``(Z, Y, X)`` or ``(T, Y, X)`` labels) contribute one sample per
    slice that holds annotation.

    Parameters
    ----------
    images, labels : sequences of ndarray
        Pairs; each image has the labels' shape, or one extra channel axis.
    normalisation : Normalisation
    names : sequence of str, optional
        Names used in messages (layer or file names).
    sparse, border_weight, border_sigma, boundary_width, interface_weight, contact_gap
        See :func:`napari_unet.core.targets.make_targets`.
    max_fg_index : int
        At most this many foreground pixel positions are kept per sample for
        foreground-centred patch sampling.
    seed : int
    in_channels : int, optional
        Channels required (a model being fine-tuned); grey images are repeated.
    object_diameter : float, optional
        Object size normalisation: each 2D image and its labels are resized so that
        their median object diameter becomes this many pixels (by a factor within
        :data:`SCALE_LIMITS`; an image without objects keeps its size). None: as is.

    Returns
    -------
    list of Sample

    Raises
    ------
    NapariUnetError
        Mismatched shapes or channel counts, no annotation, NaN in an image, a
        constant image.
    """
    if len(images) != len(labels):
        raise NapariUnetError(f"Got {len(images)} images but {len(labels)} label images.")
    if len(images) == 0:
        raise NapariUnetError("No training images were given.")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    checked = []
    for img, lab, name in zip(images, labels, names, strict=True):
        lab = check_labels(lab, name=f"Labels of {name!r}")
        if lab.ndim < 2:
            raise NapariUnetError(f"Labels of {name!r} must be at least 2D, got {lab.shape}.")
        ax = find_channel_axis(np.shape(img), lab.shape)
        checked.append((channels_first(np.asarray(img), ax), lab, name))
    counts = sorted({img.shape[0] for img, _, _ in checked})
    if len(counts) > 2 or (len(counts) == 2 and counts[0] != 1):
        detail = ", ".join(f"{n!r}: {img.shape[0]}" for img, _, n in checked[:6])
        raise NapariUnetError(
            f"The training images have different channel counts ({detail}); all must have the "
            "same channels (grey images may be mixed with RGB ones: they are repeated on 3 "
            "channels)."
        )
    n_channels = counts[-1]
    if in_channels is not None:
        if n_channels not in (1, in_channels):
            raise NapariUnetError(
                f"The model takes {in_channels} channel(s) but the images have {n_channels}; pick "
                "images like the model's training images or train a new model."
            )
        n_channels = in_channels
    for img, lab, name in checked:
        if img.shape[0] != n_channels:  # grey mixed with colour: repeat the grey channel
            img = np.repeat(img, n_channels, axis=0)
        lo, hi = normalisation.ranges(img)  # raises on NaN / infinite values
        if img.size and img.min() == img.max():
            raise NapariUnetError(
                f"Image {name!r} is constant (every pixel is {img.flat[0]}): there is nothing "
                "to learn from it. Check that the right image is picked, or leave it out."
            )
        norm = normalisation.apply(img, lo, hi)
        lead = lab.shape[:-2]
        for idx in np.ndindex(*lead):
            lab2 = lab[idx]
            if sparse and not lab2.any():
                continue
            image2 = norm[(slice(None),) + idx]
            diameter = median_object_diameter(lab2, sparse=sparse)
            scale = 1.0
            if object_diameter and np.isfinite(diameter):
                scale = float(np.clip(object_diameter / diameter, *SCALE_LIMITS))
                if abs(scale - 1.0) > 0.02:
                    image2, lab2 = resize_pair(image2, lab2, scale)
                else:
                    scale = 1.0
            t = make_targets(
                lab2,
                sparse=sparse,
                boundary_width=boundary_width,
                border_weight=border_weight,
                border_sigma=border_sigma,
                interface_weight=interface_weight,
                contact_gap=contact_gap,
            )
            fg = np.flatnonzero(t.foreground)
            if fg.size > max_fg_index:
                fg = np.sort(rng.choice(fg, max_fg_index, replace=False))
            label = name if not lead else f"{name} {idx}"
            valid_index = None
            if sparse and not t.valid.all():
                valid_index = np.flatnonzero(t.valid)
                if valid_index.size > max_fg_index:
                    valid_index = np.sort(rng.choice(valid_index, max_fg_index, replace=False))
            samples.append(
                Sample(np.ascontiguousarray(image2), t, label, fg, valid_index, scale, diameter)
            )
    if not any(s.targets.foreground.any() for s in samples):
        what = (
            "no object is annotated (sparse mode: 0 = not annotated, 1 = background, "
            "2, 3, ... = objects)"
            if sparse
            else "the labels are all zero"
        )
        raise NapariUnetError(
            f"Nothing to learn from: {what}. Paint at least one object in the labels."
        )
    return samples


#: Appearance augmentation (``PatchSampler(style=True)``): the chance of each change
#: and its range, on images normalised to about 0..1.
STYLE_AUGMENT = {
    "grey": 0.2,  # a colour patch turned grey (the mean of its channels)
    "stain": 0.5,  # per-channel gains (stain strength and hue of H&E and the like)
    "stain_gain": (0.7, 1.3),
    "gamma": 0.5,
    "gamma_range": (0.6, 1.7),
    "blur": 0.25,
    "blur_sigma": (0.5, 1.5),
    "noise": 0.3,
    "noise_sd": (0.01, 0.1),
}


class PatchSampler:
    """Draw random augmented patches from samples.

    Parameters
    ----------
    samples : list of Sample
    patch_size : int
    batch_size : int
    n_outputs : int
        1 (foreground) or 2 (foreground + boundary).
    fg_fraction : float
        Share of patches centred on a random foreground pixel.
    augment : bool
        Random flips, 90-degree rotations and intensity jitter.
    seed : int
    by_loss : float
        How strongly images whose patches have a high training loss are drawn more
        often (0 = never): see :meth:`report_losses`.
    zoom : float
        Scale augmentation (with ``augment``): each patch is cut from a window
        ``1 / z`` times its size and resized, ``z`` drawn log-uniformly from
        ``[1 / (1 + zoom), 1 + zoom]``; the targets are rebuilt from the resized
        instance labels, so boundaries stay one band thick. 0 = off.
    style : bool
        Appearance augmentation (with ``augment``), so that a model holds on images of
        other microscopes and stains: gamma, blur, noise, per-channel (stain) gain, and
        colour images turned grey; see :data:`STYLE_AUGMENT`.
    replay_share : float
        Share of the patches drawn from the replayed samples (``Sample.replay``), when
        there are both replayed and other samples; 0 = drawn like the others.

    Images are drawn with probability proportional to the square root of their area,
    times ``(loss / median loss) ** by_loss`` (clipped to 1/4 .. 4) once the losses of
    their patches are known.
    """

    #: Weight of the newest patch loss in an image's running loss.
    LOSS_MOMENTUM = 0.3
    #: Limits of an image's loss factor.
    LOSS_FACTOR = (0.25, 4.0)

    def __init__(
        self,
        samples: Sequence[Sample],
        patch_size: int,
        batch_size: int,
        n_outputs: int,
        *,
        fg_fraction: float = 0.5,
        augment: bool = True,
        seed: int = 0,
        by_loss: float = 0.0,
        zoom: float = 0.0,
        style: bool = False,
        replay_share: float = 0.0,
    ) -> None:
        self.samples = list(samples)
        self.style = bool(style)
        self.patch = int(patch_size)
        self.batch_size = int(batch_size)
        self.n_outputs = n_outputs
        self.fg_fraction = fg_fraction
        self.augment = augment
        self.by_loss = float(by_loss)
        self.zoom = float(zoom)
        self.rng = np.random.default_rng(seed)
        areas = np.array([s.shape[0] * s.shape[1] for s in self.samples], dtype=np.float64)
        p = np.sqrt(areas)
        replay = np.array([s.replay for s in self.samples], dtype=bool)
        if 0 < replay_share < 1 and replay.any() and not replay.all():
            # the replayed samples share `replay_share` of the draws, by area within it
            p = np.where(
                replay,
                replay_share * p / p[replay].sum(),
                (1 - replay_share) * p / p[~replay].sum(),
            )
        self.base_p = p / p.sum()
        self.p = self.base_p.copy()
        self.image_loss = np.full(len(self.samples), np.nan)
        self.last_indices = np.zeros(0, dtype=np.int64)
        self.has_weight = any(s.targets.weight is not None for s in self.samples)

    def report_losses(self, losses: np.ndarray) -> None:
        """Record the training losses of the last batch's patches, one per patch.

        Each image keeps a running mean of its patches' losses; with ``by_loss > 0`` the
        images the model finds hard (rare kinds of image, dense or faint objects) are
        then drawn more often than those it has learned.
        """
        if self.by_loss <= 0:
            return
        losses = np.asarray(losses, dtype=np.float64).ravel()
        idx = self.last_indices
        if losses.size != idx.size:
            return
        m = self.LOSS_MOMENTUM
        for i, v in zip(idx.tolist(), losses.tolist(), strict=True):
            if not np.isfinite(v):
                continue
            old = self.image_loss[i]
            self.image_loss[i] = v if np.isnan(old) else (1 - m) * old + m * v
        seen = ~np.isnan(self.image_loss)
        median = float(np.median(self.image_loss[seen])) if seen.any() else 0.0
        if median <= 0:
            return
        factor = np.ones(len(self.samples))
        factor[seen] = np.clip(self.image_loss[seen] / median, *self.LOSS_FACTOR) ** self.by_loss
        p = self.base_p * factor
        self.p = p / p.sum()

    def _crop_origin(self, s: Sample, P: int) -> tuple[int, int]:
        h, w = s.shape
        if s.fg_index.size and self.rng.random() < self.fg_fraction:
            c = int(s.fg_index[self.rng.integers(s.fg_index.size)])
            cy, cx = divmod(c, w)
            y = cy - P // 2 + int(self.rng.integers(-P // 4, P // 4 + 1))
            x = cx - P // 2 + int(self.rng.integers(-P // 4, P // 4 + 1))
        elif s.valid_index is not None and s.valid_index.size:
            # partly annotated: centre on an annotated pixel (object or background)
            c = int(s.valid_index[self.rng.integers(s.valid_index.size)])
            cy, cx = divmod(c, w)
            y = cy - P // 2 + int(self.rng.integers(-P // 4, P // 4 + 1))
            x = cx - P // 2 + int(self.rng.integers(-P // 4, P // 4 + 1))
        else:
            y = int(self.rng.integers(0, max(h - P, 0) + 1))
            x = int(self.rng.integers(0, max(w - P, 0) + 1))
        y = min(max(y, 0), max(h - P, 0))
        x = min(max(x, 0), max(w - P, 0))
        return y, x

    def _one(self, s: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.augment and self.zoom > 0 and s.targets.instances is not None:
            limit = np.log1p(self.zoom)
            z = float(np.exp(self.rng.uniform(-limit, limit)))
            window = int(round(self.patch / z))
            if window != self.patch and window >= 4:
                return self._zoomed(s, window)
        P = self.patch
        y, x = self._crop_origin(s, P)
        sl = (slice(y, y + P), slice(x, x + P))
        img = s.image[(slice(None),) + sl]
        t = s.targets
        tgt = [t.foreground[sl], t.boundary[sl]][: self.n_outputs]
        valid = t.valid[sl].astype(np.float32)
        if t.weight is not None:
            valid = valid * t.weight[sl]
        bvalid = valid * float(t.boundary_valid)
        if t.boundary_weight is not None and self.n_outputs > 1:
            bvalid = bvalid * t.boundary_weight[sl]
        wts = [valid, bvalid][: self.n_outputs]
        ph, pw = P - img.shape[-2], P - img.shape[-1]
        if ph or pw:  # image smaller than the patch: mirror the image, ignore the padding
            mode = "reflect" if ph < img.shape[-2] and pw < img.shape[-1] else "symmetric"
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode=mode)
            tgt = [np.pad(a, ((0, ph), (0, pw))) for a in tgt]
            wts = [np.pad(a, ((0, ph), (0, pw))) for a in wts]
        img = img.astype(np.float32, copy=True)
        tgt_a = np.stack(tgt).astype(np.float32)
        w_a = np.stack(wts).astype(np.float32)
        if self.augment:
            return self._augment(img, tgt_a, w_a)
        return img, tgt_a, w_a

    def _zoomed(self, s: Sample, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return a patch cut from a ``window``-pixel square and resized to the patch size."""
        from scipy import ndimage as ndi

        from napari_unet.core.targets import _boundary, _foreground

        P = self.patch
        y, x = self._crop_origin(s, window)
        sl = (slice(y, y + window), slice(x, x + window))
        t = s.targets
        img = s.image[(slice(None),) + sl]
        inst = t.instances[sl]
        valid = t.valid[sl].astype(np.float32)
        if t.weight is not None:
            valid = valid * t.weight[sl]
        bweight = t.boundary_weight[sl] if t.boundary_weight is not None else None
        ph, pw = window - img.shape[-2], window - img.shape[-1]
        if ph or pw:  # image smaller than the window: mirror it, ignore the padding
            mode = "reflect" if ph < img.shape[-2] and pw < img.shape[-1] else "symmetric"
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode=mode)
            inst = np.pad(inst, ((0, ph), (0, pw)))
            valid = np.pad(valid, ((0, ph), (0, pw)))
            if bweight is not None:
                bweight = np.pad(bweight, ((0, ph), (0, pw)), constant_values=1)
        f = P / window
        img = ndi.zoom(img.astype(np.float32), (1, f, f), order=1, grid_mode=True, mode="nearest")
        inst = ndi.zoom(inst, f, order=0, grid_mode=True, mode="nearest")
        valid = ndi.zoom(valid, f, order=0, grid_mode=True, mode="nearest")
        fg = _foreground(inst, t.contact_gap, t.boundary_valid).astype(np.float32)
        bvalid = valid * float(t.boundary_valid)
        if bweight is not None and self.n_outputs > 1:
            bvalid = bvalid * ndi.zoom(bweight, f, order=0, grid_mode=True, mode="nearest")
        bnd = _boundary(inst, t.boundary_width).astype(np.float32)
        tgt_a = np.stack([fg, bnd][: self.n_outputs])
        w_a = np.stack([valid, bvalid][: self.n_outputs]).astype(np.float32)
        return self._augment(img, tgt_a, w_a)

    def _augment(
        self, img: np.ndarray, tgt_a: np.ndarray, w_a: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = int(self.rng.integers(4))
        flip = bool(self.rng.integers(2))
        img, tgt_a, w_a = (_geom(a, k, flip) for a in (img, tgt_a, w_a))
        c = img.shape[0]
        if self.style:
            img = self._style(np.ascontiguousarray(img, dtype=np.float32))
        scale = self.rng.uniform(0.75, 1.25, size=(c, 1, 1)).astype(np.float32)
        shift = self.rng.uniform(-0.15, 0.15, size=(c, 1, 1)).astype(np.float32)
        return img * scale + shift, tgt_a, w_a

    def _style(self, img: np.ndarray) -> np.ndarray:
        """Appearance augmentation of a normalised ``(C, P, P)`` patch (see ``style``)."""
        a = STYLE_AUGMENT
        rng = self.rng
        c = img.shape[0]
        if c > 1 and rng.random() < a["grey"]:
            img = np.repeat(img.mean(axis=0, keepdims=True), c, axis=0)
        elif c > 1 and rng.random() < a["stain"]:  # channel gains: stain strength and hue
            img = img * rng.uniform(*a["stain_gain"], size=(c, 1, 1)).astype(np.float32)
        if rng.random() < a["gamma"]:
            lo, hi = np.log(a["gamma_range"])
            g = float(np.exp(rng.uniform(lo, hi)))
            img = np.clip(img, 0.0, None) ** g
        if rng.random() < a["blur"]:
            from scipy import ndimage as ndi

            s = float(rng.uniform(*a["blur_sigma"]))
            img = ndi.gaussian_filter(img, (0, s, s), mode="reflect")
        if rng.random() < a["noise"]:
            sd = float(rng.uniform(*a["noise_sd"]))
            img = img + rng.normal(0.0, sd, size=img.shape).astype(np.float32)
        return img.astype(np.float32, copy=False)

    def batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return images ``(B, C, P, P)``, targets and loss weights ``(B, K, P, P)``."""
        idx = self.rng.choice(len(self.samples), size=self.batch_size, p=self.p)
        self.last_indices = idx
        parts = [self._one(self.samples[i]) for i in idx]
        return tuple(np.ascontiguousarray(np.stack(a)) for a in zip(*parts, strict=True))


def _geom(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(-2, -1))
    if flip:
        a = a[..., ::-1]
    return a
