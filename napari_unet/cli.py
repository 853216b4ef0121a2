"""The ``napari-unet`` command line: train, predict, split, evaluate, measure, exports, demo.

Every sub-command calls the same core functions as the napari widgets. Problems
the user can fix are reported as one line on stderr with a non-zero exit
(2 for bad input, 1 for an internal error, 130 when interrupted); ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from napari_unet import __version__
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.options import DEVICE_CHOICES, PRECISIONS, SPLIT_METHODS
from napari_unet.core.progress import drain

if TYPE_CHECKING:
    from napari_unet.core.split_config import SplitConfig
    from napari_unet.core.train import TrainConfig


class _Progress:
    """A small progress line on stderr (redrawn in place on a terminal)."""

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = 0.0

    def update(self, fraction: float, text: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.2 if self.tty else 15.0):
            return
        self.last = now
        n = int(round(30 * min(max(fraction, 0.0), 1.0)))
        line = f"{self.label} [{'#' * n}{'.' * (30 - n)}] {100 * fraction:5.1f}% {text}"
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, text: str = "") -> None:
        self.update(1.0, text, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _read_ids(path: str | None) -> set[str] | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise NapariUnetError(f"ids file {p} does not exist.")
    try:
        text = p.read_text(encoding="utf-8")
    except PermissionError as exc:
        raise NapariUnetError(
            f"cannot read the ids file {p}: permission denied; make it readable (chmod u+r)."
        ) from exc
    except UnicodeDecodeError as exc:
        raise NapariUnetError(
            f"ids file {p} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
            "plain UTF-8 text, one image name per line."
        ) from exc
    ids = {line.strip() for line in text.splitlines()}
    ids.discard("")
    if not ids:
        raise NapariUnetError(f"ids file {p} lists no ids.")
    return ids


def _select(files: list[Path], ids: set[str] | None, what: str) -> list[Path]:
    if ids is None:
        return files
    chosen = [f for f in files if f.stem in ids]
    if not chosen:
        raise NapariUnetError(f"None of the {what} matches the ids in the ids file.")
    return chosen


def _channel_axis_option(option: str) -> str:
    """Check ``--channel-axis``: 'auto', 'none' or a whole number (negative counts from the end)."""
    if option in ("auto", "none"):
        return option
    try:
        int(option)
    except ValueError:
        raise NapariUnetError(
            f"--channel-axis must be 'auto', 'none' or an axis number such as -1 or 0, got "
            f"{option!r}."
        ) from None
    return option


def _auto_channel_axis(
    shape: tuple[int, ...], in_channels: int, option: str, file_axes: str | None = None
) -> int | None:
    """Channel axis of an image file for a model with ``in_channels``.

    ``--channel-axis`` when given; else the file's own axes (``C``, or ``S`` for the
    samples of an RGB TIFF; ImageJ hyperstacks and OME-TIFF say them), else a guess from
    its shape: both by :func:`napari_unet.core.data.guess_channel_axis`, as the widgets
    decide. A stack of planes is read as the file stores them (:func:`_stack_note` says
    so where it may not be).
    """
    from napari_unet.core.data import guess_channel_axis

    if option == "auto":
        return guess_channel_axis(shape, in_channels, axes=file_axes)
    if option == "none":
        return None
    axis = int(option)
    if not -len(shape) <= axis < len(shape):
        raise NapariUnetError(f"--channel-axis {axis} does not exist in an image of shape {shape}.")
    return axis


def _stack_note(
    name: str, shape: tuple[int, ...], file_axes: str | None, what: str, predicting: bool = True
) -> str | None:
    """Return a note saying how a 3D image without axes was read, where that is unclear.

    Such an image is read as the file stores it: planes along the first axis (Fiji shows
    the same). That is the likely reading when the first axis is the shortest; otherwise
    (a 64 x 64 x 300 array saved as it is) the note says what was assumed and how to say
    otherwise (``predict --channel-axis``, or saving the file with its axes).
    """
    if len(shape) != 3 or file_axes is not None or shape[0] < min(shape[1:]):
        return None
    save = "save the stack with its axes (ImageJ or OME-TIFF)"
    otherwise = (
        f"If its last axis holds channels, pass --channel-axis -1; if it holds the planes, {save}."
        if predicting
        else f"If its last axis holds the planes or channels, {save}."
    )
    return (
        f"note: {name} {shape} does not say what its axes are: {what} as {shape[0]} planes of "
        f"{shape[1]} x {shape[2]} pixels, as the file stores them (Fiji shows the same). "
        + otherwise
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, SLURM) outside training: stop as Ctrl-C does."""


def _terminate(signum, frame) -> None:
    raise _Terminated


class _StopOnSigint:
    """First Ctrl-C (or SIGTERM) asks the work to stop cleanly; a second one interrupts at once.

    Under torchrun (``distributed=True``) SIGINT and SIGTERM both ask for a clean
    stop and never interrupt: a Ctrl-C reaches each worker twice (from the
    terminal and from torchrun), and SLURM ends jobs with SIGTERM; all ranks then
    agree to stop at the same step and rank 0 saves the best model.
    """

    def __init__(self, distributed: bool = False) -> None:
        self.event = threading.Event()
        self.distributed = distributed
        self._old: dict = {}

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            # SIGTERM (timeout, kill, SLURM) stops as Ctrl-C does: the best model is kept
            # and the lock file removed
            sigs = [signal.SIGINT, signal.SIGTERM]
            for sig in sigs:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self.event

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            if self.distributed:
                return
            raise KeyboardInterrupt
        self.event.set()
        if self.distributed:
            _info("\nstopping after the current step on every rank...")
        else:
            _info("\nstopping after the current step (Ctrl-C again to abort)...")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _readable_folder(text: str) -> None:
    """Refuse a folder that cannot be listed (e.g. chmod 000), saying what to do."""
    import os

    p = Path(text).expanduser()
    if p.is_dir() and not os.access(p, os.R_OK | os.X_OK):
        raise NapariUnetError(
            f"cannot read the folder {p}: permission denied; make it readable (chmod u+rx)."
        )


def _non_utf8_note(names: list[str]) -> None:
    """Say which names a CSV holds with byte escapes (file names that are not UTF-8)."""
    from napari_unet.core.io import text_name

    odd = [n for n in names if text_name(n) != n]
    if odd:
        _info(
            f"note: {len(odd)} file name(s) are not valid UTF-8 text, e.g. {text_name(odd[0])}; "
            "the CSV names them with \\xNN escapes for the bytes that are not"
        )


def _refuse_existing(targets: list[Path], out: Path, overwrite: bool) -> None:
    """Raise before writing anything if an output file exists and overwriting is off."""
    if overwrite:
        return
    clash = [t for t in targets if t.exists()]
    if clash:
        raise NapariUnetError(
            f"{len(clash)} output file(s) exist already in {out} (e.g. {clash[0].name}); "
            "pass --overwrite or choose another --out."
        )


def _check_targets(files: list[Path], targets: list[Path]) -> None:
    """Refuse two inputs that would write one output, and an output over an input.

    `files` and `targets` are parallel lists; a file with several outputs appears once
    per output.
    """
    from napari_unet.core.io import resolved

    inputs = {resolved(f) for f in files}
    seen: dict[Path, Path] = {}
    for f, t in zip(files, targets, strict=True):
        key = resolved(t)
        if key in inputs:
            raise NapariUnetError(
                f"the output {t} would replace the input {t.name}: choose another --out."
            )
        if key in seen and seen[key] != f:
            raise NapariUnetError(
                f"{seen[key].name} and {f.name} would both be written to {t.name}; rename one "
                "of them or write them to different folders."
            )
        seen[key] = f


def _validate_as_options(config, args: argparse.Namespace, extra=None) -> None:
    """``config.validate()`` (and ``extra(config)``), naming the option a value came from.

    A value from a config file (or a model's own settings) keeps its setting's name.
    """
    try:
        config.validate()
        if extra is not None:
            extra(config)
    except NapariUnetError as exc:
        field, rest = (str(exc).split(" ", 1) + [""])[:2]
        if field.isidentifier() and getattr(args, field, None) is not None:
            raise NapariUnetError(f"--{field.replace('_', '-')} {rest}") from None
        raise


