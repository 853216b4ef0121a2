"""What a training run starts from: its settings, samples, device, model and schedule.

:func:`resolve_config` checks the settings (a model being fine-tuned keeps its
normalisation and object scale); :func:`prepare_data` makes the training targets,
chooses the model's outputs and holds back the validation part (:class:`TrainData`);
:func:`training_device` picks the device and its precision; :func:`start_model` builds
the UNet (or copies the model being fine-tuned) and fills in its metadata;
:class:`Schedule` turns epochs or minutes into steps, a share of the budget used and a
learning rate.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.data import Normalisation, Sample, prepare_samples
from napari_unet.core.train_config import TrainConfig
from napari_unet.core.tune import TUNE_MAX_PIXELS
from napari_unet.core.validation import first_pixels, split_validation

if TYPE_CHECKING:  # torch is imported when training starts, not at import
    import torch

    from napari_unet.core.checkpoint import ModelBundle
    from napari_unet.core.distributed import Distributed

__all__ = [
    "TrainData",
    "Schedule",
    "resolve_config",
    "prepare_data",
    "training_device",
    "start_model",
]


@dataclass
class TrainData:
    """The prepared samples, split as the run uses them."""

    samples: list[Sample]
    train: list[Sample]
    #: The held-back samples that each validation scores (a subset of them all).
    val: list[Sample]
    #: The held-back samples that the end-of-training fit may use.
    fit: list[Sample]
    n_held_back: int
    #: What was held back, in words.
    text: str
    n_outputs: int


def resolve_config(
    config: TrainConfig | None, init: ModelBundle | None
) -> tuple[TrainConfig, Normalisation]:
    """Check the settings; return them and the normalisation (a starting model's own)."""
    config = config or TrainConfig()
    config.validate()
    if init is None:
        return config, Normalisation(config.norm_low, config.norm_high, config.polarity)
    norm = Normalisation.from_dict(init.meta.get("normalisation", {}))
    if init.meta.get("object_diameter"):  # the model's scale is part of the model
        config = dataclasses.replace(config, object_diameter=float(init.meta["object_diameter"]))
    return config, norm


def prepare_data(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig,
    norm: Normalisation,
    names: Sequence[str] | None,
    init: ModelBundle | None,
    replay: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
) -> TrainData:
    """Make the training targets, choose the outputs and hold back the validation part.

    `replay` (name, image, instance labels) are trained on, at ``config.replay_share``
    of the patches, and never held back (see :func:`napari_unet.core.train.iter_train`).
    """
    border_weight = config.border_weight
    if config.loss == "weighted_bce" and border_weight <= 0:
        border_weight = 10.0
    options = dict(
        normalisation=norm,
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
    samples = prepare_samples(images, labels, names=names, **options)
    if config.targets == "auto":
        n_outputs = 2 if any(s.targets.boundary_valid for s in samples) else 1
    else:
        n_outputs = 2 if config.targets == "instance" else 1
    if init is not None:
        n_outputs = init.spec.out_channels
    train_s, val_s, text = split_validation(
        samples, config.val_fraction, config.seed, min_size=config.patch_size
    )
    if replay:
        train_s = train_s + replay_samples(replay, config.sparse, options)
        text += f"; {len(replay)} image(s) of the starting model's own data replayed"
    # the settings are fitted (and the final weights chosen) on all held-back images, up to
    # TUNE_MAX_PIXELS and TUNE_SHARE of a time budget; each validation scores a cheaper subset
    return TrainData(
        samples=samples,
        train=train_s,
        val=first_pixels(val_s, config.val_max_images, config.val_max_pixels),
        fit=first_pixels(val_s, len(val_s), TUNE_MAX_PIXELS),
        n_held_back=len(val_s),
        text=text,
        n_outputs=n_outputs,
    )


def replay_samples(
    replay: Sequence[tuple[str, np.ndarray, np.ndarray]], sparse: bool, options: dict
) -> list[Sample]:
    """Return the samples of replayed (name, image, instance labels), marked ``replay``."""
    from napari_unet.core.corrections import whole_layer_annotation

    labels = [whole_layer_annotation(lab) if sparse else lab for _, _, lab in replay]
    samples = prepare_samples(
        [img for _, img, _ in replay],
        labels,
        names=[f"replayed {n}" for n, _, _ in replay],
        **options,
    )
    for s in samples:
        s.replay = True
    return samples


def training_device(
    config: TrainConfig, distributed: Distributed | None
) -> tuple[torch.device, str, str]:
    """Return the device, the precision it computes in, and the two in words."""
    from napari_unet.core.device import describe_device, resolve_precision, select_device

    device = select_device(config.device)
    if distributed is not None:  # joins the process group; this rank's GPU or CPU share
        device = distributed.start(device)
    # the CPU computes in bfloat16 where it does so natively (config.precision); a GPU
    # in float16 mixed precision (config.amp)
    precision = resolve_precision(config.precision, device, config.amp)
    text = describe_device(device, precision)
    if distributed is not None:
        text += f", rank {distributed.rank} of {distributed.world_size}"
    return device, precision, text


def start_model(
    config: TrainConfig,
    data: TrainData,
    norm: Normalisation,
    init: ModelBundle | None,
    precision: str,
) -> tuple[ModelBundle, dict | None, list[dict]]:
    """Return the model to train, with its metadata, and what it keeps of a starting model.

    Returns
    -------
    bundle : ModelBundle
    start_postprocess : dict or None
        The starting model's fitted prediction settings (put back at the end when none
        could be fitted).
    history_prev : list of dict
        The starting model's validation history.
    """
    import torch

    from napari_unet.core.checkpoint import ModelBundle, new_bundle
    from napari_unet.core.model import UNetSpec

    torch.manual_seed(config.seed)
    if init is not None:
        bundle = ModelBundle(copy.deepcopy(init.model), copy.deepcopy(init.meta))
        # settings fitted to the starting weights no longer describe the model being trained;
        # they are put back at the end when none could be fitted (the best guess there is)
        start_postprocess = bundle.meta.pop("postprocess", None)
        # a model trained on the user's images is their own: its retrains are not pulled back
        # towards the built-in model it started from (napari_unet.core.finetune.blend_base)
        bundle.meta.pop("retrain_base", None)
        history_prev = list(bundle.meta.get("history", []))
    else:
        spec = UNetSpec(
            in_channels=data.samples[0].image.shape[0],
            out_channels=data.n_outputs,
            depth=config.depth,
            base_channels=config.base_channels,
            batch_norm=config.batch_norm,
            upsampling=config.upsampling,
        )
        bundle = new_bundle(spec, {})
        history_prev = []
        start_postprocess = None
    bundle.meta.update(
        outputs=["foreground", "boundary"][: data.n_outputs],
        normalisation=norm.to_dict(),
        train_config=config.to_dict(),
        n_train_images=len(data.train),
        n_val_images=data.n_held_back,  # validation scores len(data.val) of them
        validation=data.text,
        precision=precision,
    )
    if config.object_diameter:
        diameters = np.array([s.diameter for s in data.samples if np.isfinite(s.diameter)])
        bundle.meta["object_diameter"] = float(config.object_diameter)
        if diameters.size:
            p10, p50, p90 = np.percentile(diameters, [10, 50, 90])
            bundle.meta["train_diameters"] = {
                "p10": round(float(p10), 2),
                "p50": round(float(p50), 2),
                "p90": round(float(p90), 2),
                "n_images": int(diameters.size),
            }
    return bundle, start_postprocess, history_prev


@dataclass
class Schedule:
    """How long a run trains, and its learning rate along the way.

    Attributes
    ----------
    steps_per_epoch : int
        ``config.steps_per_epoch``, or about one pass over the training pixels, between
        20 and 200 steps.
    budget_s : float or None
        The time budget in seconds.
    epochs : int or None
        ``config.epochs``; None under a time budget without it, else 50.
    total_steps : int or None
    """

    steps_per_epoch: int
    budget_s: float | None
    epochs: int | None
    total_steps: int | None

    @classmethod
    def from_config(cls, config: TrainConfig, train: list[Sample]) -> Schedule:
        """Return the schedule of `config` for these training samples."""
        if config.steps_per_epoch:
            steps_per_epoch = int(config.steps_per_epoch)
        else:
            px = sum(s.shape[0] * s.shape[1] for s in train)
            per_step = config.batch_size * config.patch_size**2
            steps_per_epoch = int(np.clip(px / per_step, 20, 200))
        budget_s = config.minutes * 60.0 if config.minutes else None
        epochs = config.epochs if config.epochs else (None if budget_s else 50)
        total_steps = epochs * steps_per_epoch if epochs else None
        return cls(steps_per_epoch, budget_s, epochs, total_steps)

    def fraction(self, elapsed: float, step: int) -> float:
        """Share of the budget (time or steps) used after `elapsed` seconds and `step` steps."""
        f_time = elapsed / self.budget_s if self.budget_s else 0.0
        f_steps = step / self.total_steps if self.total_steps else 0.0
        return float(min(1.0, max(f_time, f_steps)))

    @staticmethod
    def learning_rate(lr: float, step: int, fraction: float) -> float:
        """Cosine decay of `lr` over the budget, to 5 % of it, after a 20-step warm-up."""
        warm = min(1.0, (step + 1) / 20)
        return lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * fraction)))
