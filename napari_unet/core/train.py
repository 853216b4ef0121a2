"""Training: a generator that yields typed progress and returns the best model.

:func:`iter_train` is the one training loop of napari-unet: the command line,
the Train widget (in a napari ``thread_worker``) and the tests all run it.
It validates its inputs before the first yield, samples augmented patches,
keeps the best model by validation score (written atomically to
``checkpoint_path`` whenever it improves), stops on a time budget, an epoch
count, early stopping, divergence (NaN loss) or when ``stop`` is set, and
returns a :class:`TrainResult` holding the best model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.data import (
    POLARITIES,
    Normalisation,
    PatchSampler,
    Sample,
    prepare_samples,
)
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.tune import TUNE_MAX_PIXELS

if TYPE_CHECKING:  # torch is imported when training starts, not at import
    from napari_unet.core.checkpoint import ModelBundle
    from napari_unet.core.distributed import Distributed

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "iter_train", "train", "LOSSES"]

LOSSES = ("bce_dice", "bce", "dice", "weighted_bce")
TARGETS = ("auto", "instance", "semantic")

#: Progress kinds yielded by :func:`iter_train`.
START, STEP, VALIDATION, DONE = "start", "step", "validation", "done"


@dataclass
class TrainConfig:
    """Training settings. Every field has a default that works on nuclei.

    Parameters
    ----------
    depth, base_channels, upsampling, batch_norm
        UNet architecture (see :class:`napari_unet.core.model.UNetSpec`).
    targets : {"auto", "instance", "semantic"}
        "instance" learns foreground + boundary maps (splits touching objects);
        "semantic" learns the foreground only; "auto" picks "instance" unless every
        label image is a binary mask.
    sparse : bool
        Sparse annotation: 0 = not annotated (ignored), 1 = background, >= 2 objects.
    boundary_width : int
        Width of the boundary band (pixels).
    loss : {"bce_dice", "bce", "dice", "weighted_bce"}
        "weighted_bce" is BCE with the UNet paper's border weights.
    border_weight, border_sigma : float
        ``w0`` and ``sigma`` of the border weights (0 disables them; "weighted_bce"
        uses 10 when 0).
    interface_weight : float
        Extra weight of the boundary output's loss within 2 pixels of where two objects
        touch (see :func:`napari_unet.core.targets.make_targets`); 0 = off.
    contact_gap : int
        Pixels on each side of where two objects touch that the foreground target
        leaves out, so touching objects are apart in it (see
        :func:`napari_unet.core.targets.make_targets`); 0 = off.
    patch_size, batch_size : int
        Training patches.
    augment : bool
        Flips, 90-degree rotations, intensity jitter.
    zoom : float
        Scale augmentation (with ``augment``): patches are resized by a factor drawn
        log-uniformly from ``[1 / (1 + zoom), 1 + zoom]``; 0 = off.
    object_diameter : float or None
        Object size normalisation: every training image is resized so that its median
        object diameter becomes this many pixels, and the value is stored with the
        model, so that prediction resizes images to it (see
        :func:`napari_unet.core.data.prepare_samples`); ``zoom`` then varies the size
        around it. None (the default): images are used at their own size. A model
        being fine-tuned keeps the value it was trained with.
    style_augment : bool
        Appearance augmentation (gamma, blur, noise, stain gains, colour turned grey),
        for models meant for images of other microscopes and stains (see
        :class:`napari_unet.core.data.PatchSampler`).
    workers : int or None
        Processes that cut and augment patches beside the training loop; None: 0 on
        the CPU (they would compete with the training for its cores) and up to 6 on a
        GPU, which the loop alone cannot keep busy.
    fg_fraction : float
        Share of patches centred on an object.
    sample_by_loss : float
        Draw the images whose patches have a high training loss more often: an image's
        chance is multiplied by ``(its running loss / the median) ** sample_by_loss``,
        clipped to 1/4 .. 4 (0, the default: by area only). Meant to give rare kinds of
        image in a mixed set more steps; on DSB 2018 it scored lower (see
        docs/benchmarks.md), so it is off.
    ema : float
        Validate and keep an exponential moving average of the weights, with at most
        this decay per step (it grows from 0 as ``1 - 9 / (10 + step)``, so the average
        spans about the last tenth of the steps, up to ``1 / (1 - ema)`` steps);
        0 (the default) keeps the trained weights themselves: 0.995 scored lower on
        DSB 2018 after 10 minutes (see docs/benchmarks.md).
    norm_low, norm_high : float
        Percentiles mapped to 0 and 1 (stored with the model).
    polarity : {"auto", "keep"}
        "auto" inverts bright-background images (brightfield, H&E) so objects are
        bright on dark as in fluorescence; "keep" leaves images as they are.
    tune_postprocessing : bool
        At the end, fit the foreground threshold and split depth to the validation
        images and store them with the model (when the validation images carry fully
        annotated instance labels; not under torchrun); see :mod:`napari_unet.core.tune`.
    val_fraction : float
        Share held back for validation: whole images when there are at least
        ``VAL_WHOLE_IMAGES``; with fewer, a strip of each image (its last
        ``max(val_fraction, 0.2)`` along the longer side, where the image is large
        enough); see ``_split_validation``.
    val_max_images, val_max_pixels : int
        At most this many validation images, and pixels in all, are scored at each
        validation (its cost comes out of the time budget).
    epochs : int or None
        Number of epochs (used when ``minutes`` is None; default 50).
    minutes : float or None
        Time budget; training stops when it is spent (validation included).
    steps_per_epoch : int or None
        None: about one pass over the training pixels, between 20 and 200 steps.
    lr, weight_decay : float
        AdamW; the learning rate follows a cosine decay over the budget.
    anchor : float
        When fine-tuning (``init`` given), pull the weights towards the starting
        model's: the loss gains ``anchor`` times the mean squared difference between
        the weights and their starting values (L2-SP), so a short fine-tune on a few
        corrections changes what it must and forgets less of the rest; 0 (the default)
        = off, and ignored when training from scratch.
    patience : int or None
        Early stopping after this many validations without improvement; None (the
        default) trains to the end of the budget or the epochs: the learning rate
        decays over all of it, and the end-of-training fit (``tune_postprocessing``)
        keeps the better of the best-validated and the final weights. On DSB 2018 the
        default of 10 used before stopped both runs it ended (90 minutes; 30 minutes
        at batch size 4) while they were still improving: their final weights beat
        the best-validated ones on all held-back images (see docs/benchmarks.md).
    device : str
        "auto" (CUDA, then MPS, then CPU), "cuda", "mps" or "cpu".
    precision : {"auto", "fp32", "bf16"}
        Compute precision on the CPU (see
        :func:`napari_unet.core.device.resolve_precision`): "auto" (the default) runs the
        forward pass in bfloat16 (``torch.autocast``) where the CPU computes it natively
        (AMX or AVX-512 BF16: a training step 2.8x faster, measured), else in float32;
        "bf16" forces it (emulated, and slower, on other CPUs); "fp32" never. The loss,
        the gradients and the weights stay float32. Validation predicts in the same
        precision. GPUs ignore it: there ``amp`` decides. The precision used is stored
        in the model (``meta["precision"]``).
    amp : bool or None
        Mixed precision (float16) on a GPU; None = on for CUDA only. The CPU ignores
        it: there ``precision`` decides.
    channels_last : bool or None
        Channels-last memory format; None = on for CUDA and CPU (3-9x faster
        convolutions on CPU, measured), off for MPS.
    checkpoint_path : str or None
        Where the best model is written (atomically) whenever it improves.
    seed : int
    """

    depth: int = 4
    base_channels: int = 16
    upsampling: str = "bilinear"
    batch_norm: bool = True
    targets: str = "auto"
    sparse: bool = False
    boundary_width: int = 1
    loss: str = "bce_dice"
    border_weight: float = 0.0
    border_sigma: float = 5.0
    interface_weight: float = 0.0
    contact_gap: int = 0
    patch_size: int = 128
    batch_size: int = 8
    augment: bool = True
    zoom: float = 0.0
    object_diameter: float | None = None
    style_augment: bool = False
    workers: int | None = None
    fg_fraction: float = 0.5
    sample_by_loss: float = 0.0
    ema: float = 0.0
    norm_low: float = 1.0
    norm_high: float = 99.8
    polarity: str = "auto"
    tune_postprocessing: bool = True
    val_fraction: float = 0.1
    val_max_images: int = 32
    val_max_pixels: int = 1_500_000
    epochs: int | None = None
    minutes: float | None = None
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-5
    anchor: float = 0.0
    patience: int | None = None
    device: str = "auto"
    precision: str = "auto"
    amp: bool | None = None
    channels_last: bool | None = None
    checkpoint_path: str | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build a config from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        """Raise :class:`NapariUnetError` for settings that cannot work."""
        if self.loss not in LOSSES:
            raise NapariUnetError(f"loss must be one of {LOSSES}, got {self.loss!r}.")
        if self.targets not in TARGETS:
            raise NapariUnetError(f"targets must be one of {TARGETS}, got {self.targets!r}.")
        if self.patch_size < 16:
            raise NapariUnetError(f"patch_size must be at least 16 pixels, got {self.patch_size}.")
        if self.batch_size < 1:
            raise NapariUnetError(f"batch_size must be at least 1, got {self.batch_size}.")
        if self.epochs is not None and self.epochs < 1:
            raise NapariUnetError(f"epochs must be at least 1, got {self.epochs}.")
        if self.minutes is not None and not (np.isfinite(self.minutes) and self.minutes > 0):
            raise NapariUnetError(
                f"minutes must be a positive number of minutes, got {self.minutes}."
            )
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise NapariUnetError(
                f"steps_per_epoch must be at least 1 (or unset), got {self.steps_per_epoch}."
            )
        if int(self.seed) != self.seed or not 0 <= self.seed < 2**32:
            raise NapariUnetError(
                f"seed must be a whole number from 0 to 2**32 - 1, got {self.seed}."
            )
        if not 0 <= self.val_fraction < 1:
            raise NapariUnetError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        if not 0 <= self.norm_low < self.norm_high <= 100:
            raise NapariUnetError(
                f"Need 0 <= norm_low < norm_high <= 100, got {self.norm_low}, {self.norm_high}."
            )
        if self.polarity not in POLARITIES:
            raise NapariUnetError(f"polarity must be one of {POLARITIES}, got {self.polarity!r}.")
        from napari_unet.core.predict import PRECISIONS  # numpy only

        if self.precision not in PRECISIONS:
            raise NapariUnetError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise NapariUnetError(f"lr must be a positive, finite number, got {self.lr}.")
        if not 0 <= self.sample_by_loss <= 4:
            raise NapariUnetError(
                f"sample_by_loss must be between 0 (off) and 4, got {self.sample_by_loss}."
            )
        if not (np.isfinite(self.interface_weight) and 0 <= self.interface_weight <= 100):
            raise NapariUnetError(
                f"interface_weight must be between 0 (off) and 100, got {self.interface_weight}."
            )
        if int(self.contact_gap) != self.contact_gap or not 0 <= self.contact_gap <= 5:
            raise NapariUnetError(
                f"contact_gap must be a whole number of pixels from 0 (off) to 5, got "
                f"{self.contact_gap!r}."
            )
        if self.object_diameter is not None and not (
            isinstance(self.object_diameter, (int, float))
            and np.isfinite(self.object_diameter)
            and 4 <= self.object_diameter <= 200
        ):
            raise NapariUnetError(
                "object_diameter must be a number of pixels between 4 and 200 (or None: "
                f"images at their own size), got {self.object_diameter!r}."
            )
        if self.workers is not None and not (
            isinstance(self.workers, int) and 0 <= self.workers <= 64
        ):
            raise NapariUnetError(
                "workers must be a whole number from 0 to 64 (or None: auto), got "
                f"{self.workers!r}."
            )
        if not (np.isfinite(self.zoom) and 0 <= self.zoom <= 1):
            raise NapariUnetError(
                f"zoom must be between 0 (off) and 1 (sizes from half to double), got {self.zoom}."
            )
        if not (np.isfinite(self.anchor) and 0 <= self.anchor <= 1e6):
            raise NapariUnetError(f"anchor must be between 0 (off) and 1e6, got {self.anchor}.")
        if not 0 <= self.ema < 1:
            raise NapariUnetError(f"ema must be in [0, 1) (0 = off), got {self.ema}.")
        if self.patience is not None and (int(self.patience) != self.patience or self.patience < 0):
            raise NapariUnetError(
                f"patience must be a whole number of validations (0 or None: no early "
                f"stopping), got {self.patience!r}."
            )
        if not 0 <= self.fg_fraction <= 1:
            raise NapariUnetError(f"fg_fraction must be in [0, 1], got {self.fg_fraction}.")


@dataclass
class TrainProgress:
    """One report from :func:`iter_train`.

    Attributes
    ----------
    kind : {"start", "step", "validation", "done"}
    step, epoch : int
    loss : float or None
        Training loss of this step.
    validation : dict or None
        On "validation": ``val_loss``, ``dice``, ``f1`` (when the labels are instance
        labels: objects as predicted, split, against the true ones), ``score``.
    elapsed : float
        Seconds since training started.
    fraction : float
        Share of the budget (time or epochs) used, 0..1.
    device : str
        The device in words, e.g. "CPU (2 threads)", "CUDA: NVIDIA H100".
    message : str
    """

    kind: str
    step: int = 0
    epoch: int = 0
    loss: float | None = None
    validation: dict | None = None
    elapsed: float = 0.0
    fraction: float = 0.0
    device: str = ""
    message: str = ""


@dataclass
class TrainResult:
    """What :func:`iter_train` returns.

    Attributes
    ----------
    bundle : ModelBundle
        The best model (by validation score; the last one without validation).
    history : list of dict
        One entry per validation.
    best_score : float or None
    stopped : {"budget", "epochs", "early_stopping", "user", "diverged"}
    checkpoint : Path or None
        Where this run saved the best model; None when it wrote none (stopped or
        diverged before a model was kept, or the disk was full), even if an older file
        is there.
    device : str
    steps : int
    notes : list of str
        What was changed on the way, e.g. a smaller batch after the device ran out of
        memory, or a model that could not be saved.
    save_error : str or None
        Why the last attempt to write ``checkpoint`` failed (e.g. a full disk), or None
        when the file on disk holds the best model. After a failure the file there (if
        any) is the last version that could be written, intact; ``bundle`` is the best.
    """

    bundle: ModelBundle
    history: list[dict] = field(default_factory=list)
    best_score: float | None = None
    stopped: str = "epochs"
    checkpoint: Path | None = None
    device: str = ""
    steps: int = 0
    notes: list[str] = field(default_factory=list)
    save_error: str | None = None


def _loss_fn(kind: str):
    import torch
    import torch.nn.functional as F

    def loss(
        logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, per_sample: bool = False
    ) -> torch.Tensor:
        # pooled over the batch; with per_sample, one value per patch (B,) instead
        dims = (2, 3) if per_sample else (0, 2, 3)
        total = logits.new_zeros((logits.shape[0],) if per_sample else ())
        denom_w = weight.sum(dim=dims)
        used = (denom_w > 0).to(logits.dtype)
        n_used = used.sum(dim=-1).clamp(min=1)
        if kind in ("bce", "bce_dice", "weighted_bce"):
            bce = F.binary_cross_entropy_with_logits(
                logits, target, weight=weight, reduction="none"
            )
            per_ch = bce.sum(dim=dims) / denom_w.clamp(min=1)
            total = total + (per_ch * used).sum(dim=-1) / n_used
        if kind in ("dice", "bce_dice"):
            valid = (weight > 0).to(logits.dtype)
            p = torch.sigmoid(logits) * valid
            t = target * valid
            inter = (p * t).sum(dim=dims)
            card = p.sum(dim=dims) + t.sum(dim=dims)
            dice = 1 - (2 * inter + 1.0) / (card + 1.0)
            total = total + (dice * used).sum(dim=-1) / n_used
        return total

    return loss


#: With at least this many distinct images (a stack's planes are one image), whole images
#: are held back for validation, ``val_fraction`` of them (at least one): one of 4 is a
#: quarter of the data, about what a strip takes, and an unseen image validates better than
#: a strip of a seen one. With fewer, whole images would take a third to a half of what the
#: user painted (two images: one trains, one validates), so a strip of each image is held
#: back instead (:func:`_split_strips`).
VAL_WHOLE_IMAGES = 4
#: Smallest share of an image's longer side held back as a validation strip (more when
#: ``val_fraction`` is larger, at most :data:`VAL_STRIP_MAX_SHARE`).
VAL_STRIP_SHARE = 0.2
#: Largest share of an image's longer side held back as a strip: at least half trains.
VAL_STRIP_MAX_SHARE = 0.5
#: Fewest pixels across a validation strip: a narrower one holds too few whole objects
#: to score. A strip is widened to this when that keeps it within
#: :data:`VAL_STRIP_RAISED_SHARE` of the side (a 256-pixel image gives 64 rows).
VAL_STRIP_MIN = 64
VAL_STRIP_RAISED_SHARE = 0.25


def _image_name(s: Sample) -> str:
    """Return the name of the image a sample comes from (shared by a stack's planes)."""
    return s.name.split(" (")[0]


def _strip_width(length: int, share: float, min_size: int) -> int:
    """Pixels held back at the end of a side of `length` pixels (0: none).

    The strip is ``share`` of the side, widened to :data:`VAL_STRIP_MIN` when that
    stays within :data:`VAL_STRIP_RAISED_SHARE` (or `share`) of it; the rest, which
    trains, keeps at least ``max(min_size, VAL_STRIP_MIN)`` pixels.
    """
    n = max(int(round(share * length)), VAL_STRIP_MIN)
    if n > max(share, VAL_STRIP_RAISED_SHARE) * length:
        return 0
    if length - n < max(int(min_size), VAL_STRIP_MIN):
        return 0
    return n


def _split_strips(
    samples: list[Sample], fraction: float, seed: int, min_size: int
) -> tuple[list[Sample], list[Sample], str]:
    """Hold back a strip at the end of each sample's longer side for validation.

    A sample gives a strip (bottom rows when it is at least as tall as wide, else right
    columns; :func:`_strip_width` pixels) when both the strip and the rest hold an
    annotated object; it then trains on the rest only, so no pixel is both trained on and
    validated. The other samples train whole. The planes of a stack all have the same
    shape, so the same region of each is held back.
    """
    from napari_unet.core.data import crop_sample

    share = min(max(float(fraction), VAL_STRIP_SHARE), VAL_STRIP_MAX_SHARE)
    train: list[Sample] = []
    val: list[Sample] = []
    sides: set[str] = set()
    percents: set[int] = set()
    too_small = 0
    for s in samples:
        h, w = s.shape
        tall = h >= w
        length = h if tall else w
        n = _strip_width(length, share, min_size)
        if not n:
            too_small += 1
            train.append(s)
            continue
        cut = length - n
        t = s.targets
        rest, strip = (np.s_[:cut, :], np.s_[cut:, :]) if tall else (np.s_[:, :cut], np.s_[:, cut:])
        if not all(t.valid[p].any() and t.foreground[p].any() for p in (rest, strip)):
            train.append(s)  # the strip (or the rest) holds no annotated object
            continue
        train.append(crop_sample(s, *rest, seed=seed))
        val.append(crop_sample(s, *strip, seed=seed))
        sides.add("bottom" if tall else "right")
        percents.add(int(round(100 * n / length)))
    n_all = len(samples)
    if not val:
        if too_small == n_all:
            need = next(
                (L for L in range(2 * VAL_STRIP_MIN, 1 << 20) if _strip_width(L, share, min_size)),
                None,
            )
            why = f"too small for a strip, which needs at least {need} px along the longer side"
        elif too_small:
            why = "each too small for a strip or without an annotated object in one"
        else:
            why = "none with an annotated object both in a strip at its end and in the rest"
        plural = "s" if n_all != 1 else ""
        return (
            train,
            [],
            f"nothing held back: every annotated pixel trains ({n_all} image{plural}, fewer than "
            f"{VAL_WHOLE_IMAGES} to hold whole ones back, {why})",
        )
    side = sides.pop() if len(sides) == 1 else "bottom or right"
    pct = f"{min(percents)}%" if len(percents) == 1 else f"{min(percents)}-{max(percents)}%"
    note = ""
    if len(val) == n_all:
        which = "of the image" if n_all == 1 else f"of each of {n_all} images"
    else:
        others = n_all - len(val)
        which = f"of {len(val)} of {n_all} images"
        note = (
            " (the "
            + ("other trains" if others == 1 else f"{others} others train")
            + " whole: too small, or no annotated object in the strip or the rest)"
        )
    return train, val, f"held back the {side} {pct} {which} for validation{note}"


def _split_validation(
    samples: list[Sample], fraction: float, seed: int, min_size: int = 0
) -> tuple[list[Sample], list[Sample], str]:
    """Split the samples into training and validation ones; say what was held back.

    With at least :data:`VAL_WHOLE_IMAGES` distinct images (the planes of a stack count
    as one image, and are held back together), whole images are held back, ``fraction``
    of them (at least one, never all). With fewer (a single stack too: its neighbouring
    planes look alike, so holding back whole planes would validate on what is trained
    on), a strip of each image is held back instead (:func:`_split_strips`; `min_size`,
    the training patch size, is the least that the training part keeps), or nothing
    when no image can spare one.

    Returns
    -------
    train, val : list of Sample
    text : str
        What was held back, in words (shown when training starts, stored with the model).
    """
    if fraction <= 0:
        return samples, [], "nothing held back (validation share 0): every annotated pixel trains"
    names = sorted({_image_name(s) for s in samples})
    rng = np.random.default_rng(seed)
    if len(names) >= VAL_WHOLE_IMAGES:
        n_val = max(1, int(round(fraction * len(names))))
        n_val = min(n_val, len(names) - 1)
        val_names = set(rng.choice(names, n_val, replace=False).tolist())
        train = [s for s in samples if _image_name(s) not in val_names]
        val = [s for s in samples if _image_name(s) in val_names]
        return train, val, f"held back {n_val} of {len(names)} images for validation"
    return _split_strips(samples, fraction, seed, min_size)


def _drain(gen: Generator):
    """Run a generator to the end and return its value."""
    while True:
        try:
            next(gen)
        except StopIteration as e:
            return e.value


def _val_probabilities(bundle: ModelBundle, sample: Sample, cfg, device):
    """Predict a (normalised) validation sample whole, tiled like prediction.

    Returns the probabilities ``(K, M, N)`` and the config used, with fewer or smaller
    tiles when the device ran out of memory.
    """
    from napari_unet.core.device import describe_device, is_out_of_memory, release_memory
    from napari_unet.core.predict import _predict_2d, shrink_for_memory

    ident = Normalisation(0.0, 100.0)  # samples are normalised already
    c = bundle.in_channels
    lo, hi = np.zeros(c, np.float32), np.ones(c, np.float32)
    while True:
        try:
            prob = _drain(
                _predict_2d(bundle, sample.image, lo, hi, ident, cfg, device, None, [0], 0)
            )
            return prob, cfg
        except (RuntimeError, MemoryError) as error:  # retried below, tensors freed
            if not is_out_of_memory(error):
                raise
        release_memory(device)
        cfg = shrink_for_memory(cfg, bundle.spec.multiple, describe_device(device))


def _first_pixels(samples: Sequence[Sample], max_images: int, max_pixels: int) -> list[Sample]:
    """Keep the samples, in order, while they hold at most so many images and pixels.

    The first sample is always kept.
    """
    kept, px = [], 0
    for smp in samples:
        n_px = smp.shape[0] * smp.shape[1]
        if kept and (len(kept) >= max_images or px + n_px > max_pixels):
            continue
        kept.append(smp)
        px += n_px
    return kept


#: Share of a time budget that the end-of-training fit may take at most.
TUNE_SHARE = 0.12


class _Anchor:
    """L2-SP: the mean squared distance of the weights from their starting values."""

    def __init__(self, model, weight: float) -> None:
        self.weight = float(weight)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.start = [p.detach().clone() for p in self.params]
        self.n = max(1, sum(p.numel() for p in self.params))

    def penalty(self):
        total = sum(((p - p0) ** 2).sum() for p, p0 in zip(self.params, self.start, strict=True))
        return self.weight * total / self.n


class _Ema:
    """Exponential moving average of a model's weights (and batch-norm statistics)."""

    def __init__(self, model, decay: float) -> None:
        self.decay = float(decay)
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._float = [k for k, v in self.state.items() if v.is_floating_point()]

    def update(self, model) -> None:
        import torch

        self.steps += 1
        d = min(self.decay, 1.0 - 9.0 / (10.0 + self.steps))
        cur = model.state_dict()
        with torch.no_grad():
            torch._foreach_lerp_(
                [self.state[k] for k in self._float], [cur[k].detach() for k in self._float], 1 - d
            )
            for k, v in cur.items():
                if k not in self._float:
                    self.state[k].copy_(v)

    def swap(self, model) -> None:
        """Exchange the model's weights with the average (call twice to swap back)."""
        import torch

        cur = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model.load_state_dict(self.state)
        self.state = cur


#: Time of fitting the prediction settings to a set of images on one thread (scoring 21
#: pairs of threshold and split depth, and the default settings for the choice of
#: weights), in units of the time it takes to predict them once. Measured by
#: bench/fit_cost.py on DSB 2018 with a 2-core CPU: 2.8 on the 60 validation images, 3.9
#: on the 11 of the subset; the deadline given to :func:`_tune` catches what this
#: misjudges.
FIT_PER_PASS = 3.0
#: Share of that time which the fit's threads divide between them
#: (:func:`napari_unet.core.tune.fit_threads`): bench/fit_cost.py measured two threads
#: fitting 1.6 times as fast as one, which is this share by Amdahl's law.
FIT_PARALLEL_SHARE = 0.75


def _fit_per_pass(threads: int | None = None) -> float:
    """:data:`FIT_PER_PASS` for a fit on `threads` threads (the fit's own if None)."""
    if threads is None:
        from napari_unet.core.tune import fit_threads

        threads = fit_threads()
    share = FIT_PARALLEL_SHARE
    return FIT_PER_PASS * (1.0 - share + share / max(1, int(threads)))


class _Stopped(Exception):
    """The user stopped training while the prediction settings were being fitted."""


def _tune_plan(
    val: list[Sample], val_px: int, tune_all: list[Sample], predict_seconds: float, budget_s
) -> tuple[list[Sample], float]:
    """Choose the images of the end-of-training fit and its cost.

    `predict_seconds` is the time the last validation spent predicting the subset `val`
    (`val_px` pixels); the cost returned is in those units. All held-back images
    (`tune_all`) are taken unless, at that cost per pixel, predicting them twice
    (best-validated and final weights) and fitting would take more than
    :data:`TUNE_SHARE` of a time budget: then as many as fit, or the validation subset
    (predicted once).
    """
    per_px = predict_seconds / max(val_px, 1)
    fit = _fit_per_pass()
    cost = 2.0 + fit  # in predictions of the fit's images
    allowed = float("inf")
    if budget_s and per_px > 0:
        allowed = TUNE_SHARE * budget_s / (cost * per_px)
    kept = _first_pixels(tune_all, len(tune_all), int(min(allowed, 2**62)))
    kept_px = sum(v.shape[0] * v.shape[1] for v in kept)
    if kept_px <= val_px:  # no more than the subset: predict once, no choice of weights
        return val, 1.0 + fit
    return kept, cost * kept_px / max(val_px, 1)


def _val_set_probabilities(
    bundle: ModelBundle,
    val: Sequence[Sample],
    device,
    stop,
    deadline=None,
    after: float = 0.0,
    precision: str = "auto",
) -> list:
    """Predict the images of `val` in order.

    With `deadline` (a :func:`time.perf_counter` value), an image is added only while,
    at the mean time per image so far, predicting it and then `after` times as long
    again for every image taken (the work that follows) ends before the deadline; the
    first image is always taken. Returns the probabilities of the images taken.
    """
    from napari_unet.core.predict import PredictConfig

    cfg = PredictConfig(tile_size=512, overlap=32, batch_size=2, precision=precision)
    bundle.model.eval()
    probs = []
    t_start = time.perf_counter()
    for s in val:
        if stop is not None and stop.is_set():
            raise _Stopped
        if deadline is not None and probs:
            now = time.perf_counter()
            per_image = (now - t_start) / len(probs)
            if now + per_image * (1 + after * (len(probs) + 1)) > deadline:
                break
        prob, cfg = _val_probabilities(bundle, s, cfg, device)
        probs.append(prob)
    return probs


def _tune(
    bundle: ModelBundle,
    val: Sequence[Sample],
    device,
    last_state=None,
    stop=None,
    deadline=None,
    precision: str = "auto",
) -> dict:
    """Fit the prediction settings on the held-back images.

    The model holds the weights that scored best at validation. With `last_state`
    (the final weights, when they are not those), both are scored on all `val` images
    at the default settings and the better one is kept in the model; the settings are
    then fitted to it. With `deadline` (a :func:`time.perf_counter` value), the fit
    uses as many of the `val` images, in order, as it can finish by then (at least one;
    see :func:`_fit_per_pass`). Raises :class:`_Stopped` when `stop` is set (the model
    then holds the best weights).
    """
    from napari_unet.core.predict import PredictConfig, labels_from_output
    from napari_unet.core.tune import score_labels, tune_postprocessing

    after = _fit_per_pass() + (1.0 if last_state is not None else 0.0)
    probs = _val_set_probabilities(bundle, val, device, stop, deadline, after, precision)
    val = list(val[: len(probs)])
    instances = [s.targets.instances for s in val]
    chosen = None
    if last_state is not None:
        base = PredictConfig()
        best_state = {
            k: v.detach().to("cpu", copy=True) for k, v in bundle.model.state_dict().items()
        }
        bundle.model.load_state_dict(last_state)
        try:
            probs_last = _val_set_probabilities(bundle, val, device, stop, precision=precision)
        except _Stopped:
            bundle.model.load_state_dict(best_state)
            raise
        s_best, s_last = (
            score_labels(instances, [labels_from_output(p, bundle.outputs, base) for p in pr])
            for pr in (probs, probs_last)
        )
        keep_last = s_last["score"] > s_best["score"]
        if keep_last:
            probs = probs_last
        else:
            bundle.model.load_state_dict(best_state)
        chosen = {
            "weights": "last" if keep_last else "best",
            "best_score": s_best["score"],
            "last_score": s_last["score"],
        }
    if stop is not None and stop.is_set():
        raise _Stopped
    tuned = tune_postprocessing(probs, instances, bundle.outputs)
    if chosen is not None:
        tuned["weights"] = chosen
    return tuned


def _validate(
    bundle: ModelBundle,
    val: Sequence[Sample],
    loss_fn,
    device,
    n_outputs: int,
    precision: str = "auto",
) -> dict:
    """Score the model on whole validation images (tiled, like prediction)."""
    import torch

    from napari_unet.core.metrics import match_objects
    from napari_unet.core.predict import PredictConfig, labels_from_output

    cfg = PredictConfig(tile_size=512, overlap=32, batch_size=2, precision=precision)
    losses, inter, card, tp, fp, fn = [], 0.0, 0.0, 0, 0, 0
    instance_ok = True
    bundle.model.eval()
    predict_s = 0.0
    for s in val:
        t_pred = time.perf_counter()
        prob, cfg = _val_probabilities(bundle, s, cfg, device)
        predict_s += time.perf_counter() - t_pred
        t = s.targets
        tgt = np.stack([t.foreground, t.boundary][:n_outputs]).astype(np.float32)
        w = t.valid.astype(np.float32)
        wts = np.stack([w, w * float(t.boundary_valid)][:n_outputs])
        p = np.clip(prob, 1e-6, 1 - 1e-6)
        logits = torch.from_numpy(np.log(p / (1 - p)))[None]
        losses.append(
            float(loss_fn(logits, torch.from_numpy(tgt)[None], torch.from_numpy(wts)[None]))
        )
        valid = t.valid.astype(bool)
        pf = (prob[0] > 0.5) & valid
        gf = t.foreground.astype(bool) & valid
        inter += float(np.logical_and(pf, gf).sum())
        card += float(pf.sum() + gf.sum())
        # objects are scored where the labels say where touching objects meet (a model
        # without a boundary output splits them by the distance transform)
        if (n_outputs > 1 or t.boundary_valid) and t.instances is not None and valid.all():
            pred = labels_from_output(prob, bundle.outputs, cfg)
            mt = match_objects(t.instances, pred, thresholds=(0.5,))
            tp, fp, fn = tp + int(mt.tp[0]), fp + int(mt.fp[0]), fn + int(mt.fn[0])
        else:
            instance_ok = False
    out = {"val_loss": float(np.mean(losses)), "dice": (2 * inter + 1e-9) / (card + 1e-9)}
    out["predict_seconds"] = predict_s
    if instance_ok:
        out["f1"] = 2 * tp / max(2 * tp + fp + fn, 1)
        out["score"] = out["f1"]
    else:
        out["score"] = out["dice"]
    return out


def iter_train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    init: ModelBundle | None = None,
    stop: threading.Event | None = None,
    distributed: Distributed | None = None,
) -> Generator[TrainProgress, None, TrainResult]:
    """Train a UNet, yielding progress; return the best model.

    Parameters
    ----------
    images : sequence of ndarray
        2D grey ``(M, N)``, channels-last ``(M, N, C)``, or stacks matching their
        labels; an image with one more axis than its labels has a channel axis.
    labels : sequence of ndarray
        Instance labels, binary masks or sparse annotations (see
        :mod:`napari_unet.core.targets`), one per image.
    config : TrainConfig, optional
    names : sequence of str, optional
        Names for messages and for the validation split (file stems, layer names).
    init : ModelBundle, optional
        Fine-tune this model (its architecture and normalisation are kept).
    stop : threading.Event, optional
        When set, training ends after the current step and the best model so far
        is returned.
    distributed : Distributed, optional
        This process's rank in a torchrun job (see :mod:`napari_unet.core.distributed`):
        DistributedDataParallel, per-rank data and seeds, reduced validation scores,
        agreed stop decisions, checkpoints written by rank 0 only.

    Yields
    ------
    TrainProgress

    Returns
    -------
    TrainResult

    Raises
    ------
    NapariUnetError
        Invalid settings or data (raised before the first yield).
    """
    import torch

    from napari_unet.core.checkpoint import ModelBundle, new_bundle, save_checkpoint
    from napari_unet.core.device import (
        compute_autocast,
        describe_device,
        is_out_of_memory,
        precision_note,
        release_memory,
        resolve_precision,
        select_device,
    )
    from napari_unet.core.model import UNetSpec

    config = config or TrainConfig()
    config.validate()
    if init is not None:
        norm = Normalisation.from_dict(init.meta.get("normalisation", {}))
        if init.meta.get("object_diameter"):  # the model's scale is part of the model
            config = dataclasses.replace(
                config, object_diameter=float(init.meta["object_diameter"])
            )
    else:
        norm = Normalisation(config.norm_low, config.norm_high, config.polarity)
    border_weight = config.border_weight
    if config.loss == "weighted_bce" and border_weight <= 0:
        border_weight = 10.0
    samples = prepare_samples(
        images,
        labels,
        normalisation=norm,
        names=names,
        sparse=config.sparse,
        border_weight=border_weight,
        border_sigma=config.border_sigma,
        boundary_width=config.boundary_width,
        interface_weight=config.interface_weight,
        contact_gap=int(config.contact_gap),
        seed=config.seed,
        in_channels=init.in_channels if init is not None else None,
        object_diameter=config.object_diameter,
    )
    in_channels = samples[0].image.shape[0]
    if config.targets == "auto":
        n_outputs = 2 if any(s.targets.boundary_valid for s in samples) else 1
    else:
        n_outputs = 2 if config.targets == "instance" else 1
    if init is not None:
        n_outputs = init.spec.out_channels
    train_s, val_s, val_text = _split_validation(
        samples, config.val_fraction, config.seed, min_size=config.patch_size
    )
    # the settings are fitted (and the final weights chosen) on all held-back images, up to
    # TUNE_MAX_PIXELS and TUNE_SHARE of a time budget; each validation scores a cheaper subset
    n_held_back = len(val_s)
    tune_all = _first_pixels(val_s, len(val_s), TUNE_MAX_PIXELS)
    val_s = _first_pixels(val_s, config.val_max_images, config.val_max_pixels)
    device = select_device(config.device)
    if distributed is not None:  # joins the process group; this rank's GPU or CPU share
        device = distributed.start(device)
    # the CPU computes in bfloat16 where it does so natively (config.precision); a GPU
    # in float16 mixed precision (config.amp)
    precision = resolve_precision(config.precision, device, config.amp)
    dev_text = describe_device(device, precision)
    if distributed is not None:
        dev_text += f", rank {distributed.rank} of {distributed.world_size}"
    torch.manual_seed(config.seed)
    if init is not None:
        bundle = ModelBundle(copy.deepcopy(init.model), copy.deepcopy(init.meta))
        # settings fitted to the starting weights no longer describe the model being trained;
        # they are put back at the end when none could be fitted (the best guess there is)
        start_postprocess = bundle.meta.pop("postprocess", None)
        history_prev = list(bundle.meta.get("history", []))
    else:
        spec = UNetSpec(
            in_channels=in_channels,
            out_channels=n_outputs,
            depth=config.depth,
            base_channels=config.base_channels,
            batch_norm=config.batch_norm,
            upsampling=config.upsampling,
        )
        bundle = new_bundle(spec, {})
        history_prev = []
        start_postprocess = None
    outputs = ["foreground", "boundary"][:n_outputs]
    bundle.meta.update(
        outputs=outputs,
        normalisation=norm.to_dict(),
        train_config=config.to_dict(),
        n_train_images=len(train_s),
        n_val_images=n_held_back,  # validation scores len(val_s) of them
        validation=val_text,
        precision=precision,
    )
    if config.object_diameter:
        diameters = np.array([s.diameter for s in samples if np.isfinite(s.diameter)])
        bundle.meta["object_diameter"] = float(config.object_diameter)
        if diameters.size:
            p10, p50, p90 = np.percentile(diameters, [10, 50, 90])
            bundle.meta["train_diameters"] = {
                "p10": round(float(p10), 2),
                "p50": round(float(p50), 2),
                "p90": round(float(p90), 2),
                "n_images": int(diameters.size),
            }
    model = bundle.model.to(device)
    channels_last = (
        config.channels_last if config.channels_last is not None else device.type != "mps"
    )
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = model if distributed is None else distributed.wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # float16 needs loss scaling; bfloat16 has float32's range and does not
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "amp" and device.type == "cuda")
    ema = _Ema(model, config.ema) if config.ema > 0 else None
    anchor = _Anchor(model, config.anchor) if config.anchor > 0 and init is not None else None
    loss_fn = _loss_fn("bce" if config.loss == "weighted_bce" else config.loss)
    sampler = PatchSampler(
        train_s if distributed is None else distributed.share(train_s),
        config.patch_size,
        config.batch_size,
        n_outputs,
        fg_fraction=config.fg_fraction,
        augment=config.augment,
        seed=config.seed if distributed is None else distributed.seed(config.seed),
        by_loss=config.sample_by_loss,
        zoom=config.zoom,
        style=config.style_augment,
    )
    workers = config.workers
    if workers is None:
        workers = min(6, max(0, (os.cpu_count() or 1) - 2)) if device.type == "cuda" else 0
    if distributed is not None or sampler.by_loss > 0:  # both need this process's sampler
        workers = 0
    batches = _BatchStream(sampler, workers, config.seed)
    if config.steps_per_epoch:
        steps_per_epoch = int(config.steps_per_epoch)
    else:
        px = sum(s.shape[0] * s.shape[1] for s in train_s)
        steps_per_epoch = int(np.clip(px / (config.batch_size * config.patch_size**2), 20, 200))
    budget_s = config.minutes * 60.0 if config.minutes else None
    epochs = config.epochs if config.epochs else (None if budget_s else 50)
    total_steps = epochs * steps_per_epoch if epochs else None
    ckpt = Path(config.checkpoint_path) if config.checkpoint_path else None

    history: list[dict] = []
    notes: list[str] = []
    slow = precision_note(config.precision, device)
    if slow:
        notes.append(slow)
    tune = bool(
        config.tune_postprocessing
        and distributed is None
        and tune_all
        and all(  # fully annotated instance labels (a binary mask does not say where
            # touching objects meet, so it cannot score the splitting)
            v.targets.instances is not None and v.targets.valid.all() and v.targets.boundary_valid
            for v in tune_all
        )
    )
    val_px = sum(v.shape[0] * v.shape[1] for v in val_s)
    # The end of the run predicts the fit's images (twice when they are more than the
    # validation subset: best-validated and final weights) and fits the settings
    # (_fit_per_pass() times as long as predicting them once). tune_cost is that time in
    # predictions of the validation subset; it is kept free in the budget, with one more
    # validation. Both are updated after each validation, when its cost is known. The
    # fit itself is given the budget's end as its deadline.
    tune_s = val_s
    tune_cost = 1.0 + _fit_per_pass() if tune else 0.0
    save_error: str | None = None
    saved = False  # this run wrote the model file (an older file at ckpt does not count)
    best_score: float | None = None
    best_state = None
    safe_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    bad_epochs = 0
    stopped = "epochs"
    step = epoch = 0
    losses: list[float] = []
    t0 = time.perf_counter()
    last_val_s = last_pred_s = 0.0

    def fraction(elapsed: float) -> float:
        f_time = elapsed / budget_s if budget_s else 0.0
        f_steps = step / total_steps if total_steps else 0.0
        return float(min(1.0, max(f_time, f_steps)))

    def try_save() -> bool:
        """Write the best model; a full disk is noted, training goes on."""
        nonlocal save_error, saved
        try:
            save_checkpoint(bundle, ckpt)
        except NapariUnetError as error:
            if save_error is None:
                notes.append(f"could not save the model: {error}")
            save_error = str(error)
            return False
        save_error = None
        saved = True
        return True

    def run_validation() -> dict:
        if ema is None:
            return _run_validation()
        ema.swap(model)  # the averaged weights are validated, kept and saved
        try:
            return _run_validation()
        finally:
            ema.swap(model)

    def _run_validation() -> dict:
        nonlocal best_score, best_state, safe_state, bad_epochs, last_val_s, last_pred_s
        nonlocal tune_s, tune_cost
        tv = time.perf_counter()
        entry = {
            "step": step,
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else None,
        }
        if val_s and distributed is not None:  # each rank scores its share; reduced
            entry.update(
                distributed.validate(
                    _validate, bundle, val_s, loss_fn, device, n_outputs, config.precision
                )
            )
            score = entry["score"]
        elif val_s:
            entry.update(_validate(bundle, val_s, loss_fn, device, n_outputs, config.precision))
            score = entry["score"]
        else:
            score = -entry["train_loss"] if entry["train_loss"] is not None else None
            entry["score"] = score
        entry["lr"] = opt.param_groups[0]["lr"]
        safe_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        last_val_s = time.perf_counter() - tv
        entry["val_seconds"] = round(last_val_s, 2)
        # the fit's cost is counted in predictions of the subset (bench/fit_cost.py's
        # unit), not in validations, which also score the predictions
        pred_s = entry.get("predict_seconds")  # not reduced under torchrun (no fit there)
        last_pred_s = last_val_s if pred_s is None else float(pred_s)
        if pred_s is not None:
            entry["predict_seconds"] = round(last_pred_s, 2)
        if tune:
            tune_s, tune_cost = _tune_plan(val_s, val_px, tune_all, last_pred_s, budget_s)
        entry["elapsed"] = time.perf_counter() - t0
        history.append(entry)
        losses.clear()
        if score is not None and (best_score is None or score > best_score):
            best_score = score
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            bad_epochs = 0
            entry["best"] = True
            if ckpt is not None and (distributed is None or distributed.is_main):
                bundle.meta["history"] = history_prev + history
                if not try_save():
                    entry["not_saved"] = save_error
        else:
            bad_epochs += 1
        return entry

    yield TrainProgress(
        START,
        device=dev_text,
        message=(
            f"training on {len(train_s)} image(s); {val_text}"
            + (
                f" (each validation scores {len(val_s)} of the {n_held_back})"
                if n_held_back > len(val_s)
                else ""
            )
            + f"; {steps_per_epoch} steps per epoch, {dev_text}"
            + (f". Note: {slow}" if slow else "")
        ),
    )
    try:
        while True:
            now = time.perf_counter() - t0
            if distributed is not None:  # the ranks agree on stopping and on the clock
                user, now = distributed.agree_max([stop is not None and stop.is_set(), now])
                if user:
                    stopped = "user"
                    break
            elif stop is not None and stop.is_set():
                stopped = "user"
                break
            model.train()
            # cosine learning-rate decay over the budget, with a short warm-up
            f = fraction(now)
            warm = min(1.0, (step + 1) / 20)
            for g in opt.param_groups:
                g["lr"] = config.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * f)))
            xt, yt, wt = (a.to(device, non_blocking=True) for a in batches.next())
            if channels_last:
                xt = xt.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            try:
                with compute_autocast(device, precision):
                    logits = net(xt)
                loss = loss_fn(logits.float(), yt, wt)
                if anchor is not None:
                    loss = loss + anchor.penalty()
                lv = float(loss.detach())
                if sampler.by_loss > 0:  # harder images are drawn more often
                    with torch.no_grad():
                        each = loss_fn(logits.detach().float(), yt, wt, per_sample=True)
                    sampler.report_losses(each.cpu().numpy())
                if distributed is not None:  # mean over ranks: a NaN anywhere stops all
                    lv = distributed.mean(lv)
                if math.isfinite(lv):
                    scaler.scale(loss).backward()
            except (RuntimeError, MemoryError) as error:  # retried below, tensors freed
                # under torchrun every rank must run the same steps: no retry there
                if distributed is not None or not is_out_of_memory(error):
                    raise
                lv = None
            if lv is None:
                xt = yt = wt = logits = loss = None
                opt.zero_grad(set_to_none=True)
                release_memory(device)
                batches.close()  # the workers hold copies of the sampler: cut here instead
                batches = _BatchStream(sampler, 0, config.seed)
                note = _shrink_sampler(sampler, dev_text)
                notes.append(note)
                bundle.meta["memory_adjustments"] = {
                    "batch_size": sampler.batch_size,
                    "patch_size": sampler.patch,
                }
                elapsed = time.perf_counter() - t0
                yield TrainProgress(
                    STEP, step, epoch, None, None, elapsed, fraction(elapsed), dev_text, note
                )
                continue
            if not math.isfinite(lv):
                stopped = "diverged"
                yield TrainProgress(
                    STEP,
                    step,
                    epoch,
                    lv,
                    None,
                    time.perf_counter() - t0,
                    1.0,
                    dev_text,
                    "the loss became NaN or infinite: training stopped, the last good model is kept"
                    " (try a lower learning rate)",
                )
                break
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update(model)
            step += 1
            losses.append(lv)
            elapsed = time.perf_counter() - t0
            yield TrainProgress(STEP, step, epoch, lv, None, elapsed, fraction(elapsed), dev_text)
            if step % steps_per_epoch == 0:
                epoch += 1
                entry = run_validation()
                elapsed = time.perf_counter() - t0
                yield TrainProgress(
                    VALIDATION,
                    step,
                    epoch,
                    lv,
                    entry,
                    elapsed,
                    fraction(elapsed),
                    dev_text,
                    _describe(entry),
                )
                if config.patience and val_s and bad_epochs >= config.patience:
                    stopped = "early_stopping"
                    break
            elapsed = time.perf_counter() - t0
            if epochs and epoch >= epochs:
                stopped = "epochs"
                break
            # keep time for the last validation (and the fitting of the prediction settings)
            over = bool(budget_s and elapsed + last_val_s + last_pred_s * tune_cost >= budget_s)
            if distributed is not None and budget_s:
                over = bool(distributed.agree_max([over])[0])
            if over:
                stopped = "budget"
                break
        if stopped != "diverged" and step and (not history or history[-1]["step"] != step):
            entry = run_validation()
            elapsed = time.perf_counter() - t0
            yield TrainProgress(
                VALIDATION,
                step,
                epoch,
                None,
                entry,
                elapsed,
                fraction(elapsed),
                dev_text,
                _describe(entry),
            )
    finally:
        batches.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        elif stopped == "diverged":
            model.load_state_dict(safe_state)
        model.eval()
        model.to(memory_format=torch.contiguous_format)
    tuned_text = ""
    fit_stopped = False
    if tune and best_state is not None and stopped not in ("user", "diverged"):
        tv = time.perf_counter()
        # the final weights (safe_state, copied at the last validation) against the best
        # on the validation subset, chosen on all held-back images; no choice when the
        # final ones are the best, or when the fit uses the validation subset itself
        last_best = bool(history and history[-1].get("best")) or tune_s is val_s
        yield TrainProgress(
            STEP,
            step,
            epoch,
            None,
            None,
            time.perf_counter() - t0,
            1.0,
            dev_text,
            ("fitting" if last_best else "choosing the final weights and fitting")
            + f" the prediction settings on {'up to ' if budget_s else ''}{len(tune_s)}"
            " held-back image(s)",
        )
        try:
            tuned = _tune(
                bundle,
                tune_s,
                device,
                None if last_best else safe_state,
                stop,
                deadline=t0 + budget_s if budget_s else None,
                precision=config.precision,
            )
        except _Stopped:
            tuned = None
            fit_stopped = True
        if tuned is not None:
            tuned["seconds"] = round(time.perf_counter() - tv, 1)
            bundle.meta["postprocess"] = tuned
            kept = tuned.get("weights", {}).get("weights") == "last"
            tuned_text = (
                (
                    "; the final weights scored better than the best validated ones and were kept"
                    if kept
                    else ""
                )
                + f"; prediction settings fitted on {tuned['n_images']} held-back image(s): "
                f"threshold {tuned['threshold']:g}, split depth {tuned['h']:g} px "
                f"(F1 {tuned['f1']:.3f}, DSB score {tuned['dsb_score']:.3f})"
            )
    if init is None and stopped == "budget" and step < MIN_USEFUL_STEPS:
        notes.append(
            f"only {step} training steps fitted in the time allowed: too few for a useful "
            f"model (a few hundred at least; allow more minutes, or use a GPU)"
        )
    if "postprocess" not in bundle.meta:
        tuned_text += _unfitted_text(start_postprocess, tune, "user" if fit_stopped else stopped)
        if isinstance(start_postprocess, dict):
            bundle.meta["postprocess"] = {**start_postprocess, "source": "starting model"}
    bundle.meta["history"] = history_prev + history
    bundle.meta["device"] = dev_text
    bundle.meta["steps"] = int(bundle.meta.get("steps", 0)) + step
    if ckpt is not None and best_state is not None and (distributed is None or distributed.is_main):
        try_save()
    bundle.to("cpu")
    release_memory(device)
    elapsed = time.perf_counter() - t0
    yield TrainProgress(
        DONE,
        step,
        epoch,
        None,
        None,
        elapsed,
        1.0,
        dev_text,
        f"stopped ({stopped}) after {step} steps in {elapsed:.0f} s; "
        + _best_text(history, best_score)
        + tuned_text,
    )
    return TrainResult(
        bundle=bundle,
        history=history,
        best_score=best_score,
        stopped=stopped,
        checkpoint=ckpt if ckpt is not None and saved and save_error is None else None,
        device=dev_text,
        steps=step,
        notes=notes,
        save_error=save_error,
    )


