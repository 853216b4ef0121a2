"""Training: a generator that yields typed progress and returns the best model.

:func:`iter_train` is the one training loop of napari-unet: the command line,
the Train widget (in a napari ``thread_worker``) and the tests all run it.
It validates its inputs before the first yield, samples augmented patches,
keeps the best model by validation score (written atomically to
``checkpoint_path`` whenever it improves), stops on a time budget, an epoch
count, early stopping, divergence (NaN loss) or when ``stop`` is set, and
returns a :class:`TrainResult` holding the best model.

This module is the loop; what it runs lives beside it: the settings in ``train_config``;
the samples, device, model and schedule a run starts from in ``train_setup``; the losses
and the weight average in ``losses``; the batches in ``batches``; what is held back and
how the model is scored on it in ``validation``; the end-of-training fit of the
prediction settings, with its share of the time budget, in ``final_fit``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.batches import make_batches
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.final_fit import (
    FitPlan,
    FitStopped,
    can_fit,
    fit_prediction_settings,
    fitted_text,
    keep_unfitted,
)
from napari_unet.core.losses import LOSSES, Anchor, WeightAverage, loss_function
from napari_unet.core.progress import drain
from napari_unet.core.train_config import TrainConfig
from napari_unet.core.train_setup import (
    Schedule,
    prepare_data,
    resolve_config,
    start_model,
    training_device,
)
from napari_unet.core.validation import best_text, describe_entry, score_name, validate

if TYPE_CHECKING:  # torch is imported when training starts, not at import
    from napari_unet.core.checkpoint import ModelBundle
    from napari_unet.core.distributed import Distributed

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "iter_train",
    "train",
    "LOSSES",
    "score_name",
]

#: Progress kinds yielded by :func:`iter_train`.
START, STEP, VALIDATION, DONE = "start", "step", "validation", "done"

#: Fewer steps than this (training from scratch) are too few for a useful model: say so.
MIN_USEFUL_STEPS = 100


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


def iter_train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    init: ModelBundle | None = None,
    stop: threading.Event | None = None,
    distributed: Distributed | None = None,
    replay: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
    teacher: ModelBundle | None = None,
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
    replay : sequence of (name, image, labels), optional
        Images of the starting model's own training data with their instance labels,
        replayed while fine-tuning so that it does not forget them: drawn at
        ``config.replay_share`` of the patches, never held back for validation.
    teacher : ModelBundle, optional
        With ``config.distill > 0`` and `replay`: the model whose outputs on the
        replayed patches the fine-tune is pulled towards (default: `init`). It is not
        changed.

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
    data = dict(names=names, init=init, replay=replay, teacher=teacher)
    run = _Trainer(images, labels, config, stop=stop, distributed=distributed, **data)
    yield run.start_report()
    try:
        yield from run.loop()
    finally:
        run.keep_best()
    fit_text, fit_stopped = yield from run.fit_at_end()
    return (yield from run.finish(fit_text, fit_stopped))


def train(images, labels, config: TrainConfig | None = None, **kwargs) -> TrainResult:
    """Run :func:`iter_train` to the end and return its :class:`TrainResult`."""
    return drain(iter_train(images, labels, config, **kwargs))


def _cpu_copy(model) -> dict:
    """Return a copy of the model's weights on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ the run
@dataclass
class _RunState:
    """What changes while a run trains."""

    step: int = 0
    epoch: int = 0
    stopped: str = "epochs"  # why training ended (TrainResult.stopped)
    losses: list[float] = field(default_factory=list)  # since the last validation
    history: list[dict] = field(default_factory=list)  # one entry per validation
    notes: list[str] = field(default_factory=list)
    best_score: float | None = None
    best_state: dict | None = None  # the weights that validated best (a CPU copy)
    safe_state: dict | None = None  # the weights at the last validation (a CPU copy)
    bad_epochs: int = 0  # validations since the best one
    last_val_s: float = 0.0  # seconds the last validation took,
    last_pred_s: float = 0.0  # and of them predicting
    save_error: str | None = None  # why the last write failed (None: the file is the best)
    saved: bool = False  # this run wrote the model file (an older file does not count)


