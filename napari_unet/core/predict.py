"""Tiled prediction: overlap-tile with mirror padding and smooth blending.

The image is read tile by tile (numpy, dask or zarr arrays alike), mirror-padded
at its borders as in the UNet paper, and the tiles' probabilities are blended
with weights that fall off towards the tile edges, so there are no seams.
Accumulation happens in a strip one tile high; finished rows are written to the
output, so working memory is bounded by ``tile_size x image width``, not by
the image area. 3D stacks and time series are predicted slice by slice by the 2D
network; the labels of a z-stack are then built in 3D (one object per nucleus across
slices, see :mod:`napari_unet.core.volume`), those of a time series frame by frame.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Generator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.core.data import Normalisation, channels_first
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.norm_sets import choose as choose_statistics
from napari_unet.core.options import PRECISIONS, SPLIT_METHODS, STACK_AXES, resolve_axes
from napari_unet.core.progress import drain

if TYPE_CHECKING:  # torch is imported when work starts, not at import
    from napari_unet.core.checkpoint import ModelBundle

__all__ = [
    "PredictConfig",
    "PredictProgress",
    "PredictResult",
    "iter_predict",
    "predict",
    "predict_probabilities",
    "prepare_image",
    "labels_from_output",
    "ObjectScale",
    "object_scale",
    "SPLIT_METHODS",
    "PRECISIONS",
    "STACK_AXES",
    "resolve_axes",
    "labels_from_output_3d",
    "tuned_settings",
    "settings_text",
    "fitted_keys",
    "TileGrid",
    "tile_edge",
]


@dataclass
class PredictConfig:
    """Settings for prediction and for turning probabilities into labels.

    Parameters
    ----------
    tile_size : int
        Tile edge in pixels (rounded up to the network's multiple).
    overlap : int
        Pixels shared by neighbouring tiles (also the mirror padding at borders is
        half of it).
    batch_size : int
        Tiles per forward pass.
    device : str
        "auto", "cuda", "mps" or "cpu".
    precision : {"auto", "fp32", "bf16"}
        Compute precision on the CPU (see
        :func:`napari_unet.core.device.resolve_precision`): "auto" (the default) runs the
        network in bfloat16 where the CPU computes it natively (AMX or AVX-512 BF16:
        2.2x faster, measured), else in float32; "bf16" forces bfloat16 (emulated, and
        slower, on other CPUs). Probabilities are blended in float32 either way. GPUs
        ignore it (CUDA predicts in mixed precision).
    threshold : float
        Foreground probability threshold.
    split : bool
        Separate touching objects.
    split_method : {"distance", "boundary"}
        "distance": watershed on the distance transform of the foreground, from
        markers set by ``h`` (or ``min_distance``) (the default: best on DSB2018
        validation images). "boundary": seeds where the predicted boundary map
        is below ``boundary_threshold``, grown by watershed (needs a model with a
        boundary output).
    boundary_threshold : float
        Boundary probability threshold ("boundary" method).
    min_distance : int
        Minimum distance in pixels between two nuclei centres ("distance" method,
        when ``h`` is None).
    h : float or None
        "distance" method: markers are the maxima of the distance map that stand at
        least ``h`` pixels above the saddle to their neighbour (h-maxima), so two
        nuclei are cut where the waist between them is at least ``h`` pixels
        narrower than the nuclei; this adapts to the nuclei's size (default 1.0;
        models store a fitted value, see :meth:`for_model`). None: markers at least
        ``min_distance`` apart instead.
    min_size : int
        Objects smaller than this (pixels) are removed.
    fill_holes : bool
        Fill holes inside objects.
    flips : bool
        Test-time augmentation: each tile is also predicted mirrored left-right,
        top-bottom and both, and the four probability maps are averaged: the network
        runs 4 times per tile (3.2 times the whole prediction on DSB2018).
    diameter : "auto", float or None
        Typical object diameter in the image, in pixels, for a model trained with
        object size normalisation (``meta["object_diameter"]``): the image is resized
        by ``object_diameter / diameter`` before the network sees it, and the labels
        come back at the image's own size (see :func:`object_scale`). "auto" (the
        default): estimated from the image
        (:func:`napari_unet.core.size.estimate_diameter`). None: never resize. A model
        without ``object_diameter`` predicts every image at its own size.
        ``min_size``, ``min_distance`` and ``h`` are in the model's pixels: they are
        scaled to the image's pixels with it.
    """

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 4
    device: str = "auto"
    precision: str = "auto"
    threshold: float = 0.7
    split: bool = True
    split_method: str = "distance"
    boundary_threshold: float = 0.5
    min_distance: int = 6
    h: float | None = 1.0
    min_size: int = 20
    fill_holes: bool = True
    flips: bool = False
    diameter: float | str | None = "auto"

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    def validate(self) -> None:
        """Raise :class:`NapariUnetError` for settings that cannot work, naming them."""

        def number(v) -> bool:
            return isinstance(v, (int, float, np.number)) and bool(np.isfinite(v))

        if not (number(self.tile_size) and self.tile_size >= 16):
            raise NapariUnetError(f"tile_size must be at least 16 pixels, got {self.tile_size}.")
        if not (number(self.overlap) and self.overlap >= 0):
            # an overlap beyond what the tile allows is reduced to it when predicting
            raise NapariUnetError(f"overlap must be 0 or more pixels, got {self.overlap}.")
        if not (number(self.batch_size) and self.batch_size >= 1):
            raise NapariUnetError(f"batch_size must be at least 1 tile, got {self.batch_size}.")
        for name in ("threshold", "boundary_threshold"):
            value = getattr(self, name)
            if not (number(value) and 0 < value < 1):
                raise NapariUnetError(f"{name} must be between 0 and 1, got {value}.")
        if not (number(self.min_distance) and self.min_distance >= 1):
            raise NapariUnetError(
                f"min_distance must be at least 1 pixel, got {self.min_distance}."
            )
        if self.h is not None and not (number(self.h) and self.h > 0):
            raise NapariUnetError(f"h (split depth) must be positive, or None, got {self.h}.")
        if not (number(self.min_size) and self.min_size >= 0):
            raise NapariUnetError(f"min_size must be 0 or more pixels, got {self.min_size}.")
        if self.split_method not in SPLIT_METHODS:
            raise NapariUnetError(
                f"split_method must be one of {SPLIT_METHODS}, got {self.split_method!r}."
            )
        if self.precision not in PRECISIONS:
            raise NapariUnetError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")
        d = self.diameter
        if not (d is None or d == "auto" or (number(d) and not isinstance(d, bool) and d > 0)):
            raise NapariUnetError(
                f"diameter must be 'auto', a number of pixels above 0, or None (off), got {d!r}."
            )

    @classmethod
    def for_model(cls, bundle: ModelBundle, **settings) -> PredictConfig:
        """Return the defaults, with the model's fitted threshold and split depth.

        A model trained by this version stores the foreground threshold and split
        depth that scored best on its validation images (``meta.postprocess``, see
        :mod:`napari_unet.core.tune`); they replace the class defaults. ``settings``
        given here win over both; a ``min_distance`` given without ``h`` means
        markers by distance (``h=None``).
        """
        tuned = tuned_settings(bundle.meta)
        if "min_distance" in settings and "h" not in settings:
            tuned["h"] = None  # markers by distance, not by the fitted or default depth
        return cls(**{**tuned, **settings})


def tuned_settings(meta: dict) -> dict:
    """Return the checked ``threshold`` and ``h`` stored in a model's meta ({} if none)."""
    tuned = meta.get("postprocess")
    if not isinstance(tuned, dict):
        return {}
    out = {}
    t, h = tuned.get("threshold"), tuned.get("h")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 < t < 1.0:
        out["threshold"] = float(t)
    if isinstance(h, (int, float)) and not isinstance(h, bool) and np.isfinite(h) and h > 0:
        out["h"] = float(h)
    return out


