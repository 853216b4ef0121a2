"""Fine-tune a model on the user's corrections (Correct & retrain), without Qt.

One retrain is a short, bounded fine-tune of the current model on the session's
training set (every image the user corrected, with what they painted, plus the images
the model was trained on in this session), then a check: the old and the new model
predict the corrected images and are scored on what the user annotated there; the
better one is kept. The new model keeps the prediction settings (threshold, split
depth) fitted to the model it started from.

The budget is a number of steps with a time cap, so one retrain does the same work on
an idle or a busy machine when it can, and never runs for long on a slow one.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.progress import drain

if TYPE_CHECKING:
    from napari_unet.core.checkpoint import ModelBundle
    from napari_unet.core.train import TrainProgress, TrainResult

#: Fewer steps than this are too few to change what the model predicts: say so.
MIN_USEFUL_STEPS = 30
#: Pixels around the annotated area that the old/new comparison predicts as context.
SCORE_MARGIN = 32


@dataclass
class FinetuneConfig:
    """Settings of one retrain. The defaults are what the Retrain button uses.

    Parameters
    ----------
    steps : int
        Training steps (batches) of the fine-tune.
    max_seconds : float
        Time cap of the training part; fewer steps are run when it is reached (a
        warning says so when they are fewer than :data:`MIN_USEFUL_STEPS`).
    lr : float
        Peak learning rate (AdamW, short warm-up, cosine decay over the steps).
    anchor : float
        Pull towards the starting weights (L2-SP, see
        :class:`napari_unet.core.train.TrainConfig`), against forgetting.
    blend : float
        For the built-in model and the retrains made from it alone: the share of the
        fine-tuned weights kept, the rest pulled back to the built-in model
        (:func:`blend_base`): the new model is ``built-in + blend * (fine-tuned -
        built-in)``, weights and normalisation statistics alike (weight-space
        ensembling, "WiSE-FT": Wortsman et al., CVPR 2022). Each round starts from the
        previous one, so what earlier rounds learned carries on, shrunk by `blend` each
        round: for `blend` < 1 the distance from the built-in model stays below
        ``blend / (1 - blend)`` times one round's (unblended) change, approached after many
        rounds. 1 keeps the fine-tuned weights as they are; lower forgets less of the
        kinds of image the built-in model knew and, on partial corrections, also
        predicts the other images of the corrected kind better
        (``docs/dev/correct_retrain.md``). Not applied to any other model (measured only
        from the built-in one), nor when fewer than :data:`MIN_USEFUL_STEPS` steps ran
        (too little was learned to pull back).
    blend_choices : tuple of float
        Other shares tried when `blend` applies and `keep_better` compares: each blended
        model is scored on the corrected images too, and the share that predicts them best
        is kept (`blend` on a tie). Empty by default: with (0.5, 0.8) the corrections
        nearly always picked 0.8, which gained more on whole corrected images (median
        +0.232 against +0.204 over three seeds) but not on partial ones (+0.141 against
        +0.144), forgot more with whole images, and once scored the images corrected so
        far lower than the round before (``docs/dev/correct_retrain.md``). The best of
        several scores on the same corrections slightly favours the new model in the
        comparison with the old one.
    keep_better : bool
        Score the old and the new model on the corrected images and keep the better
        one (the new one on a tie).
    replay : bool
        When the model is (or descends from) a built-in model, replay the shipped
        samples of its own training data (:func:`napari_unet.core.builtin.replay_data`)
        alongside the corrections, so that it does not forget the kinds of image it
        knew.
    replay_share : float
        Share of the training patches drawn from the replayed images.
    distill : float
        Weight of the distillation term on the replayed patches (0 = off): the
        fine-tuned model is pulled towards the outputs of the model it blends towards
        (:func:`blend_base`), else of the starting model, on the images it knew
        (see :class:`napari_unet.core.train.TrainConfig`).
    device : str
        "auto", "cuda", "mps" or "cpu".
    checkpoint_path : str or None
        Where the kept model is written, when it is the new one.
    seed : int
    """

    steps: int = 100
    max_seconds: float = 40.0
    lr: float = 5e-4
    anchor: float = 0.0
    blend: float = 0.65
    blend_choices: tuple[float, ...] = ()
    keep_better: bool = True
    replay: bool = True
    replay_share: float = 0.5
    distill: float = 0.0
    device: str = "auto"
    checkpoint_path: str | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return asdict(self)

    def validate(self) -> None:
        """Raise :class:`NapariUnetError` for settings that cannot work, naming them."""
        if int(self.steps) != self.steps or self.steps < 1:
            raise NapariUnetError(f"steps must be a whole number of at least 1, got {self.steps}.")
        if not (np.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise NapariUnetError(
                f"max_seconds must be a positive number of seconds, got {self.max_seconds}."
            )
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise NapariUnetError(f"lr must be a positive, finite number, got {self.lr}.")
        if not (np.isfinite(self.distill) and 0 <= self.distill <= 100):
            raise NapariUnetError(f"distill must be between 0 (off) and 100, got {self.distill}.")
        for name, share in [("blend", self.blend)] + [
            ("blend_choices", s) for s in self.blend_choices
        ]:
            if not (np.isfinite(share) and 0 < share <= 1):
                raise NapariUnetError(
                    f"{name} must be in (0, 1] (the share of the fine-tune's change kept), "
                    f"got {share}."
                )


@dataclass
class FinetuneResult:
    """What :func:`iter_finetune` returns.

    Attributes
    ----------
    bundle : ModelBundle
        The model kept: the fine-tuned one, or the starting one when it scored better
        on the corrections.
    kept : {"new", "old"}
    before, after : dict or None
        Object scores (``tp``, ``fp``, ``fn``, ``f1``) of the starting and the
        fine-tuned model on the annotated parts of the corrected images; None when
        not compared (stopped, or nothing to score).
    steps : int
    seconds : float
        Wall time of the whole retrain (training, comparison, saving).
    checkpoint : Path or None
        Where the new model was saved (None when the old one was kept, or unsaved).
    notes : list of str
        Warnings for the user (too few steps, could not save, ...).
    train : TrainResult
        The trainer's result (its ``bundle`` is None when the previous model is kept).
    stopped : bool
        The user stopped the retrain (training or the comparison).
    replayed : int
        Images of the starting model's own training data replayed alongside the
        corrections (:attr:`FinetuneConfig.replay`).
    """

    bundle: ModelBundle
    kept: str
    before: dict | None
    after: dict | None
    steps: int
    seconds: float
    checkpoint: Path | None
    notes: list[str] = field(default_factory=list)
    train: TrainResult | None = None
    stopped: bool = False
    replayed: int = 0

    def summary(self) -> str:
        """One readable line: what was done and which model is kept, with the scores."""
        text = f"Fine-tuned for {self.steps} steps in {self.seconds:.0f} s"
        if self.replayed:
            text += f" ({self.replayed} images of the built-in model's own data replayed)"
        if self.stopped:
            return text + " (stopped): the previous model is kept."
        if self.before is None or self.after is None:
            return text + "."
        scores = (
            f"F1 on your corrections {self.before['f1']:.3f} before, {self.after['f1']:.3f} after"
        )
        if self.kept == "old":
            return (
                f"{text}; {scores}: the fine-tuned model was not better, so the previous "
                "model is kept."
            )
        return f"{text}; {scores}."


def iter_finetune(
    images: Sequence[np.ndarray],
    annotations: Sequence[np.ndarray],
    init: ModelBundle,
    config: FinetuneConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    scored: Sequence[int] | None = None,
    stop: threading.Event | None = None,
) -> Generator[TrainProgress, None, FinetuneResult]:
    """Fine-tune `init` on annotated images, compare with it, keep the better model.

    Parameters
    ----------
    images : sequence of ndarray
        ``(M, N)``, channels-last ``(M, N, C)``, or stacks, as for
        :func:`napari_unet.core.train.iter_train`.
    annotations : sequence of ndarray of int
        Sparse convention (0 = not annotated, 1 = background, >= 2 = objects; see
        :mod:`napari_unet.core.corrections`), one per image.
    init : ModelBundle
        The model to start from; it is not changed.
    config : FinetuneConfig, optional
    names : sequence of str, optional
    scored : sequence of int, optional
        Indices of the images on which the old and the new model are compared (the
        user's corrections); default: all.
    stop : threading.Event, optional
        Ends training after the current step; the comparison is then skipped and the
        previous model is kept (nothing is saved).

    Yields
    ------
    TrainProgress

    Returns
    -------
    FinetuneResult
    """
    from napari_unet.core.builtin import replay_data
    from napari_unet.core.checkpoint import save_checkpoint
    from napari_unet.core.train import DONE, STEP, TrainConfig, TrainProgress, iter_train

    config = config or FinetuneConfig()
    config.validate()
    if len(images) != len(annotations):
        raise NapariUnetError(f"Got {len(images)} images but {len(annotations)} annotations.")
    t0 = time.perf_counter()
    # a model file of another napari-unet version may record settings this one does not
    # know (or no longer has): those are left out, the rest is checked
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    base = {k: v for k, v in (init.meta.get("train_config") or {}).items() if k in known}
    train_config = TrainConfig.from_dict(base)
    # the starting model's recipe may be a GPU's (a built-in model): this machine's own
    # batch size and patch workers (none on a CPU) decide the speed of a fine-tune here
    train_config.workers = None
    train_config.batch_size = min(train_config.batch_size, TrainConfig.batch_size)
    train_config.precision = "auto"  # bfloat16 where this CPU computes it natively
    train_config.sparse = True
    train_config.epochs = 1
    train_config.steps_per_epoch = int(config.steps)
    train_config.minutes = float(config.max_seconds) / 60.0
    train_config.val_fraction = 0.0
    train_config.patience = None
    train_config.tune_postprocessing = False
    train_config.lr = float(config.lr)
    train_config.anchor = float(config.anchor)
    train_config.replay_share = float(config.replay_share)
    train_config.distill = float(config.distill)
    train_config.device = config.device
    train_config.checkpoint_path = None  # the kept model is saved below
    train_config.seed = int(config.seed)
    done = None
    replay = replay_data(init) if config.replay and config.replay_share > 0 else []
    # the model a retrain blends towards, and distils from on the replayed images
    origin = blend_base(init) if config.blend < 1 or (config.distill > 0 and replay) else None
    gen = iter_train(
        images,
        annotations,
        train_config,
        names=names,
        init=init,
        stop=stop,
        replay=replay,
        teacher=origin,
    )
    while True:  # relay all but the trainer's own "done" report
        try:
            progress = next(gen)
        except StopIteration as end:
            trained: TrainResult = end.value
            break
        if progress.kind == DONE:
            done = progress
            continue
        yield progress
    notes = list(trained.notes)
    new = trained.bundle
    if trained.steps < MIN_USEFUL_STEPS and trained.stopped == "budget":
        notes.append(
            f"only {trained.steps} training steps fitted in the {config.max_seconds:g} s "
            "allowed: too few to change much (the machine is slow or busy; allow more time)"
        )
    stopped = trained.stopped in ("user", "diverged")
    if trained.stopped == "diverged":
        notes.append("fine-tuning diverged: the previous model is kept")
    towards = None  # the built-in model the fine-tune is blended towards, if any
    share = float(config.blend)
    tuned = new  # the fine-tuned weights as they are
    if new is not None and not stopped:
        base = init.meta.get("retrain_base")
        if base is not None:  # still a retrain of that built-in model
            new.meta["retrain_base"] = base
        towards = origin if share < 1 and trained.steps >= MIN_USEFUL_STEPS else None
        if towards is not None:
            new = _blended(tuned, towards, share)
            new.meta["blend"] = {"share": share, "towards": str(base["name"])}
        else:
            new.meta.pop("blend", None)
    before = after = None
    kept = "new"
    idx = list(range(len(images))) if scored is None else list(scored)
    if stopped:  # cut short and never compared: the previous model stays
        kept = "old"
    elif config.keep_better and idx:
        shares = [] if towards is None else [s for s in config.blend_choices if s != share]
        what = f" and {len(shares)} other share(s) of the fine-tune's change" if shares else ""
        yield TrainProgress(
            STEP,
            trained.steps,
            1,
            None,
            None,
            time.perf_counter() - t0,
            1.0,
            trained.device,
            f"comparing the previous and the fine-tuned model{what} on {len(idx)} corrected "
            "image(s)",
        )
        chosen = ([images[i] for i in idx], [annotations[i] for i in idx])
        before = score_on_annotations(init, *chosen, device=config.device, stop=stop)
        after = score_on_annotations(new, *chosen, device=config.device, stop=stop)
        for other in shares:  # the share that predicts the corrections best (first on a tie)
            if after is None or (stop is not None and stop.is_set()):
                break
            candidate = _blended(tuned, towards, other)
            score = score_on_annotations(candidate, *chosen, device=config.device, stop=stop)
            if score is not None and score["f1"] > after["f1"]:
                new, after = candidate, score
                new.meta["blend"] = {"share": other, "towards": str(base["name"])}
        if stop is not None and stop.is_set():  # stopped while comparing
            kept, before, after = "old", None, None
            stopped = True
        elif before is not None and after is not None and after["f1"] < before["f1"]:
            kept = "old"
    bundle = new if kept == "new" else init
    # the unused weights need not travel back to the viewer
    trained.bundle = new if kept == "new" else None
    bundle.to("cpu")
    checkpoint = None
    if kept == "new" and config.checkpoint_path and not stopped:
        try:
            checkpoint = save_checkpoint(new, config.checkpoint_path)
        except NapariUnetError as error:
            notes.append(f"could not save the fine-tuned model: {error}")
    result = FinetuneResult(
        bundle=bundle,
        kept=kept,
        before=before,
        after=after,
        steps=trained.steps,
        seconds=time.perf_counter() - t0,
        checkpoint=checkpoint,
        notes=notes,
        train=trained,
        stopped=stopped and trained.stopped != "diverged",
        replayed=len(replay),
    )
    yield TrainProgress(
        DONE,
        trained.steps,
        1,
        None,
        None,
        result.seconds,
        1.0,
        trained.device if done is None else done.device,
        result.summary(),
    )
    return result


def finetune(images, annotations, init, config=None, **kwargs) -> FinetuneResult:
    """Run :func:`iter_finetune` to the end and return its result."""
    return drain(iter_finetune(images, annotations, init, config, **kwargs))


def blend_base(init: ModelBundle) -> ModelBundle | None:
    """Return the built-in model a retrain of `init` blends towards, or None.

    A built-in model, and every model that only retrains made from it, blend towards
    the built-in weights (``meta["retrain_base"]``: its name and file hash): however
    many rounds, a retrain stays within a bounded distance of the model that knew the
    other kinds of image (:attr:`FinetuneConfig.blend`). None (no blending) for any other model: the
    user's own, one a Train run made from a built-in model, a retrain whose built-in
    model is no longer installed, was replaced by another version, or has no file hash
    in its index (then another version cannot be told apart), and a retrain saved by a
    version before this one (no ``retrain_base``).
    """
    from napari_unet.core.builtin import origin_model

    return origin_model(init) if tied_to_builtin(init) else None


def tied_to_builtin(bundle: ModelBundle) -> bool:
    """Whether `bundle` is a built-in model, or a retrain of one, whose file is installed.

    The checks of :func:`blend_base`, without loading the built-in model: the recorded
    name is the model's origin and the installed file has the recorded hash.
    """
    from napari_unet.core.builtin import get_model

    base = bundle.meta.get("retrain_base")
    if not isinstance(base, dict):
        return False
    name, sha = base.get("name"), base.get("sha256")
    if not isinstance(name, str) or name != bundle.meta.get("origin") or not sha:
        return False
    installed = get_model(name)
    return installed is not None and installed.sha256 == sha


def _blended(tuned: ModelBundle, towards: ModelBundle, share: float) -> ModelBundle:
    """Return a copy of `tuned` with `share` of its change from `towards` kept."""
    import copy

    out = copy.copy(tuned)
    out.model = copy.deepcopy(tuned.model)
    out.meta = copy.deepcopy(tuned.meta)
    blend_weights(out, towards, share)
    return out


def blend_weights(new: ModelBundle, start: ModelBundle, share: float) -> None:
    """Move `new`'s weights back towards `start`'s: keep `share` of the change, in place.

    Every floating-point tensor of the state (weights, and the normalisation layers'
    running statistics) becomes ``start + share * (new - start)``; counters are left
    as they are.
    """
    import torch

    ref = start.model.state_dict()
    with torch.no_grad():
        for key, value in new.model.state_dict().items():
            if value.is_floating_point():
                base = ref[key].to(device=value.device, dtype=value.dtype)
                value.copy_(base + share * (value - base))


def annotated_box(annotation: np.ndarray, margin: int = SCORE_MARGIN) -> tuple[slice, ...] | None:
    """Return the bounding box of the annotated pixels (last two axes), grown by `margin`."""
    ys, xs = np.nonzero(np.any(annotation != 0, axis=tuple(range(annotation.ndim - 2))))
    if ys.size == 0:
        return None
    h, w = annotation.shape[-2:]
    return (
        slice(max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)),
        slice(max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)),
    )


def score_on_annotations(
    bundle: ModelBundle,
    images: Sequence[np.ndarray],
    annotations: Sequence[np.ndarray],
    *,
    device: str = "auto",
    stop: threading.Event | None = None,
) -> dict | None:
    """Object F1 (IoU 0.5) of `bundle`'s labels on the annotated parts of `images`.

    Each plane is predicted on the box around its annotation (plus a margin) as a
    prediction of the whole image sees it: with the whole plane's intensity range (and
    polarity), resized by the factor prediction picks for the whole plane (a
    size-normalised model: :func:`napari_unet.core.predict.object_scale`, the object size
    estimated as ``predict``'s default does), and the model's own prediction settings;
    the counts of every image are summed. Returns None when nothing is annotated, or
    when `stop` is set.
    """
    from napari_unet.core.corrections import partial_f1
    from napari_unet.core.data import Normalisation, find_channel_axis
    from napari_unet.core.device import release_memory, select_device
    from napari_unet.core.norm_sets import choose as choose_statistics
    from napari_unet.core.predict import (
        PredictConfig,
        _back_to_image,
        _predict_2d,
        _Resized,
        _scaled_shape,
        labels_from_output,
        object_scale,
        prepare_image,
    )

    cfg = PredictConfig.for_model(bundle, device=device)
    norm = Normalisation.from_dict(bundle.meta.get("normalisation", {}))
    torch_device = select_device(device)
    bundle.to(torch_device).model.eval()
    tp = fp = fn = 0
    scored = 0
    try:
        for image, annotation in zip(images, annotations, strict=True):
            annotation = np.asarray(annotation)
            image = np.asarray(image)
            axis = find_channel_axis(image.shape, annotation.shape)
            if axis is not None:
                image = np.moveaxis(image, axis, -1)
            # the model prediction of the whole image uses (norm_sets: a retrain of a
            # built-in model, or the built-in one's statistics and weights half-way back)
            whole = prepare_image(image, bundle.in_channels, -1 if axis is not None else None)
            w_lo, w_hi = norm.ranges(whole)
            w_factor = object_scale(bundle, whole, cfg).factor
            chosen, _ = choose_statistics(bundle, whole, w_lo, w_hi, norm, w_factor)
            for index in np.ndindex(*annotation.shape[:-2]):
                if stop is not None and stop.is_set():
                    return None
                ann = annotation[index]
                box = annotated_box(ann)
                if box is None:
                    continue
                plane = prepare_image(
                    image[index], bundle.in_channels, -1 if axis is not None else None
                )
                plane = np.asarray(plane[(slice(None),) + (slice(None),) * 2])
                lo, hi = norm.ranges(plane)
                crop = np.ascontiguousarray(plane[(slice(None),) + box])
                # a size-normalised model sees the crop resized as the whole image would be
                # when predicted: the user sees the model at that scale
                factor = object_scale(bundle, plane, cfg).factor
                src = crop
                if factor != 1:
                    src = _Resized(crop, _scaled_shape(crop.shape[-2:], factor))
                prob = drain(
                    _predict_2d(chosen, src, lo, hi, norm, cfg, torch_device, stop, [0], 0)
                )
                if prob is None:  # stopped
                    return None
                if factor != 1:
                    prob = _back_to_image(prob, crop.shape[-2:])
                labels = labels_from_output(prob, bundle.outputs, cfg, pixel_scale=1 / factor)
                s = partial_f1(labels, ann[box])
                tp, fp, fn = tp + s["tp"], fp + s["fp"], fn + s["fn"]
                scored += 1
    finally:
        bundle.to("cpu")
        release_memory(torch_device)
    if not scored:
        return None
    # nothing to find and nothing found (e.g. only false objects erased, all gone): perfect
    f1 = 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "f1": float(f1), "images": scored}