class _Trainer:
    """One run of :func:`iter_train`: its model, optimiser and batches, and the loop."""

    def __init__(
        self, images, labels, config, *, names, init, stop, distributed, replay, teacher=None
    ) -> None:
        from napari_unet.core.device import precision_note

        config, norm = resolve_config(config, init)
        self.config, self.init, self.stop, self.distributed = config, init, stop, distributed
        self.data = data = prepare_data(images, labels, config, norm, names, init, replay)
        self.device, self.precision, self.dev_text = training_device(config, distributed)
        self.bundle, self.start_postprocess, self.history_prev = start_model(
            config, data, norm, init, self.precision
        )
        self._build_optimisation()
        self._build_teacher(teacher)
        self.batches = make_batches(config, data.train, data.n_outputs, self.device, distributed)
        self.sampler = self.batches.sampler
        self.schedule = Schedule.from_config(config, data.train)
        self.ckpt = Path(config.checkpoint_path) if config.checkpoint_path else None
        self.writes_files = distributed is None or distributed.is_main  # rank 0 under torchrun
        self.state = _RunState()
        self.slow = precision_note(config.precision, self.device)
        if self.slow:
            self.state.notes.append(self.slow)
        fits = bool(config.tune_postprocessing and distributed is None and can_fit(data.fit))
        self.fit = FitPlan(fits, data.val, data.fit, self.schedule.budget_s)
        self.state.safe_state = _cpu_copy(self.model)
        self.t0 = time.perf_counter()

    def _build_optimisation(self) -> None:
        """Put the model on the device; make its optimiser, loss and their helpers."""
        import torch

        config, device = self.config, self.device
        self.model = model = self.bundle.model.to(device)
        self.channels_last = (
            config.channels_last if config.channels_last is not None else device.type != "mps"
        )
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.net = model if self.distributed is None else self.distributed.wrap(model)
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        # float16 needs loss scaling; bfloat16 has float32's range and does not
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.precision == "amp" and device.type == "cuda"
        )
        self.ema = WeightAverage(model, config.ema) if config.ema > 0 else None
        fine_tune = config.anchor > 0 and self.init is not None
        self.anchor = Anchor(model, config.anchor) if fine_tune else None
        self.loss_fn = loss_function("bce" if config.loss == "weighted_bce" else config.loss)

    def _build_teacher(self, teacher) -> None:
        """Put a frozen copy of the distillation teacher on the device (or none)."""
        import copy

        import torch

        self.teacher = None
        source = teacher if teacher is not None else self.init
        replayed = any(s.replay for s in self.data.train)
        if self.config.distill <= 0 or source is None or not replayed:
            return
        model = copy.deepcopy(source.model).to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.teacher = model

    def _distill_loss(self, xt, logits):
        """Return the distillation term of this batch, on its replayed patches (or None)."""
        import torch

        from napari_unet.core.device import compute_autocast

        idx = self.sampler.last_indices
        if idx.size != xt.shape[0]:  # drawn elsewhere (worker processes): not known here
            return None
        samples = self.sampler.samples  # under torchrun, this rank's share
        rows = np.nonzero([samples[i].replay for i in idx.tolist()])[0]
        if rows.size == 0:
            return None
        sel = torch.as_tensor(rows, device=xt.device)
        with torch.no_grad(), compute_autocast(self.device, self.precision):
            soft = torch.sigmoid(self.teacher(xt.index_select(0, sel)).float())
        student = logits.index_select(0, sel).float()
        return self.loss_fn(student, soft, torch.ones_like(soft)) * (rows.size / xt.shape[0])

    def progress(
        self, kind: str, *, loss=None, validation=None, message="", fraction=None, elapsed=None
    ) -> TrainProgress:
        """Report the run as it is now (`fraction` defaults to the share of the budget used)."""
        if elapsed is None:
            elapsed = time.perf_counter() - self.t0
        if fraction is None:
            fraction = self.schedule.fraction(elapsed, self.state.step)
        return TrainProgress(
            kind,
            step=self.state.step,
            epoch=self.state.epoch,
            loss=loss,
            validation=validation,
            elapsed=elapsed,
            fraction=fraction,
            device=self.dev_text,
            message=message,
        )

    def start_report(self) -> TrainProgress:
        """Say what trains, what was held back, and on which device."""
        d = self.data
        subset = ""
        if d.n_held_back > len(d.val):
            subset = f" (each validation scores {len(d.val)} of the {d.n_held_back})"
        return TrainProgress(
            START,
            device=self.dev_text,
            message=(
                f"training on {len(d.train)} image(s); {d.text}{subset}"
                f"; {self.schedule.steps_per_epoch} steps per epoch, {self.dev_text}"
                + (f". Note: {self.slow}" if self.slow else "")
            ),
        )

    def loop(self) -> Generator[TrainProgress, None, None]:
        """Train until a stop condition; validate after each epoch and at the end."""
        s = self.state
        while True:
            now = time.perf_counter() - self.t0
            user = self.stop is not None and self.stop.is_set()
            if self.distributed is not None:  # the ranks agree on stopping and on the clock
                user, now = self.distributed.agree_max([user, now])
            if user:
                s.stopped = "user"
                break
            loss = self._step(now)
            if loss is None:
                yield self._after_out_of_memory()
                continue
            if not math.isfinite(loss):
                s.stopped = "diverged"
                yield self.progress(
                    STEP,
                    loss=loss,
                    fraction=1.0,
                    message="the loss became NaN or infinite: training stopped, the last good "
                    "model is kept (try a lower learning rate)",
                )
                break
            yield self.progress(STEP, loss=loss)
            if s.step % self.schedule.steps_per_epoch == 0:
                s.epoch += 1
                entry = self._validate()
                yield self.progress(
                    VALIDATION, loss=loss, validation=entry, message=describe_entry(entry)
                )
                if self.config.patience and self.data.val and s.bad_epochs >= self.config.patience:
                    s.stopped = "early_stopping"
                    break
            ended = self._ended()
            if ended:
                s.stopped = ended
                break
        last_validated = s.history[-1]["step"] if s.history else None
        if s.stopped != "diverged" and s.step and last_validated != s.step:
            entry = self._validate()
            yield self.progress(VALIDATION, validation=entry, message=describe_entry(entry))

    def _step(self, now: float) -> float | None:
        """Take one step; return its loss (None: the device ran out of memory).

        A loss that is not finite is returned without a step: training has diverged.
        """
        import torch

        from napari_unet.core.device import compute_autocast
        from napari_unet.core.errors import is_out_of_memory

        s = self.state
        self.model.train()
        lr = Schedule.learning_rate(self.config.lr, s.step, self.schedule.fraction(now, s.step))
        for g in self.opt.param_groups:
            g["lr"] = lr
        xt, yt, wt = (a.to(self.device, non_blocking=True) for a in self.batches.next())
        if self.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        self.opt.zero_grad(set_to_none=True)
        try:
            with compute_autocast(self.device, self.precision):
                logits = self.net(xt)
            loss = self.loss_fn(logits.float(), yt, wt)
            if self.teacher is not None:
                term = self._distill_loss(xt, logits)
                if term is not None:
                    loss = loss + self.config.distill * term
            if self.anchor is not None:
                loss = loss + self.anchor.penalty()
            lv = float(loss.detach())
            if self.sampler.by_loss > 0:  # harder images are drawn more often
                with torch.no_grad():
                    each = self.loss_fn(logits.detach().float(), yt, wt, per_sample=True)
                self.sampler.report_losses(each.cpu().numpy())
            if self.distributed is not None:  # mean over ranks: a NaN anywhere stops all
                lv = self.distributed.mean(lv)
            if math.isfinite(lv):
                self.scaler.scale(loss).backward()
        except (RuntimeError, MemoryError) as error:  # retried by the loop, tensors freed
            # under torchrun every rank must run the same steps: no retry there
            if self.distributed is not None or not is_out_of_memory(error):
                raise
            return None
        if not math.isfinite(lv):
            return lv
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        s.step += 1
        s.losses.append(lv)
        return lv

    def _after_out_of_memory(self) -> TrainProgress:
        """Free the device; go on with a smaller batch (or patch), cut in this process."""
        from napari_unet.core.device import release_memory

        self.opt.zero_grad(set_to_none=True)
        release_memory(self.device)
        note = self.batches.shrink(self.dev_text)
        self.state.notes.append(note)
        self.bundle.meta["memory_adjustments"] = {
            "batch_size": self.sampler.batch_size,
            "patch_size": self.sampler.patch,
        }
        return self.progress(STEP, message=note)

    def _ended(self) -> str | None:
        """Say why training ends after this step ("epochs", "budget"), or None."""
        s = self.state
        elapsed = time.perf_counter() - self.t0
        epochs, budget_s = self.schedule.epochs, self.schedule.budget_s
        if epochs and s.epoch >= epochs:
            return "epochs"
        # keep time for the last validation (and the fitting of the prediction settings)
        needed = elapsed + s.last_val_s + s.last_pred_s * self.fit.cost
        over = bool(budget_s and needed >= budget_s)
        if self.distributed is not None and budget_s:
            over = bool(self.distributed.agree_max([over])[0])
        return "budget" if over else None

    def _validate(self) -> dict:
        """Validate (the averaged weights, with ``ema``); keep and save the best model."""
        if self.ema is None:
            return self._score()
        with self.ema.swapped_in(self.model):  # the average is validated, kept and saved
            return self._score()

    def _score(self) -> dict:
        """Score the model now; return the history entry (``best`` when it improved)."""
        s, val = self.state, self.data.val
        tv = time.perf_counter()
        train_loss = float(np.mean(s.losses)) if s.losses else None
        entry = {"step": s.step, "epoch": s.epoch, "train_loss": train_loss}
        args = (self.loss_fn, self.device, self.data.n_outputs, self.config.precision)
        if val and self.distributed is not None:  # each rank scores its share; reduced
            entry.update(self.distributed.validate(validate, self.bundle, val, *args))
        elif val:
            entry.update(validate(self.bundle, val, *args))
        else:
            entry["score"] = -train_loss if train_loss is not None else None
        score = entry["score"]
        entry["lr"] = self.opt.param_groups[0]["lr"]
        s.safe_state = _cpu_copy(self.model)
        s.last_val_s = time.perf_counter() - tv
        entry["val_seconds"] = round(s.last_val_s, 2)
        # the fit's cost is counted in predictions of the subset (bench/fit_cost.py's
        # unit), not in validations, which also score the predictions
        pred_s = entry.get("predict_seconds")  # not reduced under torchrun (no fit there)
        s.last_pred_s = s.last_val_s if pred_s is None else float(pred_s)
        if pred_s is not None:
            entry["predict_seconds"] = round(s.last_pred_s, 2)
        self.fit.update(s.last_pred_s)
        entry["elapsed"] = time.perf_counter() - self.t0
        s.history.append(entry)
        s.losses.clear()
        improved = score is not None and (s.best_score is None or score > s.best_score)
        if not improved:
            s.bad_epochs += 1
            return entry
        s.best_score = score
        s.best_state = _cpu_copy(self.model)
        s.bad_epochs = 0
        entry["best"] = True
        if self.ckpt is not None and self.writes_files:
            self.bundle.meta["history"] = self.history_prev + s.history
            if not self._save():
                entry["not_saved"] = s.save_error
        return entry

    def _save(self) -> bool:
        """Write the model file; a full disk is noted, training goes on."""
        from napari_unet.core.checkpoint import save_checkpoint

        s = self.state
        try:
            save_checkpoint(self.bundle, self.ckpt)
        except NapariUnetError as error:
            if s.save_error is None:
                s.notes.append(f"could not save the model: {error}")
            s.save_error = str(error)
            return False
        s.save_error = None
        s.saved = True
        return True

    def keep_best(self) -> None:
        """Stop the batch workers; leave the best weights (the last good ones) in the model."""
        import torch

        s = self.state
        self.batches.close()
        self.teacher = None  # its device memory is released with the run's
        if s.best_state is not None:
            self.model.load_state_dict(s.best_state)
        elif s.stopped == "diverged":
            self.model.load_state_dict(s.safe_state)
        self.model.eval()
        self.model.to(memory_format=torch.contiguous_format)

    def fit_at_end(self) -> Generator[TrainProgress, None, tuple[str, bool]]:
        """Keep the better of the best and the final weights; fit the prediction settings.

        Returns the end of the last message and whether the user stopped the fit.
        """
        s, plan, budget_s = self.state, self.fit, self.schedule.budget_s
        if not (
            plan.enabled and s.best_state is not None and s.stopped not in ("user", "diverged")
        ):
            return "", False
        tv = time.perf_counter()
        # the final weights (safe_state, copied at the last validation) against the best
        # on the validation subset, chosen on all held-back images; no choice when the
        # final ones are the best, or when the fit uses the validation subset itself
        last_best = bool(s.history and s.history[-1].get("best")) or plan.is_subset
        yield self.progress(STEP, fraction=1.0, message=plan.message(not last_best))
        try:
            tuned = fit_prediction_settings(
                self.bundle,
                plan.images,
                self.device,
                None if last_best else s.safe_state,
                self.stop,
                deadline=self.t0 + budget_s if budget_s else None,
                precision=self.config.precision,
            )
        except FitStopped:
            return "", True
        tuned["seconds"] = round(time.perf_counter() - tv, 1)
        self.bundle.meta["postprocess"] = tuned
        return fitted_text(tuned), False

    def finish(
        self, fit_text: str, fit_stopped: bool
    ) -> Generator[TrainProgress, None, TrainResult]:
        """Complete the model's metadata, write it, report and return the result."""
        from napari_unet.core.device import release_memory

        s, meta = self.state, self.bundle.meta
        if self.init is None and s.stopped == "budget" and s.step < MIN_USEFUL_STEPS:
            s.notes.append(
                f"only {s.step} training steps fitted in the time allowed: too few for a useful "
                f"model (a few hundred at least; allow more minutes, or use a GPU)"
            )
        if "postprocess" not in meta:
            why = "user" if fit_stopped else s.stopped
            fit_text += keep_unfitted(meta, self.start_postprocess, self.fit.enabled, why)
        meta["history"] = self.history_prev + s.history
        meta["device"] = self.dev_text
        meta["steps"] = int(meta.get("steps", 0)) + s.step
        if self.ckpt is not None and s.best_state is not None and self.writes_files:
            self._save()
        self.bundle.to("cpu")
        release_memory(self.device)
        elapsed = time.perf_counter() - self.t0
        yield self.progress(
            DONE,
            fraction=1.0,
            elapsed=elapsed,
            message=f"stopped ({s.stopped}) after {s.step} steps in {elapsed:.0f} s; "
            + best_text(s.history, s.best_score)
            + fit_text,
        )
        written = self.ckpt is not None and s.saved and s.save_error is None
        return TrainResult(
            bundle=self.bundle,
            history=s.history,
            best_score=s.best_score,
            stopped=s.stopped,
            checkpoint=self.ckpt if written else None,
            device=self.dev_text,
            steps=s.step,
            notes=s.notes,
            save_error=s.save_error,
        )