def settings_text(settings: Mapping[str, Any], meta: dict | None = None) -> str:
    """Say how probabilities become labels: threshold and split, and what was fitted.

    Parameters
    ----------
    settings : dict
        A :class:`PredictConfig` as a dict (``PredictResult.settings`` is one).
    meta : dict, optional
        The model's metadata: the threshold and split depth that are the model's
        fitted ones (:func:`tuned_settings`) are then said to be.

    Examples
    --------
    >>> settings_text({"threshold": 0.6, "h": 1.5})
    'threshold 0.6, split depth 1.5 px'
    >>> settings_text({"threshold": 0.6, "h": None, "min_distance": 6},
    ...               {"postprocess": {"threshold": 0.6}})
    "threshold 0.6, centres 6 px apart (threshold fitted on the model's validation images)"
    """
    if not settings.get("split", True):
        split = "no split"
    elif settings.get("split_method") == "boundary":
        split = "split by boundary"
    elif settings.get("h"):
        split = f"split depth {settings['h']:g} px"
    else:
        split = f"centres {settings.get('min_distance')} px apart"
    text = f"threshold {settings['threshold']:g}, {split}"
    fitted = fitted_keys(settings, meta) if meta is not None else []
    if fitted:
        names = " and ".join("split depth" if k == "h" else k for k in fitted)
        text += f" ({names} fitted on the model's validation images)"
    return text


def fitted_keys(settings: Mapping[str, Any], meta: dict) -> list[str]:
    """Return which of ``threshold`` and ``h`` in `settings` are the model's fitted values."""
    tuned = tuned_settings(meta)
    return [k for k in ("threshold", "h") if k in tuned and settings.get(k) == tuned[k]]


@dataclass
class PredictProgress:
    """Progress of a prediction: ``done`` of ``total`` tiles."""

    done: int
    total: int
    message: str = ""


