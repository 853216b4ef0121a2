"""Training settings: :class:`TrainConfig`, with a default for every field, and its checks.

:func:`napari_unet.core.train.iter_train` takes one; the command line and the Train
widget build one from their options; the trained model stores it as a dict
(``meta["train_config"]``). :meth:`TrainConfig.validate` raises a
:class:`~napari_unet.core.errors.NapariUnetError` naming the setting, its value and
what it may be, before any work starts.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_unet.core.data import POLARITIES
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.losses import LOSSES
from napari_unet.core.options import PRECISIONS

__all__ = ["TrainConfig", "LOSSES", "TARGETS"]

#: What the model learns (see :attr:`TrainConfig.targets`).
TARGETS = ("auto", "instance", "semantic")


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
        docs/dev/experiments.md), so it is off.
    ema : float
        Validate and keep an exponential moving average of the weights, with at most
        this decay per step (it grows from 0 as ``1 - 9 / (10 + step)``, so the average
        spans about the last tenth of the steps, up to ``1 / (1 - ema)`` steps);
        0 (the default) keeps the trained weights themselves: 0.995 scored lower on
        DSB 2018 after 10 minutes (see docs/dev/experiments.md).
    norm_low, norm_high : float
        Percentiles mapped to 0 and 1 (stored with the model).
    polarity : {"auto", "keep"}
        "auto" inverts bright-background images (brightfield, H&E) so objects are
        bright on dark as in fluorescence; "keep" leaves images as they are.
    tune_postprocessing : bool
        At the end, fit the foreground threshold and split depth to the validation
        images and store them with the model (when the validation images carry fully
        annotated instance labels; not under torchrun); see :mod:`napari_unet.core.final_fit`.
    val_fraction : float
        Share held back for validation: whole images when there are at least
        ``VAL_WHOLE_IMAGES``; with fewer, a strip of each image (its last
        ``max(val_fraction, 0.2)`` along the longer side, where the image is large
        enough); see :func:`napari_unet.core.validation.split_validation`.
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
    replay_share : float
        When fine-tuning with replayed images (``iter_train(replay=...)``: the starting
        model's own training data), the share of the patches drawn from them.
    distill : float
        When fine-tuning with replayed images: weight of a distillation term on the
        replayed patches, whose targets are the teacher's outputs (``iter_train``'s
        ``teacher``, else the starting model), so the fine-tuned model keeps
        predicting the kinds of image it knew as it did (learning without
        forgetting: Li & Hoiem, 2017); 0 (the default) = off.
    patience : int or None
        Early stopping after this many validations without improvement; None (the
        default) trains to the end of the budget or the epochs: the learning rate
        decays over all of it, and the end-of-training fit (``tune_postprocessing``)
        keeps the better of the best-validated and the final weights. On DSB 2018 the
        default of 10 used before stopped both runs it ended (90 minutes; 30 minutes
        at batch size 4) while they were still improving: their final weights beat
        the best-validated ones on all held-back images (see docs/dev/experiments.md).
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
    replay_share: float = 0.5
    distill: float = 0.0
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
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a dict of its fields, checking their names and types.

        The dict may come from a ``train_config.json`` (the command line), the widgets
        or a model's ``meta["train_config"]``; fields it leaves out keep their defaults.
        JSON's types are expected: a whole number for an ``int`` field, any number for
        a ``float``, ``true``/``false`` for a ``bool``, ``null`` where None is allowed.
        The values themselves are checked by :meth:`validate`.

        Raises
        ------
        NapariUnetError
            (a ``ValueError``) For a key that is not a field (naming the known ones),
            or a value of the wrong type (naming the key and the type expected).

        Examples
        --------
        >>> TrainConfig.from_dict({"epochs": 5}).epochs
        5
        >>> TrainConfig.from_dict({"epochs": 5.0})
        Traceback (most recent call last):
        ...
        napari_unet.core.errors.NapariUnetError: epochs must be int or null, got 5.0.
        """
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(d) - set(hints))
        if unknown:
            raise NapariUnetError(f"unknown setting(s) {unknown}; known ones are {sorted(hints)}.")
        for key, value in d.items():
            allowed = typing.get_args(hints[key]) or (hints[key],)
            if not any(_is_a(value, t) for t in allowed):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
                raise NapariUnetError(f"{key} must be {names}, got {value!r}.")
        return cls(**d)

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
        if not (np.isfinite(self.replay_share) and 0 <= self.replay_share < 1):
            raise NapariUnetError(
                f"replay_share must be in [0, 1) (a share of the patches), got {self.replay_share}."
            )
        if not (np.isfinite(self.distill) and 0 <= self.distill <= 100):
            raise NapariUnetError(f"distill must be between 0 (off) and 100, got {self.distill}.")
        if not 0 <= self.ema < 1:
            raise NapariUnetError(f"ema must be in [0, 1) (0 = off), got {self.ema}.")
        if self.patience is not None and (int(self.patience) != self.patience or self.patience < 0):
            raise NapariUnetError(
                f"patience must be a whole number of validations (0 or None: no early "
                f"stopping), got {self.patience!r}."
            )
        if not 0 <= self.fg_fraction <= 1:
            raise NapariUnetError(f"fg_fraction must be in [0, 1], got {self.fg_fraction}.")


def _is_a(value: Any, kind: type) -> bool:
    """Return True if a JSON value fits a field's type (``True`` is no number here)."""
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return False