def _unfitted_text(start_postprocess: dict | None, tune: bool, stopped: str) -> str:
    """Say which prediction settings a model that was not fitted at the end will use."""
    from napari_unet.core.predict import PredictConfig
    from napari_unet.core.tune import tuned_settings

    if stopped == "user" and tune:
        why = "stopped before the prediction settings were fitted"
    elif stopped == "diverged":
        why = "training diverged"
    else:
        why = "no fully annotated held-back image to fit the prediction settings on"
    if isinstance(start_postprocess, dict) and tuned_settings({"postprocess": start_postprocess}):
        kept = tuned_settings({"postprocess": start_postprocess})
        return (
            f"; {why}: the starting model's settings are kept (threshold "
            f"{kept.get('threshold', PredictConfig.threshold):g}, split depth "
            f"{kept.get('h', PredictConfig.h):g} px)"
        )
    return (
        f"; {why}: prediction uses the default threshold {PredictConfig.threshold:g} and "
        f"split depth {PredictConfig.h:g} px"
    )


#: Fewer steps than this (training from scratch) are too few for a useful model: say so.
MIN_USEFUL_STEPS = 100

#: The smallest training patch tried when the device runs out of memory.
MIN_PATCH = 32


def _sampler_dataset(sampler: PatchSampler, seed: int):
    """Return an endless torch IterableDataset of a sampler's batches.

    Each worker process reseeds its copy of the sampler, so they draw different patches.
    """
    import torch

    class SamplerDataset(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            if info is not None:
                sampler.rng = np.random.default_rng([seed, 7919, info.id])
            while True:
                yield sampler.batch()

    return SamplerDataset()


class _BatchStream:
    """Training batches as tensors: cut in this process, or by ``workers`` processes.

    Workers are forked (the samples are shared, not copied) and only run numpy; the
    batches come back through torch's DataLoader, pinned for the copy to the GPU.
    """

    def __init__(self, sampler: PatchSampler, workers: int, seed: int) -> None:
        self.sampler = sampler
        self._iter = None
        self._loader = None
        if workers > 0:
            import multiprocessing

            import torch

            try:
                ctx = multiprocessing.get_context("fork")
            except ValueError:  # no fork (Windows, macOS default): cut patches here
                return
            self._loader = torch.utils.data.DataLoader(
                _sampler_dataset(sampler, seed),
                batch_size=None,
                num_workers=workers,
                pin_memory=torch.cuda.is_available(),
                prefetch_factor=4,
                multiprocessing_context=ctx,
            )
            self._iter = iter(self._loader)

    def next(self):
        """Return the next ``(images, targets, weights)`` tensors, on the CPU."""
        import torch

        if self._iter is None:
            return tuple(torch.from_numpy(a) for a in self.sampler.batch())
        return next(self._iter)

    def close(self) -> None:
        """Stop the worker processes."""
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None


def _shrink_sampler(sampler: PatchSampler, device_text: str) -> str:
    """Halve the batch (then the patch) after an out-of-memory; say what was done.

    Raises
    ------
    NapariUnetError
        When one patch of the smallest size per step does not fit either.
    """
    if sampler.batch_size > 1:
        sampler.batch_size = max(1, sampler.batch_size // 2)
    elif sampler.patch > MIN_PATCH:
        sampler.patch = max(MIN_PATCH, sampler.patch // 2)
    else:
        raise NapariUnetError(
            f"{device_text} ran out of memory even with one {sampler.patch}x{sampler.patch} "
            "patch per step. Close other programs using the GPU, choose a smaller model "
            "(depth, base channels) or train on the CPU (device 'cpu')."
        )
    return (
        f"{device_text} ran out of memory: continuing with batch size {sampler.batch_size} "
        f"and patch size {sampler.patch}"
    )


def score_name(entry: dict) -> str:
    """Name what a validation entry's ``score`` is, in the words the widgets and CLI use."""
    if "f1" in entry:
        return "F1 on held-back images"
    if "dice" in entry:
        return "Dice on held-back images"
    return "training loss"


def _best_text(history: Sequence[dict], best_score: float | None) -> str:
    """Give the run's one score: the best F1 (or Dice) on held-back images, or the last loss."""
    if best_score is None or not history:
        return "no score (no step finished)"
    name = score_name(history[-1])
    if name == "training loss":  # the score is minus the loss; no images were held back
        return f"nothing held back to score; last {name} {-history[-1]['score']:.3f}"
    return f"best {name} {best_score:.3f}"


def _describe(entry: dict) -> str:
    parts = [f"epoch {entry['epoch']}", f"step {entry['step']}"]
    for k in ("train_loss", "val_loss", "dice", "f1"):
        if entry.get(k) is not None:
            parts.append(f"{k} {entry[k]:.3f}")
    if entry.get("best"):
        parts.append("(best)")
    if entry.get("not_saved"):
        parts.append(f"NOT SAVED: {entry['not_saved']}")
    return ", ".join(parts)


def train(images, labels, config: TrainConfig | None = None, **kwargs) -> TrainResult:
    """Run :func:`iter_train` to the end and return its :class:`TrainResult`."""
    gen = iter_train(images, labels, config, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as e:
            return e.value