@dataclass
class PredictResult:
    """What a prediction returns.

    Attributes
    ----------
    labels : (..., M, N) ndarray of uint32
        One value per object, 0 background.
    probabilities : dict of str to (..., M, N) ndarray of float32
        One map per model output, e.g. "foreground" and "boundary".
    notes : list of str
        What was changed on the way, e.g. a smaller tile after the device ran out of
        memory (empty when nothing was).
    settings : dict
        The :class:`PredictConfig` used, as a dict (with the model's fitted threshold
        and split depth when they were used; the tile size after any memory retry), and
        ``precision_used``: "fp32" or "bf16" on the CPU, "amp" or "fp32" on a GPU.
    scale : ObjectScale
        The object diameter used, whether it was estimated, and the factor the image
        was resized by for the network (1: at its own size).
    """

    labels: np.ndarray
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    scale: ObjectScale = field(default_factory=lambda: ObjectScale())


#: Resizing by less than this (relative) is skipped: the network does not mind. A model
#: trained with scale augmentation (``zoom``) has seen its objects up to ``1 + zoom`` times
#: smaller and larger, and is not resized within that range (up to ``MAX_SKIP``): on the 67
#: DSB held-back images the built-in model scored F1 0.862 so, against 0.858 resizing every
#: image more than 10 % off, and predicted 1.4x faster on 14 px nuclei.
SCALE_TOLERANCE = 0.1
MAX_SKIP = 0.5


@dataclass(frozen=True)
class ObjectScale:
    """How an image was resized so that its objects have the model's size.

    Attributes
    ----------
    factor : float
        Model pixels per image pixel: the image was resized by this for the network
        and its probabilities back (1: predicted at its own size).
    diameter : float or None
        Typical object diameter in the image, in pixels: given, or estimated; None when
        none was given and none needed (no size normalisation).
    estimated : bool
        ``diameter`` was estimated from the image.
    model_diameter : float or None
        The model's object diameter (``meta["object_diameter"]``); None for a model
        trained at its images' own scale.
    note : str
        Why the image was not resized, or was resized by less than asked; empty when
        nothing needs saying.
    """

    factor: float = 1.0
    diameter: float | None = None
    estimated: bool = False
    model_diameter: float | None = None
    note: str = ""

    def describe(self, pixel_size: float | None = None, unit: str = "") -> str:
        """One line for the user, e.g. "diameter 61 px (estimated), resized x0.33 ...".

        With ``pixel_size`` (the image's, in ``unit``) the diameter is also given in
        ``unit``.
        """
        if self.diameter is None:
            return self.note or "predicted at the image's own size"
        d = self.diameter
        text = f"diameter {d:.0f} px" if d >= 10 else f"diameter {d:.2g} px"
        if pixel_size:
            text += f" = {d * pixel_size:.3g} {unit}".rstrip()
        text += " (estimated)" if self.estimated else " (given)"
        if self.factor != 1:
            text += f", resized x{self.factor:.2g} to the model's {self.model_diameter:g} px"
        elif self.model_diameter is not None:
            text += f", close to the model's {self.model_diameter:g} px: not resized"
        return text + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)