_FLOAT32_MAX = 3.4028234663852886e38
#: Largest values of training settings that TrainConfig.validate leaves open: beyond
#: them a run can only exhaust memory (patch, batch, width) or overflow (learning rate).
_TRAIN_LIMITS = {
    "patch_size": (4096, " pixels"),
    "batch_size": (1024, ""),
    "base_channels": (256, ""),
}


def _train_limits(cfg) -> None:
    """Refuse training settings that cannot work, beyond ``TrainConfig.validate``."""
    import math

    for name, (top, unit) in _TRAIN_LIMITS.items():
        value = getattr(cfg, name, None)
        if value is not None and value > top:
            raise NapariUnetError(f"{name} must be at most {top}{unit}, got {value}.")
    weight = getattr(cfg, "border_weight", 0.0)
    if not (math.isfinite(weight) and 0 <= weight <= 100):
        raise NapariUnetError(f"border_weight must be between 0 (off) and 100, got {weight}.")
    if cfg.lr > _FLOAT32_MAX:  # torch cannot even apply it to 32-bit weights
        raise NapariUnetError(
            f"lr must be a number that 32-bit floats hold (at most {_FLOAT32_MAX:.3g}; usual "
            f"learning rates are 1e-4 to 1e-2), got {cfg.lr:g}."
        )


from napari_unet.core.measure import AXES, MEASUREMENTS_CSV  # noqa: E402 - numpy only

#: The choices of --precision (standard library only: the CLI starts without numpy)
PRECISION_CHOICES = PRECISIONS
PRECISION_HELP = (
    "compute precision on the CPU: auto (default) uses bfloat16 where the CPU computes it "
    "natively (AMX or AVX-512 BF16: 2-3x faster), else float32; bf16 forces it (emulated, "
    "slower, elsewhere); fp32 never. GPUs ignore it. Also NAPARI_UNET_PRECISION=fp32|bf16 "
    "decides what auto means"
)