def object_scale(bundle: ModelBundle, image, config: PredictConfig) -> ObjectScale:
    """Decide how to resize an image so that its objects have the model's size.

    Parameters
    ----------
    bundle : ModelBundle
        Its ``meta["object_diameter"]`` (set by training with object size
        normalisation) is the size the model expects; models without it were
        trained at their images' own scale and predict images as they are.
    image : (C, ..., M, N) array-like
        As :func:`prepare_image` returns it; with leading axes (a stack) the size is
        estimated on the middle slice and used for every slice.
    config : PredictConfig
        ``config.diameter``: "auto" (estimate), pixels, or None (off).

    Returns
    -------
    ObjectScale
        ``factor = object_diameter / diameter``, limited to
        :data:`napari_unet.core.data.SCALE_LIMITS` (as in training), and 1 when the
        model saw objects of that size in training: ``factor`` and ``1 / factor`` below
        ``1 + min(zoom, MAX_SKIP)`` (the model's scale augmentation), or within
        :data:`SCALE_TOLERANCE` of 1.
    """
    from napari_unet.core.data import SCALE_LIMITS

    raw = bundle.meta.get("object_diameter")
    model_d = float(raw) if raw else None
    d = config.diameter
    if d is None:
        return ObjectScale(model_diameter=model_d, note="object size off: predicted as it is")
    if model_d is None:
        if d == "auto":
            return ObjectScale(
                note="the model records no object size (it was trained at its images' own "
                "scale): predicted at the image's own size"
            )
        return ObjectScale(
            diameter=float(d),
            note="not resized: the model records no object size (it was trained at its "
            "images' own scale), so the image is predicted at its own size",
        )
    notes = []
    if d == "auto":
        from napari_unet.core.size import estimate_diameter

        mid = tuple(n // 2 for n in image.shape[1:-2])
        est = estimate_diameter(_Slice(image, mid) if mid else image, channel_axis=0)
        if not est.found:
            return ObjectScale(
                model_diameter=model_d,
                note="no objects found to estimate their size: predicted at the image's "
                "own size (give a diameter)",
            )
        diameter, estimated = float(est.diameter), True
        if est.confidence != "good":
            notes.append(f"uncertain estimate: {est.notes}")
    else:
        diameter, estimated = float(d), False
    factor = model_d / diameter
    low, high = SCALE_LIMITS
    if not low <= factor <= high:
        clipped = float(np.clip(factor, low, high))
        notes.append(
            f"resizing by x{factor:.3g} is outside {low:g}..{high:g}: resized by x{clipped:.3g} "
            "only (check the diameter)"
        )
        factor = clipped
    zoom = float((bundle.meta.get("train_config") or {}).get("zoom") or 0.0)
    seen = 1 + max(SCALE_TOLERANCE, min(zoom, MAX_SKIP))
    if max(factor, 1 / factor) < seen:  # within the sizes it was trained on
        factor = 1.0
    return ObjectScale(factor, diameter, estimated, model_d, "; ".join(notes))


class _Resized:
    """Lazy view of a ``(C, M, N)`` array-like resized to ``(C, P, Q)`` (see ``resize_window``)."""

    def __init__(self, img, out_hw: tuple[int, int]) -> None:
        self.img = img
        self.in_hw = (int(img.shape[-2]), int(img.shape[-1]))
        self.out_hw = out_hw
        self.shape = (img.shape[0],) + tuple(out_hw)
        self.ndim = 3

    def __getitem__(self, key):
        from napari_unet.core.size import resize_window

        c, rows, cols = key
        return resize_window(
            lambda ys, xs: self.img[c, ys, xs], self.in_hw, self.out_hw, rows, cols
        )


def prepare_image(image, in_channels: int, channel_axis: int | None):
    """Return ``image`` laid out ``(C, ..., Y, X)`` with the model's channel count.

    A single-channel image given to a multi-channel model is repeated on every
    channel (grey -> RGB); an RGBA image with a constant alpha given to an RGB
    model loses the alpha. Anything else whose channel count differs raises.
    """
    if (
        channel_axis is None
        and image.ndim >= 3
        and in_channels > 1
        and image.shape[-1] == in_channels
    ):
        raise NapariUnetError(
            f"This model expects {in_channels} channels; the image of shape {tuple(image.shape)} "
            "looks channels-last: say which axis holds the channels (channel_axis=-1, or "
            "--channel-axis -1 on the command line)."
        )
    img = channels_first(image, channel_axis)
    c = img.shape[0]
    if img.ndim < 3:
        raise NapariUnetError(f"The image must be at least 2D, got shape {tuple(image.shape)}.")
    if c == in_channels:
        return img
    if c == 1:
        return _Repeat(img, in_channels)
    if c == 4 and in_channels == 3:
        alpha = np.asarray(img[3][(slice(None, None, 16),) * (img.ndim - 1)])
        if alpha.size and np.all(alpha == alpha.flat[0]):
            return img[:3]
    raise NapariUnetError(
        f"The image has {c} channels but the model was trained on {in_channels}. "
        "Pick an image like the training images, or train a model on this kind of image."
    )


class _Repeat:
    """Lazy view repeating a single channel ``n`` times (channel axis 0)."""

    def __init__(self, img, n: int) -> None:
        self.img, self.n = img, n
        self.shape = (n,) + tuple(img.shape[1:])
        self.ndim = img.ndim
        self.dtype = img.dtype

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        sub = np.asarray(self.img[(slice(0, 1),) + key[1:]])
        return np.repeat(sub, self.n, axis=0)[key[0]]


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into ``[0, n)`` (no edge repeat, like ``np.pad(mode='reflect')``)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def tile_edge(tile_size: int, multiple: int) -> int:
    """Return the tile edge used for ``tile_size``: rounded up to the network's ``multiple``."""
    return max(multiple, -(-int(tile_size) // multiple) * multiple)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one ``(H, W)`` slice lie, and how they are blended.

    Prediction (:func:`iter_predict`), its tile count, the out-of-memory retry and the
    dask blocks (:mod:`napari_unet.core.dask_predict`) all place tiles by this one grid.

    Attributes
    ----------
    H, W : int
        The slice's shape.
    tile : int
        Tile edge (:func:`tile_edge`).
    pad : int
        Half the overlap, at most what the tile allows: the margin blended with the
        neighbouring tiles (reflected beyond the image's border).
    ys, xs : list of int
        Tile origins along y and x (in image coordinates; the first is ``-pad``).
    th, tw : int
        Tile height and width (``tile``, or less for a slice smaller than one tile).
    """

    H: int
    W: int
    tile: int
    pad: int
    ys: list[int]
    th: int
    xs: list[int]
    tw: int

    @classmethod
    def for_slice(cls, H: int, W: int, config: PredictConfig, multiple: int) -> TileGrid:
        """Return the grid of ``config``'s tiles over an ``(H, W)`` slice."""
        tile = tile_edge(config.tile_size, multiple)
        pad = min(max(0, int(config.overlap) // 2), (tile - multiple) // 2)
        ys, th = _origins(H, tile, pad, multiple)
        xs, tw = _origins(W, tile, pad, multiple)
        return cls(H, W, tile, pad, ys, th, xs, tw)

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return len(self.ys) * len(self.xs)

    @functools.cached_property
    def weight(self) -> np.ndarray:
        """``(th, tw)`` blending weight of a tile: cosine ramps over its overlaps."""
        return np.outer(_ramp(self.th, self.pad), _ramp(self.tw, self.pad))


def _origins(n: int, tile: int, pad: int, multiple: int) -> tuple[list[int], int]:
    """Tile origins (in image coordinates, may be negative) and tile length along one axis."""
    total = n + 2 * pad
    if total <= tile:
        length = -(-total // multiple) * multiple
        return [-pad], length
    stride = tile - 2 * pad
    origins = list(range(-pad, n + pad - tile, stride))
    origins.append(n + pad - tile)
    return sorted(set(origins)), tile


def _ramp(length: int, pad: int) -> np.ndarray:
    """1D blending weight: cosine ramp over ``2 * pad`` pixels at both ends."""
    w = np.ones(length, np.float32)
    r = min(2 * pad, length // 2)
    if r > 0:
        t = (np.arange(r, dtype=np.float32) + 0.5) / r
        ramp = 0.5 - 0.5 * np.cos(np.pi * t)
        w[:r] = ramp
        w[length - r :] = ramp[::-1]
    return np.maximum(w, 1e-3)


#: The smallest tile tried when the device runs out of memory.
MIN_TILE = 64


def shrink_for_memory(config: PredictConfig, multiple: int, device_text: str) -> PredictConfig:
    """Return `config` with fewer tiles per step, or smaller tiles, after an out-of-memory.

    Halves the batch of tiles first, then the tile edge (down to :data:`MIN_TILE`).

    Raises
    ------
    NapariUnetError
        When one tile of the smallest size per step does not fit either.
    """
    tile = tile_edge(config.tile_size, multiple)
    if config.batch_size > 1:
        return replace(config, batch_size=max(1, config.batch_size // 2))
    smaller = max(MIN_TILE, multiple, (tile // 2) // multiple * multiple)
    if smaller < tile:
        return replace(config, tile_size=smaller, overlap=min(config.overlap, smaller // 2))
    raise NapariUnetError(
        f"{device_text} ran out of memory even with one {tile}x{tile} tile per step. "
        "Close other programs using the GPU, or predict on the CPU (device 'cpu')."
    )


#: Axes mirrored by test-time augmentation (``flips``): none, x, y, both.
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def infer_tiles(
    model,
    tiles: list[np.ndarray],
    norm: Normalisation,
    lo: np.ndarray,
    hi: np.ndarray,
    device,
    flips: bool = False,
    precision: str = "auto",
) -> np.ndarray:
    """Return the probabilities ``(B, K, h, w)`` of raw tiles ``(C, h, w)``.

    The tiles are normalised with the model's ranges `lo`, `hi`; channels-last on CUDA and
    CPU, mixed precision on CUDA, bfloat16 on the CPU when `precision` resolves to it (see
    :func:`napari_unet.core.device.resolve_precision`); the probabilities are float32. With
    `flips`, the mean of the probabilities of the tiles as they are and mirrored along x, y
    and both (each mapped back). Whole-image and dask prediction both use this.
    """
    import torch

    from napari_unet.core.device import compute_autocast, resolve_precision

    x = np.stack(tiles)
    x = norm.apply(x.transpose(1, 0, 2, 3), lo, hi).transpose(1, 0, 2, 3)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)

    def run(t):
        if device.type != "mps":
            t = t.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(model(t).float())

    with torch.inference_mode(), compute_autocast(device, resolve_precision(precision, device)):
        if not flips:
            return run(xt).cpu().numpy()
        total = None
        for axes in FLIPS:
            p = run(torch.flip(xt, axes) if axes else xt)
            p = torch.flip(p, axes) if axes else p
            total = p if total is None else total + p
        return (total / len(FLIPS)).cpu().numpy()


def _predict_2d(
    bundle: ModelBundle,
    image,  # (C, Y, X) array-like, raw values
    lo: np.ndarray,
    hi: np.ndarray,
    norm: Normalisation,
    config: PredictConfig,
    device,
    stop: threading.Event | None,
    progress: list[int],
    total: int,
) -> Generator[PredictProgress, None, np.ndarray | None]:
    import torch

    from napari_unet.core.fuse import fused_for_inference

    model = fused_for_inference(bundle.model)  # BatchNorm folded into the convolutions
    _, H, W = image.shape
    grid = TileGrid.for_slice(H, W, config, bundle.spec.multiple)
    ys, th, xs, tw = grid.ys, grid.th, grid.xs, grid.tw
    K = model.spec.out_channels
    out = np.zeros((K, H, W), np.float32)
    weight = grid.weight
    # strip accumulator covering image rows [y0, y0 + th) and columns [-pad, W + pad)
    x_lo = min(xs)
    x_hi = max(xs) + tw
    acc = np.zeros((K, th, x_hi - x_lo), np.float32)
    wsum = np.zeros((th, x_hi - x_lo), np.float32)
    if device.type != "mps":
        model.to(memory_format=torch.channels_last)
    for r, y0 in enumerate(ys):
        rows = _reflect(np.arange(y0, y0 + th), H)
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        tiles = []
        for x0 in xs:
            cols = _reflect(np.arange(x0, x0 + tw), W)
            c0, c1 = int(cols.min()), int(cols.max()) + 1
            win = np.asarray(image[:, r0:r1, c0:c1], dtype=np.float32)
            tiles.append((x0, win[:, (rows - r0)[:, None], (cols - c0)[None, :]]))
        for b in range(0, len(tiles), max(1, config.batch_size)):
            if stop is not None and stop.is_set():
                return None
            chunk = tiles[b : b + config.batch_size]
            prob = infer_tiles(
                model,
                [t for _, t in chunk],
                norm,
                lo,
                hi,
                device,
                flips=config.flips,
                precision=config.precision,
            )
            for (x0, _), p in zip(chunk, prob, strict=True):
                a = x0 - x_lo
                acc[:, :, a : a + tw] += p * weight
                wsum[:, a : a + tw] += weight
            progress[0] += len(chunk)
            yield PredictProgress(progress[0], total, f"tile {progress[0]}/{total}")
        # rows [y0, next_y0) are final: write the part inside the image
        next_y0 = ys[r + 1] if r + 1 < len(ys) else y0 + th
        n_final = next_y0 - y0
        lo_row, hi_row = max(y0, 0), min(next_y0, H)
        if hi_row > lo_row:
            s0, s1 = lo_row - y0, hi_row - y0
            a0, a1 = 0 - x_lo, W - x_lo
            out[:, lo_row:hi_row] = acc[:, s0:s1, a0:a1] / wsum[s0:s1, a0:a1]
        acc = np.roll(acc, -n_final, axis=1)
        wsum = np.roll(wsum, -n_final, axis=0)
        acc[:, th - n_final :] = 0
        wsum[th - n_final :] = 0
    return out


def iter_predict(
    bundle: ModelBundle,
    image,
    *,
    channel_axis: int | None = None,
    config: PredictConfig | None = None,
    stop: threading.Event | None = None,
    axes: str | None = None,
    voxel_size: tuple[float, float, float] | None = None,
) -> Generator[PredictProgress, None, PredictResult | None]:
    """Predict probabilities and labels for an image, yielding progress.

    The network sees one 2D slice at a time. The labels of a z-stack (``axes`` with a
    Z) are built in 3D from the stacked probabilities (:mod:`napari_unet.core.volume`),
    with the voxel size's anisotropy; those of 2D frames (``TYX``) slice by slice.

    With a model trained with object size normalisation, every slice is resized so that
    its objects have the model's size (``config.diameter``, see :func:`object_scale`);
    the probabilities and labels come back at the image's own size, and the result's
    ``scale`` says what was done. The first progress message says it too.

    Parameters
    ----------
    bundle : ModelBundle
        A trained model (see :mod:`napari_unet.core.checkpoint`).
    image : (..., M, N) array-like
        numpy, dask or zarr; leading axes (Z, T, ...) are predicted slice by slice.
        May hold a channel axis (see ``channel_axis``).
    channel_axis : int or None
        Axis of the channels (-1 for RGB), or None for a single-channel image.
    config : PredictConfig, optional
    stop : threading.Event, optional
        When set, the prediction ends after the current batch of tiles and the
        generator returns None.
    axes : str, optional
        The image's axes without its channel axis, one of :data:`STACK_AXES`; None:
        see :func:`resolve_axes` (a 3D image is a z-stack).
    voxel_size : (float, float, float), optional
        (z, y, x) in any one unit, for z-stacks: the z-step in pixels sets the
        distances of the 3D split (:func:`napari_unet.core.volume.spacing_from_voxel_size`).
        None: z-steps as long as the pixels (the notes say so).

    Yields
    ------
    PredictProgress

    Returns
    -------
    PredictResult or None
        None when stopped. ``settings`` holds ``axes`` and, for z-stacks, ``voxel_size``
        and ``z_step_px`` (the z-step in y/x pixels used).
    """
    from napari_unet.core.device import (
        describe_device,
        precision_note,
        release_memory,
        resolve_precision,
        select_device,
    )
    from napari_unet.core.errors import is_out_of_memory

    config = config or PredictConfig.for_model(bundle)
    config.validate()
    if not hasattr(image, "shape") or not hasattr(image, "ndim"):
        image = np.asarray(image)
    img = prepare_image(image, bundle.in_channels, channel_axis)
    axes = resolve_axes(axes, img.ndim - 1)
    volume = "Z" in axes
    spacing = _volume_spacing(voxel_size) if volume else None
    norm = Normalisation.from_dict(bundle.meta.get("normalisation", {}))
    scale = object_scale(bundle, img, config)
    device = select_device(config.device)
    bundle.to(device)
    bundle.model.eval()
    lead = tuple(img.shape[1:-2])
    H, W = img.shape[-2:]
    Hs, Ws = _scaled_shape((H, W), scale.factor)  # what the network sees
    lo, hi = norm.ranges(img)
    m = bundle.spec.multiple
    n_tiles = TileGrid.for_slice(Hs, Ws, config, m).n_tiles
    total = n_tiles * int(np.prod(lead, dtype=np.int64))
    outputs = bundle.outputs
    probs = {name: np.zeros(lead + (H, W), np.float32) for name in outputs}
    labels = np.zeros(lead + (H, W), np.uint32)
    progress = [0]
    next_id = 0
    notes: list[str] = [scale.note] if scale.note and scale.diameter is not None else []
    # a retrain of a built-in model: closer to the built-in model for images like its data
    bundle, stats_note = choose_statistics(bundle, img, lo, hi, norm, scale.factor)
    if stats_note:
        notes.append(stats_note)
    if volume:
        notes.append(_volume_note(img.shape[1:], axes, voxel_size, spacing))
    precision = resolve_precision(config.precision, device)
    slow = precision_note(config.precision, device)
    if slow:
        notes.append(slow)
    n_slices = int(np.prod(lead, dtype=np.int64))
    yield PredictProgress(0, total, scale.describe())
    for i, idx in enumerate(np.ndindex(*lead)):
        done_before = progress[0]
        src = _Slice(img, idx)
        if scale.factor != 1:
            src = _Resized(src, (Hs, Ws))
        while True:
            try:
                p = yield from _predict_2d(
                    bundle, src, lo, hi, norm, config, device, stop, progress, total
                )
                break
            except (RuntimeError, MemoryError) as error:  # handled below, tensors freed
                if not is_out_of_memory(error):
                    raise
            release_memory(device)
            config = shrink_for_memory(config, m, describe_device(device))
            note = (
                f"{describe_device(device)} ran out of memory: retried with "
                f"{config.batch_size} tile(s) of {config.tile_size} pixels per step"
            )
            notes.append(note)
            n_tiles = TileGrid.for_slice(Hs, Ws, config, m).n_tiles
            progress[0] = done_before
            total = done_before + (n_slices - i) * n_tiles
            yield PredictProgress(progress[0], total, note)
        if p is None:
            release_memory(device)
            return None
        p = _back_to_image(p, (H, W))
        for k, name in enumerate(outputs):
            probs[name][idx] = p[k]
        if volume:
            if idx[-1] != lead[-1] - 1:
                continue  # the stack's labels are built when its last slice is in
            frame = idx[:-1]
            yield PredictProgress(progress[0], total, "building 3D objects")
            stacked = np.stack([probs[name][frame] for name in outputs])
            lab = labels_from_output_3d(
                stacked, outputs, config, spacing=spacing, pixel_scale=1 / scale.factor
            )
            idx = frame
        else:
            lab = labels_from_output(p, outputs, config, pixel_scale=1 / scale.factor)
        if lab.size and lab.max() > 0:
            lab[lab > 0] += next_id
            next_id = int(lab.max())
        labels[idx] = lab
    release_memory(device)
    settings = {**config.to_dict(), "precision_used": precision, "axes": axes}
    if volume:
        settings["voxel_size"] = None if voxel_size is None else [float(v) for v in voxel_size]
        settings["z_step_px"] = round(float(spacing[0]), 4)
    return PredictResult(
        labels=labels, probabilities=probs, notes=notes, settings=settings, scale=scale
    )


def _scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """Return the image's (M, N) at the model's scale."""
    from napari_unet.core.size import resized_shape

    return tuple(shape) if factor == 1 else resized_shape(shape, factor)


def _back_to_image(p: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Probabilities ``(K, P, Q)`` at the model's scale, resized to the image's (M, N)."""
    if tuple(p.shape[-2:]) == tuple(shape):
        return p
    from napari_unet.core.size import resize_yx

    return np.clip(resize_yx(p, shape), 0.0, 1.0)


class _Slice:
    """Lazy 2D slice ``(C, Y, X)`` of a ``(C, ..., Y, X)`` array at leading index ``idx``."""

    def __init__(self, img, idx: tuple[int, ...]) -> None:
        self.img, self.idx = img, idx
        self.shape = (img.shape[0],) + tuple(img.shape[-2:])

    def __getitem__(self, key):
        return self.img[(key[0],) + self.idx + tuple(key[1:])]


def labels_from_output(
    prob: np.ndarray, outputs: list[str], config: PredictConfig, *, pixel_scale: float = 1.0
) -> np.ndarray:
    """Turn a model's probabilities ``(K, M, N)`` into labels ``(M, N)`` of uint32.

    Prediction and the validation during training both use this, so the best model
    is chosen by what users get.

    ``pixel_scale``: image pixels per model pixel, for probabilities resized back to an
    image that was resized for the network (see :func:`object_scale`). The settings in
    pixels (``min_size``, ``min_distance``, ``h``, and the split's smoothing and seed
    size) hold at the model's scale and are scaled by it (areas by its square).
    """
    from napari_unet.core.split import labels_from_probabilities

    use_boundary = config.split_method == "boundary" and "boundary" in outputs
    s = float(pixel_scale)
    extra = {}
    if s != 1:
        extra = {"smooth": 1.0 * s, "min_seed_size": max(1, int(round(4 * s * s)))}
    lab = labels_from_probabilities(
        prob[0],
        prob[outputs.index("boundary")] if use_boundary else None,
        threshold=config.threshold,
        boundary_threshold=config.boundary_threshold,
        min_size=int(round(config.min_size * s * s)),
        fill_holes=config.fill_holes,
        split=config.split,
        min_distance=max(1, int(round(config.min_distance * s))),
        h=None if config.h is None else config.h * s,
        **extra,
    )
    return lab.astype(np.uint32, copy=False)


def labels_from_output_3d(
    prob: np.ndarray,
    outputs: list[str],
    config: PredictConfig,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    pixel_scale: float = 1.0,
) -> np.ndarray:
    """Turn a z-stack's probabilities ``(K, Z, M, N)`` into 3D labels ``(Z, M, N)``.

    The 2D settings carry over: ``min_distance``, ``h`` and the smoothing in pixels (z
    measured with ``spacing``), ``min_size`` (an area) as the volume of the ball with that
    cross-section (:func:`napari_unet.core.volume.min_volume`). ``pixel_scale`` as in
    :func:`labels_from_output`.
    """
    from napari_unet.core.volume import labels_from_probabilities_3d, min_volume

    use_boundary = config.split_method == "boundary" and "boundary" in outputs
    s = float(pixel_scale)
    lab = labels_from_probabilities_3d(
        prob[0],
        prob[outputs.index("boundary")] if use_boundary else None,
        spacing=spacing,
        threshold=config.threshold,
        boundary_threshold=config.boundary_threshold,
        min_size=min_volume(config.min_size * s * s, spacing),
        fill_holes=config.fill_holes,
        split=config.split,
        min_seed_size=max(1, min_volume(4 * s * s, spacing)),
        min_distance=max(1.0, config.min_distance * s),
        h=None if config.h is None else config.h * s,
        smooth=1.0 * s,
    )
    return lab.astype(np.uint32, copy=False)


def _volume_spacing(voxel_size) -> tuple[float, float, float]:
    from napari_unet.core.volume import spacing_from_voxel_size

    return spacing_from_voxel_size(voxel_size)


def _volume_note(shape: tuple[int, ...], axes: str, voxel_size, spacing) -> str:
    """Say how a z-stack was labelled: in 3D, with which z-step."""
    n_z = shape[axes.index("Z")]
    if voxel_size is None:
        step = "voxel size not given: z-steps taken as long as the pixels (give the voxel size)"
    else:
        z, y, x = (float(v) for v in voxel_size)
        step = f"voxel size {z:g} x {y:g} x {x:g} (z-step {spacing[0]:.3g} pixels)"
    per = " per time point" if "T" in axes else ""
    return f"labelled in 3D{per} across {n_z} z-slices ({axes}); {step}"


def predict(bundle: ModelBundle, image, **kwargs) -> PredictResult:
    """Run :func:`iter_predict` to the end and return its result."""
    return drain(iter_predict(bundle, image, **kwargs))


def predict_probabilities(
    bundle: ModelBundle,
    image,
    *,
    channel_axis: int | None = None,
    config: PredictConfig | None = None,
) -> np.ndarray:
    """Return the blended probabilities ``(K, M, N)`` of a 2D image (no labels).

    With a model trained with object size normalisation, the image is resized for the
    network as ``config.diameter`` says (see :func:`object_scale`) and the
    probabilities come back at the image's size.
    """
    from napari_unet.core.device import release_memory, select_device

    config = config or PredictConfig.for_model(bundle)
    config.validate()
    img = prepare_image(image, bundle.in_channels, channel_axis)
    if img.ndim != 3:
        raise NapariUnetError(f"predict_probabilities takes a 2D image, got {tuple(image.shape)}.")
    norm = Normalisation.from_dict(bundle.meta.get("normalisation", {}))
    scale = object_scale(bundle, img, config)
    device = select_device(config.device)
    bundle.to(device).model.eval()
    lo, hi = norm.ranges(img)
    bundle, _ = choose_statistics(bundle, img, lo, hi, norm, scale.factor)
    H, W = img.shape[-2:]
    src = img if scale.factor == 1 else _Resized(img, _scaled_shape((H, W), scale.factor))
    prob = drain(_predict_2d(bundle, src, lo, hi, norm, config, device, None, [0], 0))
    release_memory(device)
    return _back_to_image(prob, (H, W))