# ---------------------------------------------------------------- train
def _config_from_json(path: str) -> TrainConfig:
    """Read a ``train_config.json``: :meth:`TrainConfig.from_dict` checks its settings.

    Keys starting with ``_`` are comments; ``checkpoint_path`` is ignored (``--out``
    decides where the model goes).
    """
    from napari_unet.core.train import TrainConfig

    p = Path(path)
    if not p.is_file():
        raise NapariUnetError(f"config file {p} does not exist.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NapariUnetError(f"config file {p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise NapariUnetError(f"config file {p} must hold a JSON object of training settings.")
    data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" etc.
    try:
        cfg = TrainConfig.from_dict(data)
    except NapariUnetError as exc:
        raise NapariUnetError(f"config file {p}: {exc}") from exc
    cfg.checkpoint_path = None  # --out decides where the model goes
    return cfg


def _train_locked(
    args: argparse.Namespace, out: Path, resume: Path | None, pairs: list, distributed=None
):
    """Read the (image, labels) pairs and train; the caller holds the lock on ``out``."""
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.io import image_axes, read_image, read_labels
    from napari_unet.core.train import TrainConfig, iter_train

    init = load_checkpoint(resume) if resume else None
    if init is not None:
        ignored = [
            f"--{name.replace('_', '-')} {value}"
            for name, value in (("depth", args.depth), ("base_channels", args.base_channels))
            if value is not None and value != getattr(init.spec, name)
        ]
        if ignored:
            _info(
                f"note: {', '.join(ignored)} ignored: --resume continues {resume.name} with its "
                f"own architecture (depth {init.spec.depth}, base channels "
                f"{init.spec.base_channels})"
            )
    cfg = _config_from_json(args.config) if args.config else TrainConfig()
    if args.epochs is not None:  # a budget given here replaces the config file's
        cfg.minutes = None
    if args.minutes is not None:
        cfg.epochs = None
    overrides = {
        "epochs": args.epochs,
        "minutes": args.minutes,
        "patch_size": args.patch_size,
        "batch_size": args.batch_size,
        "depth": args.depth,
        "base_channels": args.base_channels,
        "loss": args.loss,
        "targets": args.targets,
        "border_weight": args.border_weight,
        "lr": args.lr,
        "val_fraction": args.val_fraction,
        "patience": args.patience,
        "device": args.device,
        "precision": args.precision,
        "seed": args.seed,
        "steps_per_epoch": args.steps_per_epoch,
        "polarity": args.polarity,
        "sample_by_loss": args.sample_by_loss,
        "interface_weight": args.interface_weight,
        "contact_gap": args.contact_gap,
        "zoom": args.zoom,
        "ema": args.ema,
        "workers": args.workers,
    }
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    if args.sparse:
        cfg.sparse = True
    if args.style_augment:
        cfg.style_augment = True
    if args.object_diameter is not None:  # 0: images at their own size
        cfg.object_diameter = args.object_diameter or None
    _validate_as_options(cfg, args, _train_limits)  # before reading the images
    cfg.checkpoint_path = str(out)
    imgs, labs, names = [], [], []
    for ip, lp in pairs:
        imgs.append(read_image(ip))
        labs.append(read_labels(lp))
        names.append(ip.stem)
        if imgs[-1].shape == labs[-1].shape:
            note = _stack_note(ip.name, imgs[-1].shape, image_axes(ip)[0], "trained", False)
            if note:
                _info(note)
    bar = _Progress("train")
    main_rank = distributed is None or distributed.is_main

    def show(p):
        if not main_rank:  # other ranks report only how they ended
            if p.kind == "done":
                _info(f"[rank {distributed.rank}] {p.message}")
            return
        if p.kind == "start" or p.kind == "done":
            _info(p.message)
        elif p.kind == "validation":
            bar.update(p.fraction, "", force=True)
            _info("  " + p.message)
        elif p.message:  # e.g. out of memory (retried smaller) or a diverged loss: say so
            bar.update(p.fraction, "", force=True)
            _info("  note: " + p.message)
        else:
            bar.update(p.fraction, f"epoch {p.epoch} step {p.step} loss {p.loss:.4f}")

    with _StopOnSigint(distributed=distributed is not None) as stop:
        gen = iter_train(
            imgs, labs, cfg, names=names, init=init, stop=stop, distributed=distributed
        )
        return drain(gen, show)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model: ``napari-unet train``."""
    from napari_unet.core.builtin import check_not_builtin, resolve_model
    from napari_unet.core.distributed import Distributed
    from napari_unet.core.io import (
        check_writable_folder,
        file_lock,
        list_image_files,
        pair_images_and_labels,
        resolved,
    )

    distributed = Distributed.from_env()  # set when started by torchrun
    out = Path(args.out)
    check_not_builtin(out)  # a built-in model is never overwritten: fine-tune into a copy
    # a built-in model's name, else a path (that may not exist yet with --out equal to it)
    resume = resolve_model(args.resume, must_exist=False) if args.resume else None
    if resume is not None and not resume.exists() and resolved(resume) == resolved(out):
        # "--resume X --out X": continue from X after a restart, or start fresh the first time
        _info(f"note: {out} does not exist yet: training from scratch")
        resume = None
    elif resume is not None:
        resume = resolve_model(args.resume)  # neither a file nor a built-in name: say so
    if args.config:
        _config_from_json(args.config)  # bad settings: refuse before reading images
    if out.is_dir():
        raise NapariUnetError(
            f"--out {out} is a folder: give the model file to write, e.g. {out / 'model.pt'}."
        )
    if (
        out.exists()
        and not args.overwrite
        and (resume is None or resolved(resume) != resolved(out))
    ):
        raise NapariUnetError(
            f"{out} exists; pass --overwrite to replace it, or choose another --out."
        )
    check_writable_folder(out.parent)  # before reading and training, not after
    ids = _read_ids(args.ids_file)
    images = _select(list_image_files(args.images), ids, "images")
    labels = list_image_files(args.labels)
    if resolved(out) in {resolved(p) for p in images + labels}:
        raise NapariUnetError(
            f"--out {out} is one of the training images or label files: the model would "
            "replace it. Choose another name, e.g. model.pt."
        )
    pairs, missing = pair_images_and_labels(images, labels)
    if missing:
        _info(
            f"note: {len(missing)} image(s) have no labels and are skipped, e.g. {missing[0].name}"
        )
    if distributed is not None and not distributed.is_main:
        try:  # rank 0 holds the lock and writes the model
            result = _train_locked(args, out, resume, pairs, distributed)
        finally:
            distributed.close()
        return 0
    try:
        with file_lock(out, note=_info):  # a second run writing the same file is refused
            result = _train_locked(args, out, resume, pairs, distributed)
    finally:
        if distributed is not None:
            distributed.close()
    for note in result.notes:
        _info(f"note: {note}")
    if result.save_error is not None:
        raise NapariUnetError(f"the trained model could not be saved: {result.save_error}")
    if result.checkpoint is None:
        why = {"user": "it was stopped", "diverged": "the loss became NaN or infinite"}.get(
            result.stopped, f"it ended ({result.stopped})"
        )
        kept = f"; {out} was left as it was" if out.exists() else ""
        raise NapariUnetError(
            f"no model was saved: {why} after {result.steps} step(s), before a model could "
            f"be kept{kept}."
        )
    _info(f"best model ({result.stopped}, score {result.best_score}) saved to {result.checkpoint}")
    return 0


# ---------------------------------------------------------------- predict
def _diameter_option(option: str, *, name: str = "--diameter") -> float | str | None:
    """Check ``--diameter``: 'auto', 'off' (None) or a number of pixels above 0."""
    import math

    text = str(option).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise NapariUnetError(
            f"{name} must be 'auto', 'off' or an object diameter in pixels above 0 (e.g. 30), "
            f"got {option!r}."
        )
    return value


def _scales_text(scales: list) -> str:
    """' (object diameter ...)' for the summary line from the images' ObjectScale."""
    used = [s for s in scales if s.diameter is not None and s.factor != 1]
    if not scales:
        return ""
    if not used:
        notes = {s.note for s in scales if s.note}
        given = [s for s in scales if s.diameter is not None]
        if given and given[0].model_diameter is not None:  # within 10 %: not resized
            return f"; object diameter {_range(s.diameter for s in given)} px: not resized"
        return f"; {sorted(notes)[0]}" if len(notes) == 1 else ""
    how = "estimated" if all(s.estimated for s in used) else "given"
    text = (
        f"; object diameter {how} {_range(s.diameter for s in used)} px, resized "
        f"x{_range((s.factor for s in used), '.2g')} to the model's "
        f"{used[0].model_diameter:g} px"
    )
    if len(used) < len(scales):
        text += f" ({len(scales) - len(used)} image(s) at their own size)"
    return text


def _range(values, fmt: str = ".0f") -> str:
    values = sorted(values)
    lo, hi = format(values[0], fmt), format(values[-1], fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict label images: ``napari-unet predict``."""
    import numpy as np

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.dask_predict import is_zarr_path
    from napari_unet.core.io import (
        _stem,
        check_writable_folder,
        image_axes,
        list_image_files,
        read_image,
        staged_outputs,
        write_labels_tiff,
    )
    from napari_unet.core.predict import PredictConfig, fitted_keys, iter_predict, settings_text

    if args.block_size is not None and args.block_size < 16:
        raise NapariUnetError(f"--block-size must be at least 16 pixels, got {args.block_size}.")
    if args.block_margin is not None and args.block_margin < 1:
        raise NapariUnetError(f"--block-margin must be at least 1 pixel, got {args.block_margin}.")
    from napari_unet.core.builtin import builtin_entry, resolve_model

    model_file = resolve_model(args.model)  # a built-in model's name, or a file
    bundle = load_checkpoint(model_file, device="cpu")
    builtin = builtin_entry(model_file)
    if builtin is not None:
        _info(f"model: the built-in model {builtin.name!r} ({builtin.title})")
    _readable_folder(args.images)
    zarr_input = is_zarr_path(args.images)
    if zarr_input:
        if args.ids_file:
            raise NapariUnetError(
                "--ids-file picks files in a folder; it does not apply to a zarr image."
            )
        files = [Path(args.images)]
    else:
        files = _select(list_image_files(args.images), _read_ids(args.ids_file), "images")
    out = check_writable_folder(args.out)  # the folder is made at the first write
    given = {
        k: getattr(args, k)
        for k in (
            "tile_size",
            "overlap",
            "batch_size",
            "threshold",
            "split_method",
            "min_distance",
            "h",
            "boundary_threshold",
            "min_size",
            "device",
            "precision",
        )
        if getattr(args, k) is not None
    }
    if given.get("h") is not None and given["h"] <= 0:  # "--h 0": markers by --min-distance
        if given["h"] < 0:
            raise NapariUnetError(f"--h must be 0 (off) or positive, got {given['h']}.")
        given["h"] = None
    # the model's fitted threshold and split depth, unless given here
    cfg = PredictConfig.for_model(
        bundle,
        split=not args.no_split,
        flips=args.flips,
        diameter=_diameter_option(args.diameter),
        **given,
    )
    _validate_as_options(cfg, args)
    if args.overlap is not None and args.overlap >= cfg.tile_size:
        raise NapariUnetError(
            f"--overlap must be less than the tile size ({cfg.tile_size} pixels), got "
            f"{args.overlap}; {cfg.tile_size // 8} to {cfg.tile_size // 4} is usual."
        )
    _channel_axis_option(args.channel_axis)
    if fitted_keys(cfg.to_dict(), bundle.meta):
        _info(settings_text(cfg.to_dict(), bundle.meta))
    if args.measure and (zarr_input or args.scheduler):
        raise NapariUnetError(
            "--measure is not available with --scheduler or zarr input: run "
            "`napari-unet measure --labels OUT --images IMAGES --out table.csv` afterwards."
        )
    if not args.measure and (args.pixel_size is not None or args.unit):
        raise NapariUnetError(
            "--pixel-size and --unit go with --measure (the voxel size of a z-stack is "
            "--voxel-size Z Y X)."
        )
    _pixel_size_option(args)
    said = _precision_info(cfg)
    if zarr_input or args.scheduler:
        with _dask_scheduler(args.scheduler) as scheduler:
            if zarr_input:
                return _predict_zarr(args, bundle, files[0], out, cfg, scheduler)
            return _predict_files_dask(args, bundle, files, out, cfg, scheduler)
    targets = [out / f"{_stem(f)}.tif" for f in files]  # x.ome.tif -> x.tif (not OME)
    probabilities = [out / f"{_stem(f)}_probabilities.tif" for f in files]
    if args.save_probabilities:  # a.png's probabilities and a_probabilities.png's labels
        _check_targets(files + files, targets + probabilities)
    else:
        _check_targets(files, targets)
    csv_path = out / MEASUREMENTS_CSV if args.measure else None
    _refuse_existing(
        targets
        + (probabilities if args.save_probabilities else [])
        + ([csv_path] if csv_path else []),
        out,
        args.overwrite,
    )
    tables: list[tuple[str, dict]] = []
    scales = []  # how each image was resized for the model's object size
    bar = _Progress("predict")
    t0 = time.perf_counter()
    # the outputs appear together when every image is done (or the run was stopped: the
    # finished ones), never half of them after an error that a rerun would trip over
    with _StopOnSigint() as stop, staged_outputs(out) as stage:
        for i, (f, target) in enumerate(zip(files, targets, strict=True)):
            img = read_image(f)
            file_axes, n_series = image_axes(f)
            ax = _auto_channel_axis(img.shape, bundle.in_channels, args.channel_axis, file_axes)
            if n_series > 1:
                _info(f"note: {f.name} holds {n_series} images (series); the first is predicted")
            if args.channel_axis == "auto" and ax is None:
                note = _stack_note(f.name, img.shape, file_axes, "predicted")
                if note:
                    _info(note)
            if args.channel_axis == "auto" and ax is not None and img.ndim >= 3:
                said = f"the file's axes {file_axes}" if file_axes and "C" in file_axes else ""
                if said or ax == 0 or img.shape[ax] not in (1, 3, 4):
                    _info(
                        f"note: {f.name} {img.shape} is read with {img.shape[ax]} channels on "
                        f"axis {ax % img.ndim}"
                        + (f" ({said})" if said else "")
                        + "; pass --channel-axis none if it is a stack of grey images"
                    )

            def show(p, i=i, f=f):
                frac = (i + (p.done / p.total if p.total else 0)) / len(files)
                bar.update(frac, f"{i + 1}/{len(files)} {f.name}")

            stack_axes, voxel, calibration = _stack_geometry(f, img.ndim, ax, file_axes, args)
            res = drain(
                iter_predict(
                    bundle,
                    img,
                    channel_axis=ax,
                    config=cfg,
                    stop=stop,
                    axes=stack_axes,
                    voxel_size=voxel,
                ),
                show,
            )
            if res is None:
                _info(f"\nstopped: {i} of {len(files)} images were written to {out}")
                return 130
            scales.append(res.scale)
            for note in res.notes:
                if note != said:  # said once above
                    _info(f"\nnote: {f.name}: {note}")
            write_labels_tiff(
                stage(target),
                res.labels,
                overwrite=True,
                axes=res.settings["axes"] if res.labels.ndim > 2 else None,
                **calibration,
            )
            if csv_path is not None:
                tables.append(
                    _measure_file(
                        stage(target), f, args, labels=res.labels, image=img, channel_axis=ax
                    )
                )
            if args.save_probabilities:
                import tifffile

                from napari_unet.core.io import atomic_write

                stack = np.stack([res.probabilities[k] for k in bundle.outputs])
                with atomic_write(stage(probabilities[i])) as tmp:
                    tifffile.imwrite(
                        tmp,
                        stack.astype(np.float32),
                        compression="zlib",
                        metadata={"outputs": bundle.outputs},
                    )
        if csv_path is not None:
            from napari_unet.core.measure import write_measurements_csv

            _non_utf8_note([name for name, _ in tables])
            _, rows = write_measurements_csv(stage(csv_path), tables, overwrite=True)
    bar.done(f"{len(files)} images in {time.perf_counter() - t0:.1f} s")
    _info(f"wrote {len(files)} label image(s) to {out}{_scales_text(scales)}")
    if csv_path is not None:
        _info(f"measured {rows} object(s): {csv_path}")
    return 0


def _stack_geometry(
    f: Path, ndim: int, channel_axis: int | None, file_axes: str | None, args
) -> tuple[str | None, tuple[float, float, float] | None, dict]:
    """Return the axes and voxel size to predict an image with, and its labels' calibration.

    Axes: ``--axes``, else the file's axes without its channel axis (an ImageJ hyperstack
    or OME-TIFF says them), else None (:func:`~napari_unet.core.options.resolve_axes`
    guesses by the number of axes). The voxel size of a z-stack: ``--voxel-size``, else the
    file's (an ImageJ stack's spacing and pixel size). The calibration (``pixel_size`` and
    ``unit`` for :func:`~napari_unet.core.io.write_labels_tiff`) is the file's, so the label
    image opens in Fiji with the image's pixel (or voxel) size.
    """
    from napari_unet.core.io import read_calibration
    from napari_unet.core.options import STACK_AXES, resolve_axes

    n = ndim - (channel_axis is not None)
    if args.axes != "auto":
        axes = args.axes
    else:
        axes = None
        if file_axes and len(file_axes) == ndim:
            kept = "".join(
                a
                for i, a in enumerate(file_axes)
                if channel_axis is None or i != channel_axis % ndim
            )
            if kept in STACK_AXES:
                axes = kept
    axes = resolve_axes(axes, n)  # a clear message when --axes does not fit
    _, size, unit = read_calibration(f)
    calibration = {} if size is None else {"pixel_size": size, "unit": unit or "um"}
    if "Z" not in axes:
        if size is not None and len(size) == 3:
            calibration["pixel_size"] = size[-2:]
        return axes, None, calibration
    if args.voxel_size is not None:
        voxel = tuple(float(v) for v in args.voxel_size)
        calibration["pixel_size"] = voxel
        calibration.setdefault("unit", "um")
    elif size is not None and len(size) == 3:
        voxel = tuple(float(v) for v in size)
    else:
        voxel = None
    return axes, voxel, calibration


def _precision_info(cfg) -> str | None:
    """Say once when the CPU predicts in bfloat16, or why the precision asked is slow here.

    Returns the warning said (iter_predict repeats it in each image's notes), or None.
    """
    from napari_unet.core.device import (
        describe_device,
        precision_note,
        resolve_precision,
        select_device,
    )

    device = select_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    note = precision_note(cfg.precision, device)
    if note:
        _info(f"note: {note}")
    elif precision == "bf16":
        _info(
            f"predicting on {describe_device(device, precision)} (this CPU computes "
            "bfloat16 natively; --precision fp32 switches it off)"
        )
    return note


class _dask_scheduler:
    """Connect to a ``dask.distributed`` scheduler by address, or use dask's local threads."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.client = None

    def __enter__(self) -> str | None:
        if not self.address:
            return "threads"
        try:
            from distributed import Client
        except ImportError as exc:
            raise NapariUnetError(
                "--scheduler needs dask.distributed: pip install distributed"
            ) from exc
        try:
            self.client = Client(self.address, timeout="10s")
        except OSError as exc:
            raise NapariUnetError(
                f"cannot reach the dask scheduler at {self.address}: {exc}"
            ) from exc
        _info(f"dask: connected to {self.address} ({self.client.dashboard_link})")
        return None  # the client is now the default scheduler

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()


def _zarr_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "image"
    return name


def _predict_zarr(args, bundle, path: Path, out: Path, cfg, scheduler) -> int:
    """Predict one zarr / OME-Zarr image as dask tasks into ``out/<name>.zarr``."""
    from napari_unet.core.dask_predict import open_zarr_image, predict_to_zarr

    arr, ome_channel = open_zarr_image(path)
    if args.channel_axis == "auto":
        ax = ome_channel
        if ax is None:
            ax = _auto_channel_axis(tuple(arr.shape), bundle.in_channels, "auto")
    else:
        ax = _auto_channel_axis(tuple(arr.shape), bundle.in_channels, args.channel_axis)
    spatial = arr.ndim - (ax is not None)
    if spatial >= 3 and args.axes not in ("YX", "TYX"):
        _info(
            f"note: {path.name} has {spatial} axes: zarr input is labelled plane by plane (2D "
            "objects); for one object per nucleus in 3D predict it as a TIFF, or in napari"
        )
    target = out / f"{_zarr_name(path)}.zarr"
    _refuse_existing([target], out, args.overwrite)
    summary = predict_to_zarr(
        bundle,
        arr,
        target,
        channel_axis=ax,
        config=cfg,
        block_size=args.block_size or 1024,
        margin=args.block_margin or 128,
        overwrite=args.overwrite,
        scheduler=scheduler,
        progress=_info,
    )
    if summary.n_cut:
        _info(
            f"warning: {summary.n_cut} clump(s) of objects are wider than --block-margin "
            f"({args.block_margin or 128}) and may be cut at block borders; raise --block-margin"
        )
    _info(
        f"{path} {tuple(arr.shape)} {arr.dtype} (channel axis {ax}): wrote {summary.n_objects} "
        f"objects ({summary.n_blocks} blocks, {summary.seconds:.1f} s) to {target} "
        f"(arrays 'labels' and 'probabilities'){_scales_text([summary.scale])}"
    )
    return 0


def _predict_files_dask(args, bundle, files: list[Path], out: Path, cfg, scheduler) -> int:
    """Predict a folder of images as dask tasks, one per image."""
    from functools import partial

    from napari_unet.core.dask_predict import predict_files_dask

    if args.save_probabilities:
        raise NapariUnetError("--save-probabilities is not available with --scheduler.")
    targets = [out / f"{f.stem}.tif" for f in files]
    _check_targets(files, targets)
    _refuse_existing(targets, out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written = predict_files_dask(
        bundle,
        files,
        targets,
        channel_axis=partial(
            _auto_channel_axis, in_channels=bundle.in_channels, option=args.channel_axis
        ),
        config=cfg,
        scheduler=scheduler,
    )
    _info(
        f"wrote {len(written)} label image(s) to {out} in {time.perf_counter() - t0:.1f} s "
        "(dask tasks)"
    )
    return 0


# ---------------------------------------------------------------- split
def cmd_split(args: argparse.Namespace) -> int:
    """Split touching nuclei in masks: ``napari-unet split``."""
    from napari_unet.core.io import check_writable_folder, list_image_files, staged_outputs

    if not 0 < args.threshold < 1:  # also NaN
        raise NapariUnetError(
            f"--threshold must be between 0 and 1 (a probability), got {args.threshold}."
        )
    from napari_unet.core.split_config import MAX_SMOOTH

    if args.diameter is not None and _diameter_option(args.diameter) is None:
        raise NapariUnetError("--diameter must be 'auto' or a nucleus diameter in pixels.")
    if args.smooth is not None and not 0 <= args.smooth <= MAX_SMOOTH:  # also NaN
        raise NapariUnetError(
            f"--smooth must be from 0 (no smoothing) to {MAX_SMOOTH:g} pixels, got {args.smooth}."
        )
    files = list_image_files(args.input)
    out = check_writable_folder(args.out)  # the folder is made at the first write
    targets = [out / f"{f.stem}.tif" for f in files]
    _check_targets(files, targets)
    _refuse_existing(targets, out, args.overwrite)
    with staged_outputs(out) as stage:  # all the label images, or none
        for f, target in zip(files, targets, strict=True):
            _split_file(f, stage(target), args)
    _info(f"wrote {len(files)} label image(s) to {out}")
    return 0


def _split_file(f: Path, target: Path, args: argparse.Namespace) -> None:
    """Split one mask, label or probability image file into a label TIFF."""
    import numpy as np

    from napari_unet.core.io import image_axes, read_image, write_labels_tiff
    from napari_unet.core.split import looks_like_intensities, probability_mask
    from napari_unet.core.volume import min_volume, spacing_from_voxel_size, split_image

    arr = read_image(f)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise NapariUnetError(
                f"{f.name} holds NaN or infinite values ({bad} of {arr.size} pixels); a "
                "probability map holds numbers from 0 to 1: replace them (e.g. with 0)."
            )
        low, high = float(arr.min()), float(arr.max())
        whole = bool(np.all(arr == np.round(arr)))
        if -1e-3 <= low and high <= 1 + 1e-3:  # rounding may leave 1.0000001
            mask = probability_mask(arr, args.threshold)  # as Split nuclei thresholds
        elif whole and low >= 0:  # float labels or a 0/255 mask: whole numbers
            arr = arr.astype(np.int64)
        else:
            raise NapariUnetError(
                f"{f.name} ({arr.dtype}) ranges {low:g} to {high:g}: neither a probability "
                "map (0 to 1) nor labels or a mask (whole numbers >= 0); rescale it to 0..1 "
                "or threshold it first."
            )
    if arr.dtype.kind != "f":
        mask = arr
        if looks_like_intensities(arr):
            raise NapariUnetError(
                f"{f.name} ({arr.dtype}) looks like a probability or intensity image, not "
                "labels or a mask: neighbouring pixels inside objects differ. Save "
                "probabilities as floats from 0 to 1 (napari-unet predict "
                "--save-probabilities does), or threshold the image first."
            )
    mask = np.asarray(mask)
    axes, voxel, calibration = _stack_geometry(f, mask.ndim, None, image_axes(f)[0], args)
    config = _split_config(mask, args, f)
    spacing = None
    if "Z" in axes:
        spacing = spacing_from_voxel_size(voxel)
        if args.min_size is None:  # an area: the ball with that cross-section
            config.min_size = min_volume(config.min_size, spacing)
        _info(
            f"{f.name}: split in 3D ({axes}), "
            + (
                f"z-step {spacing[0]:.3g} pixels"
                if voxel is not None
                else "z-steps taken as long as the pixels (give --voxel-size Z Y X)"
            )
        )
    lab = split_image(mask, config, axes=axes, spacing=spacing)
    write_labels_tiff(
        target, lab, overwrite=True, axes=axes if lab.ndim > 2 else None, **calibration
    )


def _split_config(mask, args: argparse.Namespace, f: Path) -> SplitConfig:
    """Return the split's settings: given, else for ``--diameter``, else the defaults."""
    from napari_unet.core.split import SplitConfig

    given = {
        k: getattr(args, k)
        for k in ("min_distance", "h", "smooth", "min_size")
        if getattr(args, k) is not None
    }
    given["threshold"] = args.threshold
    given["fill_holes"] = not args.no_fill_holes
    diameter = None if args.diameter is None else _diameter_option(args.diameter)
    if diameter == "auto":
        from napari_unet.core.size import mask_diameter

        plane = mask[tuple(n // 2 for n in mask.shape[:-2])]  # the middle plane of a stack
        est = mask_diameter(plane)
        if est.found:
            diameter = est.diameter
            _info(f"{f.name}: nuclei about {diameter:.0f} px across ({est.n_objects} measured)")
        else:
            diameter = None
            _info(f"{f.name}: no nuclei to measure: the default settings are used")
    if diameter is not None:
        return SplitConfig.for_diameter(diameter, **given)
    return SplitConfig(**given)


# ---------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score predictions against ground truth: ``napari-unet evaluate``."""
    from napari_unet.core.io import list_image_files, pair_images_and_labels, read_labels
    from napari_unet.core.metrics import evaluate

    preds = _select(list_image_files(args.pred), _read_ids(args.ids_file), "predictions")
    gts = list_image_files(args.gt)
    pairs, missing = pair_images_and_labels(preds, gts)
    if missing:
        raise NapariUnetError(
            f"{len(missing)} prediction(s) have no ground truth in {args.gt}, "
            f"e.g. {missing[0].name}."
        )
    result = evaluate(
        [read_labels(g) for _, g in pairs],
        [read_labels(p) for p, _ in pairs],
        names=[p.stem for p, _ in pairs],
    )
    if not args.per_image:
        result.pop("per_image", None)
    print(json.dumps(result, indent=None if args.compact else 2))
    return 0


# ---------------------------------------------------------------- export-rle
def cmd_export_rle(args: argparse.Namespace) -> int:
    """Write a DSB2018 run-length CSV: ``napari-unet export-rle``."""
    from napari_unet.core.io import (
        list_image_files,
        read_labels,
        resolved,
        text_name,
        write_rle_csv,
    )

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise NapariUnetError(f"--out {out} is a folder: give the CSV file to write.")
    if out.exists() and not args.overwrite:
        raise NapariUnetError(f"{out} exists; pass --overwrite to replace it.")
    files = list_image_files(args.labels)
    if resolved(out) in {resolved(f) for f in files}:
        raise NapariUnetError(
            f"--out {out} is one of the label images: the CSV would replace it; choose "
            "another name, e.g. submission.csv."
        )
    seen: dict[str, Path] = {}
    for f in files:  # the CSV has one block per image id: two files may not share one
        key = text_name(f.stem)  # as the CSV writes it
        if key in seen:
            raise NapariUnetError(
                f"{seen[key].name} and {f.name} would both be image id {key!r} in the "
                "CSV; keep one of them."
            )
        seen[key] = f
    _non_utf8_note([f.stem for f in files])
    items = {f.stem: read_labels(f) for f in files}
    write_rle_csv(out, items, overwrite=args.overwrite)
    _info(f"wrote run-length encodings of {len(items)} image(s) to {args.out}")
    return 0


# ---------------------------------------------------------------- measure
def _pixel_size_option(args: argparse.Namespace) -> tuple[tuple[float, ...] | None, str | None]:
    """``--pixel-size`` (X, Y X or Z Y X) and ``--unit``: the size and unit, or (None, None)."""
    if args.pixel_size is None:
        if args.unit is not None:
            raise NapariUnetError("--unit needs --pixel-size (the size of one pixel in it).")
        return None, None
    values = list(args.pixel_size)
    if len(values) not in (1, 2, 3):
        raise NapariUnetError(
            f"--pixel-size takes one value, two (Y X) or three (Z Y X), got {len(values)}: "
            f"{values}."
        )
    from napari_unet.core.measure import _MAX_PIXEL_SIZE, _MIN_PIXEL_SIZE

    if not all(0 < v < float("inf") for v in values):
        raise NapariUnetError(f"--pixel-size must be positive, got {values}.")
    if not all(_MIN_PIXEL_SIZE <= v <= _MAX_PIXEL_SIZE for v in values):
        raise NapariUnetError(
            f"--pixel-size must be from {_MIN_PIXEL_SIZE:g} to {_MAX_PIXEL_SIZE:g} (in --unit; "
            f"areas would round to 0 or overflow), got {values}."
        )
    size = (values[0], values[0]) if len(values) == 1 else tuple(values)
    return size, args.unit or "um"


def _file_axes(path: Path, ndim: int, option: str) -> str | None:
    """``--axes``, else the axes a TIFF's metadata gives when they fit `ndim`, else None."""
    from napari_unet.core.io import read_calibration

    if option != "auto":
        return option
    axes = read_calibration(path)[0]
    return axes if axes in AXES and len(axes) == ndim else None


def _label_files(pattern: str) -> list[Path]:
    """Label images in a folder or glob: ``<stem>_probabilities.tif`` (predict's) left out."""
    from napari_unet.core.io import list_image_files

    files = list_image_files(pattern)
    kept = [f for f in files if not f.stem.lower().endswith("_probabilities")]
    if not kept:
        raise NapariUnetError(f"{pattern} holds probability maps only, no label images.")
    return kept


def _measure_file(
    label_path: Path,
    image_path: Path | None,
    args: argparse.Namespace,
    labels=None,
    image=None,
    channel_axis: int | None = None,
) -> tuple[str, dict]:
    """Measure one label file (its image, if any); returns (name, table).

    The pixel size is ``--pixel-size``, else the image's, else the label file's (TIFF
    metadata). A z-stack is calibrated only when its z spacing is known (``--pixel-size
    Z Y X`` or an ImageJ stack's spacing); otherwise it is measured in voxels, with a note.
    """
    from napari_unet.core.io import _label_key, _stem, read_calibration, read_image, read_labels
    from napari_unet.core.measure import default_axes, measure_labels

    if labels is None:
        labels = read_labels(label_path)
    axes = _file_axes(label_path, labels.ndim, args.axes)
    size, unit = _pixel_size_option(args)
    if size is None and image_path is not None:
        _, size, unit = read_calibration(image_path)
    if size is None:
        _, size, unit = read_calibration(label_path)
    if image is None and image_path is not None:
        image = read_image(image_path)
    scale = None
    if size is not None:
        n_spatial = len((axes or default_axes(labels.ndim)).lstrip("T"))
        if n_spatial == 2:
            scale = tuple(size[-2:])
        elif len(size) == 3:
            scale = tuple(size)
        else:
            _info(
                f"note: {label_path.name} is a z-stack whose z spacing is not known: measured "
                "in voxels only; give it with --pixel-size Z Y X"
            )
    try:
        table = measure_labels(
            labels, image, axes=axes, channel_axis=channel_axis, scale=scale, unit=unit
        )
    except NapariUnetError as exc:
        raise NapariUnetError(f"{label_path.name}: {exc}") from exc
    return (_stem(image_path) if image_path else _label_key(label_path)[0]), table


def cmd_measure(args: argparse.Namespace) -> int:
    """Measure every object of label images into one CSV: ``napari-unet measure``."""
    from napari_unet.core.io import (
        _label_key,
        _stem,
        check_writable_folder,
        list_image_files,
        pair_images_and_labels,
        text_name,
    )
    from napari_unet.core.measure import table_rows, write_measurements_csv

    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".csv":
        raise NapariUnetError(f"--out must name a .csv file, got {out}.")
    if out.is_dir():
        raise NapariUnetError(f"--out {out} is a folder: give a file name ending in .csv.")
    if out.exists() and not args.overwrite:
        raise NapariUnetError(
            f"{out} exists; pass --overwrite to replace it, or choose another --out."
        )
    _pixel_size_option(args)  # bad values: refuse before reading anything
    check_writable_folder(out.parent)
    labels = _label_files(args.labels)
    if args.images:
        pairs, _ = pair_images_and_labels(list_image_files(args.images), labels)
        paired = {lab for _, lab in pairs} | {img for img, _ in pairs}  # one folder: both
        alone = [lab for lab in labels if lab not in paired]
        if alone:
            raise NapariUnetError(
                f"{len(alone)} label file(s) have no image in {args.images}, e.g. {alone[0].name}; "
                "name each label file like its image (a.png -> a.tif or a_labels.tif), or leave "
                "out --images to measure without intensities."
            )
        jobs = [(lab, img) for img, lab in pairs]
    else:
        jobs = [(lab, None) for lab in labels]
    seen: dict[str, Path] = {}
    names = [_stem(img) if img else _label_key(lab)[0] for lab, img in jobs]
    for (lab, _), name in zip(jobs, names, strict=True):  # one name per image in the CSV
        key = text_name(name)
        if key in seen:
            raise NapariUnetError(
                f"{seen[key].name} and {lab.name} would both be image {key!r} in the CSV; "
                "keep one of them, or measure them separately."
            )
        seen[key] = lab
    _non_utf8_note(names)
    tables = [_measure_file(lab, img, args) for lab, img in jobs]
    path, rows = write_measurements_csv(out, tables, overwrite=args.overwrite)
    empty = [name for name, t in tables if table_rows(t) == 0]
    if empty:
        _info(f"note: {len(empty)} label image(s) hold no objects, e.g. {empty[0]}")
    _info(f"measured {rows} object(s) in {len(tables)} image(s): {path}")
    return 0


# ---------------------------------------------------------------- export-rois
def cmd_export_rois(args: argparse.Namespace) -> int:
    """Write ImageJ ROI sets of label images: ``napari-unet export-rois``.

    Every label image is read and traced before any file is written, so a bad one
    leaves every earlier ROI set as it was.
    """
    from napari_unet.core.io import _label_key, check_writable_folder, read_labels
    from napari_unet.core.rois import labels_to_rois, write_roi_zip

    files = _label_files(args.labels)
    out = Path(args.out).expanduser()
    if out.suffix.lower() == ".zip":
        if len(files) != 1:
            raise NapariUnetError(
                f"--out {out.name} names one .zip file but --labels matches {len(files)} "
                "label images; give a folder as --out (one <name>_rois.zip each)."
            )
        targets = [out]
        folder = out.parent
    else:
        if out.exists() and not out.is_dir():
            raise NapariUnetError(
                f"--out {out} is a file: give a folder, or a name ending in .zip."
            )
        targets = [out / f"{_label_key(f)[0]}_rois.zip" for f in files]
        _check_targets(files, targets)  # a.png and a.tif would both write a_rois.zip
        folder = out
    _refuse_existing(targets, folder, args.overwrite)
    check_writable_folder(folder)
    traced: list[tuple[Path, Path, list]] = []
    empty: list[str] = []
    for f, target in zip(files, targets, strict=True):
        labels = read_labels(f)
        try:
            rois = labels_to_rois(labels, axes=_file_axes(f, labels.ndim, args.axes))
        except NapariUnetError as exc:
            raise NapariUnetError(f"{f.name}: {exc} Nothing was written.") from exc
        if rois:
            traced.append((f, target, rois))
        else:
            empty.append(
                f.name + (f" (its earlier {target.name} was kept)" if target.exists() else "")
            )
    total = 0
    for _, target, rois in traced:
        path, n = write_roi_zip(target, None, rois=rois, overwrite=args.overwrite)
        total += n
    if empty:
        _info(f"note: {len(empty)} label image(s) hold no objects and got no ROI set: {empty[0]}")
    _info(f"wrote {total} ROI(s) in {len(traced)} ImageJ ROI set(s) to {folder}")
    return 0


# ---------------------------------------------------------------- export-bioimageio
def cmd_export_bioimageio(args: argparse.Namespace) -> int:
    """Write a model as a bioimage.io package: ``napari-unet export-bioimageio``."""
    from napari_unet.core.bioimageio import export_bioimageio

    out = Path(args.out).expanduser()  # checked (.zip, exists) before any work
    test_image = None
    if args.test_image:
        from napari_unet.core.io import read_image

        test_image = read_image(args.test_image)
    from napari_unet.core.builtin import resolve_model

    export_bioimageio(  # its last progress line says what was written and validated
        resolve_model(args.model),  # a built-in model's name, or a file
        out,
        name=args.name,
        description=args.description,
        authors=args.author or None,
        test_image=test_image,
        overwrite=args.overwrite,
        progress=_info,
    )
    return 0


# ---------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    """List the built-in models: ``napari-unet models``."""
    from napari_unet.core.builtin import ENV_VAR, list_models, models_dir

    models = list_models()
    if args.json:
        rows = [{**m.to_json(), "path": str(m.path), "size_bytes": m.size_bytes} for m in models]
        print(json.dumps(rows, indent=2))
        return 0
    if not models:
        print(
            f"no built-in model is installed (none listed in {models_dir() / 'builtin.json'}; "
            f"{ENV_VAR} may name another models folder)"
        )
        return 0
    for m in models:
        mb = m.size_bytes / 1e6
        size = f"{mb:.1f} MB" if mb >= 1 else f"{1000 * mb:.0f} kB"
        diameter = f", objects about {m.object_diameter:g} px across" if m.object_diameter else ""
        channels = "grey" if m.channels == 1 else f"{m.channels} channels (grey or colour)"
        print(f"{m.name}: {m.title}")
        print(f"    input {channels}, {size}{diameter}")
        if m.description:
            print(f"    {m.description}")
        print(f"    use: napari-unet predict --model {m.name} ...  (file {m.path})")
    return 0


# ---------------------------------------------------------------- demo
def _has_display() -> bool:
    """Whether a window can open: always on macOS and Windows; on Linux, X11 or Wayland."""
    import os

    if sys.platform in ("darwin", "win32"):
        return True
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal", "vnc"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo on the sample data: ``napari-unet demo``."""
    if args.headless and not 0 < args.minutes < float("inf"):  # also NaN; before any work
        raise NapariUnetError(
            f"--minutes must be a positive number of minutes, got {args.minutes}."
        )
    if not args.headless:
        if not _has_display():
            raise NapariUnetError(
                "no display found (DISPLAY and WAYLAND_DISPLAY are not set), so napari "
                "cannot open a window; `napari-unet demo --headless` runs the demo without one."
            )
        from napari_unet.demo import launch_viewer_demo

        launch_viewer_demo()
        return 0
    from napari_unet.demo import demo_outputs, run_headless_demo

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise NapariUnetError(f"--out {out} is a file; choose a folder for the demo's outputs.")
    clash = [p.name for p in demo_outputs(out) if p.exists()]
    if clash and not args.overwrite:
        raise NapariUnetError(
            f"{out} holds an earlier demo's outputs ({', '.join(clash[:3])}"
            f"{', ...' if len(clash) > 3 else ''}); pass --overwrite to replace them, or "
            "choose another --out."
        )
    summary = run_headless_demo(out=out, minutes=args.minutes, log=_info)
    print(json.dumps(summary, indent=2))
    return 0


def _add_voxel_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--voxel-size",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="z-stacks: the voxel size (any one unit), so the 3D split knows how long a "
        "z-step is against a pixel; default: from the TIFF's metadata (ImageJ spacing), "
        "else z-steps as long as the pixels",
    )


def _add_measure_options(parser: argparse.ArgumentParser, what: str = "measured") -> None:
    parser.add_argument(
        "--axes",
        default="auto",
        choices=["auto", *AXES],
        help=f"what the images' axes are (channels left out): a z-stack (ZYX) is {what} in "
        "3D, one object per nucleus across slices; a time series (TYX) frame by frame; "
        "auto: from the TIFF's metadata, else 3D = ZYX, 4D = TZYX",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        nargs="+",
        metavar="SIZE",
        help="pixel size (one value, or Y X) for calibrated columns; default: from the "
        "TIFF's metadata, else none (pixels only)",
    )
    parser.add_argument("--unit", help="unit of --pixel-size (default um)")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``napari-unet``."""
    from napari_unet.core.data import POLARITIES
    from napari_unet.core.losses import LOSSES
    from napari_unet.core.split_config import REFERENCE_DIAMETER, SplitConfig
    from napari_unet.core.train_config import TARGETS

    p = argparse.ArgumentParser(
        prog="napari-unet",
        description="Train a UNet on your images and segment nuclei and cells.",
    )
    p.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on images + label images")
    t.add_argument("--images", required=True, help="folder or glob of images (PNG/TIFF)")
    t.add_argument("--labels", required=True, help="folder or glob of label images, paired by stem")
    t.add_argument("--out", required=True, help="model file to write (.pt)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, help="time budget in minutes")
    g.add_argument("--epochs", type=int, help="number of epochs (default 50 without --minutes)")
    t.add_argument(
        "--resume",
        help="fine-tune / continue from this model file or built-in model (its name, e.g. "
        "nuclei: the built-in file is never written); equal to --out, it may not exist "
        "yet (a restarted job continues, a first one starts from scratch)",
    )
    t.add_argument(
        "--config",
        help="train_config.json of training settings (e.g. exported by the Train widget); "
        "options given here replace its values",
    )
    t.add_argument("--ids-file", help="text file of image stems to train on (one per line)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    t.add_argument("--patch-size", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--depth", type=int)
    t.add_argument("--base-channels", type=int)
    t.add_argument("--loss", choices=LOSSES)
    t.add_argument("--targets", choices=TARGETS)
    t.add_argument(
        "--sparse",
        action="store_true",
        help="labels are partial: 0 = not annotated, 1 = background, 2.. = objects",
    )
    t.add_argument("--border-weight", type=float, help="UNet-paper border weight w0 (0 = off)")
    t.add_argument(
        "--zoom",
        type=float,
        help="scale augmentation: resize patches by up to 1 + ZOOM either way (0 = off)",
    )
    t.add_argument(
        "--object-diameter",
        type=float,
        metavar="PX",
        help="object size normalisation: resize each training image so that its median "
        "object diameter is PX pixels, and store PX with the model so that prediction "
        "resizes images to it (0, the default: images at their own size)",
    )
    t.add_argument(
        "--style-augment",
        action="store_true",
        help="appearance augmentation (gamma, blur, noise, stain gains, colour turned "
        "grey) for a model meant for images of other microscopes and stains",
    )
    t.add_argument(
        "--workers",
        type=int,
        help="processes cutting training patches beside the loop (default: 0 on the CPU, "
        "up to 6 on a GPU)",
    )
    t.add_argument(
        "--interface-weight",
        type=float,
        help="extra loss weight of the boundary output where two objects touch (0 = off)",
    )
    t.add_argument(
        "--contact-gap",
        type=int,
        help="pixels on each side of where two objects touch left out of the foreground "
        "target, so that the network learns to draw touching objects apart (0 = off)",
    )
    t.add_argument(
        "--polarity",
        choices=sorted(POLARITIES),
        help="auto (default): invert bright-background images (brightfield, H&E) so objects "
        "are bright on dark; keep: use images as they are",
    )
    t.add_argument(
        "--sample-by-loss",
        type=float,
        help="draw images with a high training loss up to 4x more often, to this power "
        "(0, the default: by area only)",
    )
    t.add_argument(
        "--ema",
        type=float,
        help="keep a moving average of the weights with at most this decay per step, "
        "e.g. 0.995 (0, the default: off)",
    )
    t.add_argument("--lr", type=float)
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--patience", type=int)
    t.add_argument("--steps-per-epoch", type=int)
    t.add_argument("--device", choices=DEVICE_CHOICES)
    t.add_argument("--precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    t.add_argument("--seed", type=int)
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("predict", help="predict label images with a trained model")
    q.add_argument(
        "--model",
        required=True,
        help="a model file saved by napari-unet (.pt), or a built-in model's name "
        "(`napari-unet models` lists them)",
    )
    q.add_argument("--images", required=True, help="folder or glob of images")
    q.add_argument("--out", required=True, help="folder for <stem>.tif label images")
    q.add_argument("--no-split", action="store_true", help="do not split touching objects")
    q.add_argument(
        "--diameter",
        default="auto",
        metavar="auto|PX|off",
        help="typical object diameter in the images, in pixels, for a model trained with "
        "--object-diameter: images are resized so that their objects have the model's size, "
        "and the labels come back at the images' own size. auto (default): estimated per "
        "image; off: never resize. Models trained without it predict images as they are",
    )
    q.add_argument(
        "--flips",
        action="store_true",
        help="test-time augmentation: average the tiles' predictions as they are and mirrored "
        "three ways (3 to 4 times slower)",
    )
    q.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <stem>_probabilities.tif (float32, one plane per output)",
    )
    q.add_argument(
        "--measure",
        action="store_true",
        help=f"also write {MEASUREMENTS_CSV} in --out: one row per object (area, position, "
        "shape, intensity of each channel), with the image name in a column",
    )
    _add_measure_options(q, "labelled (and measured)")
    _add_voxel_size_option(q)
    q.add_argument("--ids-file")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--tile-size", type=int)
    q.add_argument("--overlap", type=int)
    q.add_argument("--batch-size", type=int)
    q.add_argument("--threshold", type=float, help="foreground probability threshold (0.7)")
    q.add_argument(
        "--split-method",
        choices=SPLIT_METHODS,
        help="distance-transform watershed (default) or the model's boundary map",
    )
    q.add_argument(
        "--min-distance",
        type=int,
        help="min. pixels between nucleus centres (6; used when --h is 0)",
    )
    q.add_argument(
        "--h",
        type=float,
        help="split depth: cut two nuclei where their waist is at least H px narrower "
        "than they are (h-maxima markers; 0 = use --min-distance instead)",
    )
    q.add_argument("--boundary-threshold", type=float)
    q.add_argument("--min-size", type=int)
    q.add_argument("--device", choices=DEVICE_CHOICES)
    q.add_argument("--precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    q.add_argument(
        "--channel-axis",
        default="auto",
        help="'auto' (default), 'none', or the axis index of the channels",
    )
    q.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run as dask tasks on this dask.distributed scheduler (e.g. tcp://node:8786); "
        "zarr / OME-Zarr input always runs as dask tasks (local threads by default)",
    )
    q.add_argument(
        "--block-size", type=int, help="zarr input: block edge in pixels per task (1024)"
    )
    q.add_argument(
        "--block-margin",
        type=int,
        help="zarr input: context around a block when labelling, wider than any clump of "
        "touching nuclei (128)",
    )
    q.set_defaults(func=cmd_predict)

    split = SplitConfig()  # the defaults, as Split nuclei's
    s = sub.add_parser("split", help="split touching nuclei in masks with a watershed")
    s.add_argument("--input", required=True, help="folder or glob of masks / label images")
    s.add_argument("--out", required=True)
    s.add_argument(
        "--diameter",
        metavar="auto|PX",
        help="typical nucleus diameter: the pixel settings below follow it (those given "
        f"win); auto: measured in each mask. Without it: min distance {split.min_distance}, "
        f"smoothing {split.smooth:g}, min size {split.min_size} (nuclei of about "
        f"{REFERENCE_DIAMETER:g} px)",
    )
    s.add_argument(
        "--min-distance", type=int, help=f"min. pixels between centres ({split.min_distance})"
    )
    s.add_argument(
        "--h", type=float, help="use h-maxima markers of this height (default with --diameter)"
    )
    s.add_argument(
        "--smooth", type=float, help=f"sigma of the distance map's smoothing ({split.smooth:g})"
    )
    s.add_argument(
        "--min-size",
        type=int,
        help=f"smallest object in pixels ({split.min_size}), in voxels for z-stacks",
    )
    s.add_argument(
        "--threshold", type=float, default=split.threshold, help="for probability images"
    )
    s.add_argument(
        "--axes",
        default="auto",
        choices=["auto", *AXES],
        help="a z-stack (ZYX, TZYX) is split in 3D, a time series (TYX) frame by frame; "
        "auto: from the TIFF's metadata, else 3D = ZYX",
    )
    _add_voxel_size_option(s)
    s.add_argument("--no-fill-holes", action="store_true")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_split)

    e = sub.add_parser("evaluate", help="score predicted labels against ground truth (JSON)")
    e.add_argument("--pred", required=True)
    e.add_argument("--gt", required=True)
    e.add_argument("--ids-file")
    e.add_argument("--per-image", action="store_true")
    e.add_argument("--compact", action="store_true", help="one-line JSON")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("export-rle", help="DSB2018 run-length encoded CSV of label images")
    r.add_argument("--labels", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=cmd_export_rle)

    m = sub.add_parser(
        "measure",
        help="measure every object (area, position, shape, intensity) into one CSV",
    )
    m.add_argument("--labels", required=True, help="folder or glob of label images")
    m.add_argument(
        "--images",
        help="folder or glob of the images, paired with the labels by stem, for the "
        "intensity columns (mean, max, min per channel)",
    )
    m.add_argument("--out", required=True, help="the CSV file to write (one row per object)")
    _add_measure_options(m)
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    m.set_defaults(func=cmd_measure)

    x = sub.add_parser(
        "export-rois",
        help="ImageJ / Fiji ROI sets (.zip, one outline per object) of label images",
    )
    x.add_argument("--labels", required=True, help="folder or glob of label images")
    x.add_argument(
        "--out",
        required=True,
        help="folder for <name>_rois.zip files, or one .zip file for one label image",
    )
    x.add_argument(
        "--axes",
        default="auto",
        choices=["auto", *AXES],
        help="what a stack's first axes are (ROI positions and names z03-0017 / t03-0017); "
        "auto: from the TIFF's metadata, else 3D = ZYX",
    )
    x.add_argument("--overwrite", action="store_true", help="replace existing .zip files")
    x.set_defaults(func=cmd_export_rois)

    b = sub.add_parser(
        "export-bioimageio",
        help="a model as a bioimage.io package (.zip) for Fiji (deepImageJ), ilastik, ...",
    )
    b.add_argument(
        "model", help="a model file saved by napari-unet (.pt), or a built-in model's name"
    )
    b.add_argument("out", help="the package to write (.zip)")
    b.add_argument("--name", help="the model's name in the package (default: from the file)")
    b.add_argument("--description", help="one sentence on what the model segments")
    b.add_argument("--author", action="append", help="an author's name (repeat for several)")
    b.add_argument(
        "--test-image",
        help="an image like the training images, for the package's test input and cover "
        "(default: a built-in sample with the model's channels)",
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    b.set_defaults(func=cmd_export_bioimageio)

    o = sub.add_parser(
        "models", help="list the built-in models (predict --model NAME, train --resume NAME)"
    )
    o.add_argument("--json", action="store_true", help="print the list as JSON")
    o.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="try it on the built-in sample nuclei")
    d.add_argument(
        "--headless",
        action="store_true",
        help="no window: train, predict and evaluate on the samples, print scores",
    )
    d.add_argument("--minutes", type=float, default=1.0, help="training budget (headless)")
    d.add_argument("--out", default="napari-unet-demo", help="output folder (headless)")
    d.add_argument(
        "--overwrite", action="store_true", help="replace an earlier demo's outputs in --out"
    )
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    old_term = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends a run as Ctrl-C does (training installs its own stop-cleanly
        # handler): lock files are removed and staged outputs rolled back on the way out
        old_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _run(args: argparse.Namespace) -> int:
    """Run the sub-command; problems become one line on stderr and an exit code."""
    try:
        return int(args.func(args) or 0)
    except NapariUnetError as e:
        if args.debug:
            raise
        print(f"napari-unet: error: {e}", file=sys.stderr)
        return 2
    except _Terminated:
        print("napari-unet: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("napari-unet: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if args.debug:
            raise
        print(f"napari-unet: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print(
            "napari-unet: error: out of memory; try a smaller --tile-size or --batch-size",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # noqa: BLE001 - last resort: one line, traceback with --debug
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(
            f"napari-unet: internal error: {type(e).__name__}: {msg} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
