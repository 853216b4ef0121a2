"""Hostile inputs through the real command line (issue 24): every case classified.

Builds, in a temporary folder, a few hundred cases of what messy folders and impatient
users do to the command line, runs each through ``python -m napari_unet ...`` in a
fresh process (with a timeout; run as root, the children lose the capabilities that
let root ignore file permissions, so that permission cases are real), and classifies
the outcome:

* ``OK``: exit 0 and the outputs are right (names, count, shapes, a loadable model that
  this run wrote, the note that says what was assumed ...);
* ``REFUSED``: exit 2 with a message, nothing created or changed;
* ``STOPPED``: a case that sends SIGINT / SIGTERM ended cleanly (exit 2, 130 or 143, or
  ended by the signal it was sent) with every earlier file still there and loadable, and
  no lock or temporary file left (exit 0 must be a new, loadable model: ``OK``).

A case says which values are meaningful: an input that must be refused has no check
for its outputs, so exit 0 for it is a failure (``WRONG_SUCCESS``).

Everything else is a failure: ``HANG`` (timeout), ``TRACEBACK``, ``INTERNAL_ERROR``,
``DATA_LOSS`` (an existing file changed or removed when it should not have been, a
model no longer loadable, the pickle payload's marker file created), ``PARTIAL`` (an
error that left new files behind), ``LEFTOVER`` (a ``.lock``, staging folder or
temporary file left), ``WRONG_SUCCESS`` (exit 0 but outputs missing, of the wrong
count or shape, or a model that was not written, or exit 0 for an input that must be
refused), ``SILENT_REFUSAL`` (exit 2 without a message), ``BAD_EXIT`` (any other exit
code) and ``BAD_CASE`` (argparse says the case's own command line is malformed: a mistake
in this script, which would otherwise pass as ``REFUSED``).

Usage: python bench/hostile_inputs.py [--jobs 2] [--only TEXT] [--group NAME] [--keep]
[--list] [--fixtures DIR]

A full run trains one small model with the CLI first (about a minute), then runs every
case; it takes 10 to 20 minutes on 2 cores, depending on what else runs there.

Writes ``bench/results/hostile_inputs.json`` (every case: name, group, command, exit
code, class, the first line of the message, what was wrong) and prints a table.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from _common import python_env, save

CLI = [sys.executable, "-m", "napari_unet"]
FAILURES = (
    "HANG",
    "TRACEBACK",
    "INTERNAL_ERROR",
    "DATA_LOSS",
    "PARTIAL",
    "LEFTOVER",
    "WRONG_SUCCESS",
    "SILENT_REFUSAL",
    "BAD_EXIT",
    "BAD_CASE",
)
# argparse's words for a command line that is malformed (a mistake in this script's case),
# as opposed to a value it refuses ("invalid int value", "invalid choice")
MALFORMED = ("expected one argument", "unrecognized arguments", "the following arguments are")
# as root: drop what lets root read and write files regardless of their permissions
NO_DAC = "-dac_override,-dac_read_search"
DROP_ROOT = ["setpriv", "--bounding-set", NO_DAC, "--inh-caps", NO_DAC, "--"]
XFF = os.fsdecode(b"\xff")  # a byte that is not UTF-8, as Python names it (surrogateescape)

# --------------------------------------------------------------------------- fixtures


def nuclei(shape=(64, 64), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image of bright discs on noise and its uint16 instance labels."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint16)
    img = rng.normal(30, 8, shape)
    n = max(2, shape[0] * shape[1] // 600)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(6, shape[0] - 6), rng.uniform(6, shape[1] - 6)
        r2 = rng.uniform(16, 40)
        y0, x0 = int(cy) - 7, int(cx) - 7
        yy, xx = np.mgrid[max(y0, 0) : y0 + 15, max(x0, 0) : x0 + 15]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r2
        window = (slice(max(y0, 0), y0 + 15), slice(max(x0, 0), x0 + 15))
        disc = disc[: lab[window].shape[0], : lab[window].shape[1]]
        lab[window][disc & (lab[window] == 0)] = k
        img[window][disc] += 150
    return np.clip(img, 0, 255).astype(np.uint8), lab


FX: Path  # the fixtures folder, set in main()


def build_fixtures(fx: Path, log) -> None:
    """images/{a,b,c}.png, labels/{a,b,c}.tif, model.pt (trained by the CLI), rgb_model.pt."""
    (fx / "images").mkdir(parents=True)
    (fx / "labels").mkdir()
    for i, name in enumerate("abc"):
        img, lab = nuclei(seed=i)
        iio.imwrite(fx / "images" / f"{name}.png", img)
        tifffile.imwrite(fx / "labels" / f"{name}.tif", lab)
    t0 = time.monotonic()
    cmd = CLI + [
        "train",
        "--images",
        "images",
        "--labels",
        "labels",
        "--out",
        "model.pt",
        "--epochs",
        "12",
        "--steps-per-epoch",
        "10",
        "--patch-size",
        "64",
        "--batch-size",
        "4",
        "--depth",
        "2",
        "--base-channels",
        "8",
        "--lr",
        "5e-3",
        "--seed",
        "0",
    ]
    env = dict(python_env(), OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, cwd=fx, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"could not train the fixture model:\n{proc.stderr}")
    found = subprocess.run(
        CLI + ["predict", "--model", "model.pt", "--images", "images", "--out", "check"],
        cwd=fx,
        capture_output=True,
        text=True,
        env=env,
    )
    counts = [int(tifffile.imread(p).max()) for p in sorted((fx / "check").glob("*.tif"))]
    shutil.rmtree(fx / "check", ignore_errors=True)
    if found.returncode != 0 or not all(counts):
        raise SystemExit(f"the fixture model finds no objects ({counts}): {found.stderr}")
    log(
        f"fixture model trained by the CLI in {time.monotonic() - t0:.1f} s; it finds "
        f"{counts} objects in the 3 images"
    )
    from napari_unet.core.checkpoint import load_checkpoint, new_bundle, save_checkpoint
    from napari_unet.core.model import UNetSpec

    grey = load_checkpoint(fx / "model.pt")
    rgb = new_bundle(
        UNetSpec(in_channels=3, out_channels=grey.spec.out_channels, depth=2, base_channels=4),
        {k: v for k, v in grey.meta.items() if k != "spec"},
    )
    save_checkpoint(rgb, fx / "rgb_model.pt")


def std(d: Path) -> None:
    """The standard inputs: images/, labels/, model.pt, rgb_model.pt."""
    shutil.copytree(FX / "images", d / "images")
    shutil.copytree(FX / "labels", d / "labels")
    shutil.copy(FX / "model.pt", d / "model.pt")
    shutil.copy(FX / "rgb_model.pt", d / "rgb_model.pt")


def do(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        for s in steps:
            s(d)

    return setup


def write(rel: str | bytes, array: np.ndarray, **kw) -> Callable[[Path], None]:
    """Write an array to d/rel (PNG/JPEG/BMP by imageio, TIFF by tifffile)."""

    def w(d: Path) -> None:
        p = Path(os.fsdecode(os.path.join(os.fsencode(d), os.fsencode(rel))))
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix.lower() in (".tif", ".tiff"):
            tifffile.imwrite(p, array, **kw)
        else:
            iio.imwrite(p, array, **kw)

    return w


def raw(rel: str, data: bytes) -> Callable[[Path], None]:
    def w(d: Path) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)

    return w


def mkdir(rel: str) -> Callable[[Path], None]:
    return lambda d: (d / rel).mkdir(parents=True, exist_ok=True)


def rm(rel: str) -> Callable[[Path], None]:
    def r(d: Path) -> None:
        p = d / rel
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    return r


def chmod(rel: str, mode: int) -> Callable[[Path], None]:
    return lambda d: os.chmod(d / rel, mode)


def symlink(rel: str, target: str) -> Callable[[Path], None]:
    def s(d: Path) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, d / rel)

    return s


def copy(src: str, dst: str) -> Callable[[Path], None]:
    def c(d: Path) -> None:
        (d / dst).parent.mkdir(parents=True, exist_ok=True)
        if (d / src).is_dir():
            shutil.copytree(d / src, d / dst)
        else:
            shutil.copy(d / src, d / dst)

    return c


def mkfifo(rel: str) -> Callable[[Path], None]:
    return lambda d: os.mkfifo(d / rel)


# --------------------------------------------------------------------------- model files


def _torch():
    import torch

    return torch


def _model_obj() -> dict:
    return _torch().load(FX / "model.pt", map_location="cpu", weights_only=True)


def edited_model(rel: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """A model file whose saved dict (meta parsed to a dict) was changed by `edit`."""

    def w(d: Path) -> None:
        obj = _model_obj()
        obj["meta"] = json.loads(obj["meta"])
        edit(obj)
        if isinstance(obj.get("meta"), dict):
            obj["meta"] = json.dumps(obj["meta"])
        _torch().save(obj, d / rel)

    return w


class _Payload:
    """Unpickling this creates the file MARKER: proof that code from the file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def pickle_model(rel: str, torch_format: bool) -> Callable[[Path], None]:
    def w(d: Path) -> None:
        payload = {"format": "napari-unet", "format_version": 1, "x": _Payload(str(d / "PWNED"))}
        if torch_format:
            _torch().save(payload, d / rel)
        else:
            with open(d / rel, "wb") as fh:
                pickle.dump(payload, fh)

    return w


def zip_model(rel: str) -> Callable[[Path], None]:
    def w(d: Path) -> None:
        with zipfile.ZipFile(d / rel, "w") as z:
            z.writestr("archive/hello.txt", "not a model")

    return w


def truncated(rel: str, keep: float | int) -> Callable[[Path], None]:
    def w(d: Path) -> None:
        data = (FX / "model.pt").read_bytes()
        n = keep if isinstance(keep, int) else int(len(data) * keep)
        (d / rel).write_bytes(data[:n])

    return w


def _set(path: tuple, value) -> Callable[[dict], None]:
    def e(obj: dict) -> None:
        target = obj
        for k in path[:-1]:
            target = target[k]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return e


DAMAGED_MODELS: dict[str, Callable[[Path], None]] = {
    "empty": raw("bad.pt", b""),
    "random-bytes": raw("bad.pt", np.random.default_rng(1).bytes(5000)),
    "truncated-half": truncated("bad.pt", 0.5),
    "truncated-100-bytes": truncated("bad.pt", 100),
    "pickle-payload-torch": pickle_model("bad.pt", True),
    "pickle-payload-plain": pickle_model("bad.pt", False),
    "zip-without-members": zip_model("bad.pt"),
    "png-named-pt": lambda d: shutil.copy(FX / "images" / "a.png", d / "bad.pt"),
    "text-file": raw("bad.pt", b"hello, I am a model\n"),
    "plain-torch-dict": lambda d: _torch().save({"a": 1}, d / "bad.pt"),
    "state-dict-only": lambda d: _torch().save(_model_obj()["state_dict"], d / "bad.pt"),
    "meta-no-outputs": edited_model("bad.pt", _set(("meta", "outputs"), KeyError)),
    "meta-no-spec": edited_model("bad.pt", _set(("meta", "spec"), KeyError)),
    "meta-no-normalisation": edited_model("bad.pt", _set(("meta", "normalisation"), KeyError)),
    "meta-bad-normalisation": edited_model(
        "bad.pt", _set(("meta", "normalisation"), {"mode": "percentile", "low": 99, "high": 1})
    ),
    "meta-outputs-not-list": edited_model("bad.pt", _set(("meta", "outputs"), "foreground")),
    "meta-spec-depth-99": edited_model("bad.pt", _set(("meta", "spec", "depth"), 99)),
    "meta-not-json": edited_model("bad.pt", _set(("meta",), "{not json")),
    "meta-missing": edited_model("bad.pt", _set(("meta",), KeyError)),
    "format-version-99": edited_model("bad.pt", _set(("format_version",), 99)),
    "no-state-dict": edited_model("bad.pt", _set(("state_dict",), KeyError)),
    "weights-missing-one": edited_model(
        "bad.pt", lambda o: o["state_dict"].pop(next(iter(o["state_dict"])))
    ),
    "folder-named-pt": mkdir("bad.pt"),
    "symlink-loop": symlink("bad.pt", "bad.pt"),
    "chmod-000": do(lambda d: shutil.copy(FX / "model.pt", d / "bad.pt"), chmod("bad.pt", 0)),
}

# --------------------------------------------------------------------------- checks


@dataclass
class Run:
    rc: int | None
    out: str
    err: str
    seconds: float
    hung: bool = False


Check = Callable[[Path, Run, dict], "str | None"]


_LOCK = threading.Lock()


def loadable(path: Path) -> str | None:
    """None when `path` loads as a napari-unet model, else why not."""
    from napari_unet.core.checkpoint import load_checkpoint

    try:
        with _LOCK:
            load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - report whatever it is
        return f"{path.name} does not load: {exc}"
    return None


def _listing(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(os.fsdecode(n) for n in os.listdir(os.fsencode(folder)) if not n.startswith(b"."))


def labels_out(
    expected: dict[str, tuple], folder: str = "out", note: str | None = None, extra=()
) -> Check:
    """The folder holds exactly `expected` (name -> shape) label TIFFs (+ `extra` names)."""

    def check(d: Path, run: Run, before: dict) -> str | None:
        names = _listing(d / folder)
        want = sorted(set(expected) | set(extra))
        if names != want:
            return f"{folder}/ holds {names}, expected {want}"
        for name, shape in expected.items():
            p = d / folder / name
            if not p.is_file():
                return f"{name} missing"
            arr = tifffile.imread(p)
            if name.endswith("_probabilities.tif"):
                if arr.dtype.kind != "f":
                    return f"{name} has dtype {arr.dtype}, not probabilities"
                continue
            if arr.dtype.kind not in "ui":
                return f"{name} has dtype {arr.dtype}"
            if shape is not None and arr.shape != tuple(shape):
                return f"{name} has shape {arr.shape}, expected {tuple(shape)}"
        if note and note not in run.err:
            return f"no note {note!r} on stderr"
        return None

    return check


def model_out(rel: str = "m.pt", note: str | None = None) -> Check:
    """A loadable model at `rel`, new or different from the file there before."""

    def check(d: Path, run: Run, before: dict) -> str | None:
        p = d / rel
        if not p.is_file():
            return f"{rel} was not written"
        why = loadable(p)
        if why:
            return why
        old = before.get(os.fsencode(rel))
        if old is not None and old == _entry(os.fsencode(p)):
            return f"exit 0 but {rel} is unchanged"
        if note and note not in run.err:
            return f"no note {note!r} on stderr"
        return None

    return check


def csv_out(rel: str, images: int, min_rows: int = 1, column: str = "image") -> Check:
    import csv

    def check(d: Path, run: Run, before: dict) -> str | None:
        p = d / rel
        if not p.is_file():
            return f"{rel} was not written"
        try:
            rows = list(csv.DictReader(p.read_text(encoding="utf-8").splitlines()))
        except UnicodeDecodeError as exc:
            return f"{rel} is not UTF-8: {exc}"
        names = {r.get(column) for r in rows}
        if len(names) != images:
            return f"{rel} has {len(names)} image name(s), expected {images}"
        if len(rows) < min_rows:
            return f"{rel} has {len(rows)} row(s)"
        return None

    return check


def zips_out(names: list[str], folder: str = "rois") -> Check:
    def check(d: Path, run: Run, before: dict) -> str | None:
        got = _listing(d / folder)
        if got != sorted(names):
            return f"{folder}/ holds {got}, expected {sorted(names)}"
        return None

    return check


def json_stdout(*keys: str) -> Check:
    def check(d: Path, run: Run, before: dict) -> str | None:
        try:
            data = json.loads(run.out)
        except json.JSONDecodeError:
            return "stdout is not JSON"
        missing = [k for k in keys if k not in data]
        return f"JSON lacks {missing}" if missing else None

    return check


def mode_kept(rel: str, mode: int, inner: Check) -> Check:
    def check(d: Path, run: Run, before: dict) -> str | None:
        got = stat.S_IMODE(os.stat(d / rel).st_mode)
        if got != mode:
            return f"{rel} has mode {oct(got)}, was {oct(mode)}"
        return inner(d, run, before)

    return check


def both(*checks: Check) -> Check:
    def check(d: Path, run: Run, before: dict) -> str | None:
        for c in checks:
            why = c(d, run, before)
            if why:
                return why
        return None

    return check


def stderr_has(text: str) -> Check:
    return lambda d, run, before: None if text in run.err else f"no {text!r} on stderr"


def still_loadable(rel: str) -> Check:
    """Whatever the exit: `rel` loads (the old model or a complete new one)."""

    def check(d: Path, run: Run, before: dict) -> str | None:
        return loadable(d / rel) if (d / rel).exists() else f"{rel} was removed"

    return check


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    group: str
    argv: list
    setup: Callable[[Path], None] = std
    check: Check | None = None  # exit 0: what is wrong with the outputs, or None
    may_change: tuple[str, ...] = ()  # patterns of existing files a successful run may replace
    always: Check | None = None  # checked whatever the exit code
    timeout: float = 120
    signals: tuple[tuple[int, float], ...] = ()
    expect_stop: bool = False
    idx: int = 0
    result: dict = field(default_factory=dict)


CASES: list[Case] = []


def add(name: str, group: str, argv: list, **kw) -> None:
    CASES.append(Case(name, group, list(argv), **kw))


PRED = ["predict", "--model", "model.pt", "--images", "images", "--out", "out"]
TRAIN = ["train", "--images", "images", "--labels", "labels", "--out", "m.pt"]
FAST = {
    "--epochs": "1",
    "--steps-per-epoch": "2",
    "--patch-size": "32",
    "--batch-size": "2",
    "--depth": "2",
    "--base-channels": "4",
}
S64 = (64, 64)
ABC = {f"{n}.tif": S64 for n in "abc"}


def fast(*drop: str, **extra: str) -> list[str]:
    """The quick training options, less those in `drop`."""
    opts = {k: v for k, v in FAST.items() if k not in drop}
    if "--minutes" in drop or "--epochs" in drop:
        opts.pop("--epochs", None)
    return [x for kv in opts.items() for x in kv]


def train(*extra: str, drop=()) -> list[str]:
    return TRAIN + fast(*drop) + list(extra)


def output_path_cases() -> None:
    g = "output paths"
    add(
        "train --out is a folder",
        g,
        TRAIN[:-1] + ["existing"] + fast(),
        setup=do(std, mkdir("existing")),
    )
    add(
        "train --out is a folder, --overwrite",
        g,
        TRAIN[:-1] + ["existing", "--overwrite"] + fast(),
        setup=do(std, mkdir("existing")),
    )
    add("train --out under a file", g, TRAIN[:-1] + ["images/a.png/m.pt"] + fast())
    add("train --out exists", g, train(), setup=do(std, copy("model.pt", "m.pt")))
    add(
        "train --out exists, --overwrite",
        g,
        train("--overwrite"),
        setup=do(std, copy("model.pt", "m.pt")),
        check=model_out(),
        may_change=("m.pt",),
    )
    add(
        "train --out over an input label, --overwrite",
        g,
        TRAIN[:-1] + ["labels/a.tif", "--overwrite"] + fast(),
    )
    add(
        "train --out over an input image, --overwrite",
        g,
        TRAIN[:-1] + ["images/a.png", "--overwrite"] + fast(),
    )
    add(
        "train --out a read-only (0444) model, --overwrite",
        g,
        train("--overwrite"),
        setup=do(std, copy("model.pt", "m.pt"), chmod("m.pt", 0o444)),
        check=mode_kept("m.pt", 0o444, model_out()),
        may_change=("m.pt",),
    )
    add(
        "train --out in a read-only folder",
        g,
        TRAIN[:-1] + ["ro/m.pt"] + fast(),
        setup=do(std, mkdir("ro"), chmod("ro", 0o555)),
    )
    add(
        "train --resume X --out X (exists)",
        g,
        train("--resume", "m.pt"),
        setup=do(std, copy("model.pt", "m.pt")),
        check=model_out(),
        may_change=("m.pt",),
    )
    add(
        "train --resume X --out X (first run)",
        g,
        train("--resume", "m.pt"),
        check=model_out(note="training from scratch"),
    )
    add(
        "train --out a symlink to an input, --overwrite",
        g,
        TRAIN[:-1] + ["link.pt", "--overwrite"] + fast(),
        setup=do(std, symlink("link.pt", "labels/a.tif")),
    )
    add(
        "train images and labels one folder",
        g,
        ["train", "--images", "both", "--labels", "both", "--out", "m.pt"] + fast(),
        setup=do(
            std,
            copy("images", "both"),
            lambda d: [
                shutil.copy(p, d / "both" / f"{p.stem}_labels.tif")
                for p in (d / "labels").iterdir()
            ],
        ),
        check=model_out(),
    )
    add(
        "predict --out is a file", g, PRED[:-1] + ["file.txt"], setup=do(std, raw("file.txt", b"x"))
    )
    add("predict --out under a file", g, PRED[:-1] + ["images/a.png/out"])
    add(
        "predict --out in a read-only folder",
        g,
        PRED[:-1] + ["ro/out"],
        setup=do(std, mkdir("ro"), chmod("ro", 0o555)),
    )
    add("predict outputs exist", g, PRED, setup=do(std, copy("labels", "out")))
    add(
        "predict outputs exist, --overwrite",
        g,
        PRED + ["--overwrite"],
        setup=do(std, copy("labels", "out")),
        check=labels_out(ABC),
        may_change=("out/*",),
    )
    add(
        "predict over a read-only (0444) output, --overwrite",
        g,
        PRED + ["--overwrite"],
        setup=do(std, copy("labels", "out"), chmod("out/a.tif", 0o444)),
        check=mode_kept("out/a.tif", 0o444, labels_out(ABC)),
        may_change=("out/*",),
    )
    add("predict a.png and a.tif", g, PRED, setup=do(std, write("images/a.tif", nuclei(seed=5)[0])))
    add(
        "predict --out = --images (TIFF inputs), --overwrite",
        g,
        ["predict", "--model", "model.pt", "--images", "tifs", "--out", "tifs", "--overwrite"],
        setup=do(std, write("tifs/a.tif", nuclei()[0]), write("tifs/b.tif", nuclei(seed=1)[0])),
    )
    add(
        "predict --out = --images (PNG inputs)",
        g,
        PRED[:-1] + ["images"],
        check=labels_out(ABC, folder="images", extra=["a.png", "b.png", "c.png"]),
    )
    add(
        "predict a glob through a symlink loop",
        g,
        ["predict", "--model", "model.pt", "--images", "images/**/*.png", "--out", "out"],
        setup=do(std, symlink("images/sub", ".")),
        check=labels_out(ABC),
    )
    add(
        "predict --out a symlink to --images (TIFF), --overwrite",
        g,
        ["predict", "--model", "model.pt", "--images", "tifs", "--out", "outlink", "--overwrite"],
        setup=do(std, write("tifs/a.tif", nuclei()[0]), symlink("outlink", "tifs")),
    )
    add(
        "predict a dangling symlink in the folder",
        g,
        PRED,
        setup=do(std, symlink("images/d.png", "nowhere.png")),
        check=labels_out(ABC),
    )
    add(
        "predict --images a dangling symlink",
        g,
        PRED[:3] + ["--images", "dangling.png", "--out", "out"],
        setup=do(std, symlink("dangling.png", "nowhere.png")),
    )
    add("predict a chmod-000 image", g, PRED, setup=do(std, chmod("images/b.png", 0)))
    add("predict a chmod-000 folder", g, PRED, setup=do(std, chmod("images", 0)))
    add(
        "predict a FIFO named x.png in the folder",
        g,
        PRED,
        setup=do(std, mkfifo("images/x.png")),
        check=labels_out(ABC),
        timeout=60,
    )
    add(
        "predict a folder named x.png in the folder",
        g,
        PRED,
        setup=do(std, mkdir("images/x.png")),
        check=labels_out(ABC),
    )
    add(
        "predict a glob that matches nothing",
        g,
        PRED[:3] + ["--images", "images/*.jpg", "--out", "out"],
    )
    add(
        "predict --save-probabilities with a.png and a_probabilities.png",
        g,
        PRED + ["--save-probabilities"],
        setup=do(std, copy("images/b.png", "images/a_probabilities.png")),
    )
    add(
        "predict --measure with an input named measurements.png",
        g,
        PRED + ["--measure"],
        setup=do(std, copy("images/b.png", "images/measurements.png")),
        check=both(
            labels_out({**ABC, "measurements.tif": S64}, extra=["measurements.csv"]),
            csv_out("out/measurements.csv", 4),
        ),
    )
    add(
        "split --out is a file",
        g,
        ["split", "--input", "labels", "--out", "file.txt"],
        setup=do(std, raw("file.txt", b"x")),
    )
    add(
        "split a.png and a.tif",
        g,
        ["split", "--input", "labels", "--out", "out"],
        setup=do(std, write("labels/a.png", nuclei(seed=3)[1].astype(np.uint8))),
    )
    add(
        "split --out = --input, --overwrite",
        g,
        ["split", "--input", "labels", "--out", "labels", "--overwrite"],
    )
    add(
        "split outputs exist",
        g,
        ["split", "--input", "labels", "--out", "out"],
        setup=do(std, copy("labels", "out")),
    )
    add(
        "split a glob through a symlink loop",
        g,
        ["split", "--input", "labels/**/*.tif", "--out", "out"],
        setup=do(std, symlink("labels/sub", ".")),
        check=labels_out(ABC),
    )
    add(
        "split --out in a read-only folder",
        g,
        ["split", "--input", "labels", "--out", "ro/out"],
        setup=do(std, mkdir("ro"), chmod("ro", 0o555)),
    )
    add(
        "measure --out is a folder",
        g,
        ["measure", "--labels", "labels", "--out", "t.csv"],
        setup=do(std, mkdir("t.csv")),
    )
    add("measure --out not .csv", g, ["measure", "--labels", "labels", "--out", "t.txt"])
    add(
        "measure --out under a file",
        g,
        ["measure", "--labels", "labels", "--out", "images/a.png/t.csv"],
    )
    add(
        "measure --out exists",
        g,
        ["measure", "--labels", "labels", "--out", "t.csv"],
        setup=do(std, raw("t.csv", b"old\n")),
    )
    add(
        "measure --out exists, --overwrite",
        g,
        ["measure", "--labels", "labels", "--out", "t.csv", "--overwrite"],
        setup=do(std, raw("t.csv", b"old\n")),
        check=csv_out("t.csv", 3),
        may_change=("t.csv",),
    )
    add(
        "measure a.png and a.tif labels",
        g,
        ["measure", "--labels", "labels", "--out", "t.csv"],
        setup=do(std, write("labels/a.png", nuclei(seed=3)[1].astype(np.uint8))),
        check=csv_out("t.csv", 4),
    )
    add(
        "measure --out in a read-only folder",
        g,
        ["measure", "--labels", "labels", "--out", "ro/t.csv"],
        setup=do(std, mkdir("ro"), chmod("ro", 0o555)),
    )
    add(
        "export-rle --out is a folder",
        g,
        ["export-rle", "--labels", "labels", "--out", "r.csv"],
        setup=do(std, mkdir("r.csv")),
    )
    add(
        "export-rle a.png and a.tif",
        g,
        ["export-rle", "--labels", "labels", "--out", "r.csv"],
        setup=do(std, write("labels/a.png", nuclei(seed=3)[1].astype(np.uint8))),
    )
    add(
        "export-rle --out over an input, --overwrite",
        g,
        ["export-rle", "--labels", "labels", "--out", "labels/a.tif", "--overwrite"],
    )
    add(
        "export-rle --out exists",
        g,
        ["export-rle", "--labels", "labels", "--out", "r.csv"],
        setup=do(std, raw("r.csv", b"old\n")),
    )
    add(
        "export-rle --out exists, --overwrite",
        g,
        ["export-rle", "--labels", "labels", "--out", "r.csv", "--overwrite"],
        setup=do(std, raw("r.csv", b"old\n")),
        check=csv_out("r.csv", 3, column="ImageId"),
        may_change=("r.csv",),
    )
    add(
        "export-rois --out is a file",
        g,
        ["export-rois", "--labels", "labels", "--out", "file.txt"],
        setup=do(std, raw("file.txt", b"x")),
    )
    add(
        "export-rois a.png and a.tif",
        g,
        ["export-rois", "--labels", "labels", "--out", "rois"],
        setup=do(std, write("labels/a.png", nuclei(seed=3)[1].astype(np.uint8))),
    )
    add(
        "export-rois one .zip for three images",
        g,
        ["export-rois", "--labels", "labels", "--out", "r.zip"],
    )
    add(
        "export-rois outputs exist",
        g,
        ["export-rois", "--labels", "labels", "--out", "rois"],
        setup=do(std, mkdir("rois"), raw("rois/a_rois.zip", b"old")),
    )
    add(
        "export-rois --out = the labels folder",
        g,
        ["export-rois", "--labels", "labels", "--out", "labels"],
        check=zips_out(
            ["a.tif", "a_rois.zip", "b.tif", "b_rois.zip", "c.tif", "c_rois.zip"], folder="labels"
        ),
    )
    add(
        "export-bioimageio OUT is a folder",
        g,
        ["export-bioimageio", "model.pt", "pkg.zip"],
        setup=do(std, mkdir("pkg.zip")),
    )
    add(
        "export-bioimageio OUT exists",
        g,
        ["export-bioimageio", "model.pt", "pkg.zip"],
        setup=do(std, raw("pkg.zip", b"old")),
    )
    add(
        "export-bioimageio OUT over the model, --overwrite",
        g,
        ["export-bioimageio", "model.pt", "model.pt", "--overwrite"],
    )
    add(
        "demo --out is a file",
        g,
        ["demo", "--headless", "--out", "file.txt"],
        setup=do(std, raw("file.txt", b"x")),
    )


TRAIN_FLOAT_KINDS = {  # the kinds also trained on (each training run takes seconds)
    "one NaN",
    "+inf",
    "float64 1e300",
    "float32 1e30 scale",
    "float32 constant zeros",
    "int32 negative",
    "bool",
}


def probability_cases() -> None:
    g = "output paths"
    probs = {f"{n}_probabilities.tif": None for n in "abc"}
    add(
        "predict --save-probabilities",
        g,
        PRED + ["--save-probabilities"],
        check=labels_out({**ABC, **probs}),
    )
    add(
        "predict --save-probabilities over an earlier probabilities file",
        g,
        PRED + ["--save-probabilities"],
        setup=do(std, raw("out/a_probabilities.tif", b"earlier")),
    )


def float_cases() -> None:
    g = "float images"
    base, lab = nuclei()
    f32 = base.astype(np.float32)

    def with_(fn, dtype=np.float32, shape=S64):
        img = nuclei(shape)[0].astype(dtype)
        fn(img)
        return img

    kinds = {
        "all NaN": (with_(lambda a: a.fill(np.nan)), False),
        "one NaN": (with_(lambda a: a.__setitem__((3, 3), np.nan)), False),
        "+inf": (with_(lambda a: a.__setitem__((3, 3), np.inf)), False),
        "-inf": (with_(lambda a: a.__setitem__((3, 3), -np.inf)), False),
        "float64 1e300": (with_(lambda a: a.__setitem__((3, 3), 1e300), np.float64), False),
        "float64 -1e300 everywhere": (with_(lambda a: a.__imul__(-1e300), np.float64), False),
        "float32 1e30 scale": (f32 * 1e30, True),
        "float32 1e-30 scale": (f32 * 1e-30, True),
        "float16": (base.astype(np.float16), True),
        "float64 negative": (base.astype(np.float64) - 1000, True),
        "float32 constant zeros": (np.zeros(S64, np.float32), True),
        "int32 negative": (base.astype(np.int32) - 70000, True),
        "uint16 full range": ((base.astype(np.uint16) * 257), True),
        "bool": ((lab > 0), True),
    }
    for name, (img, ok) in kinds.items():
        add(
            f"predict {name}",
            g,
            PRED[:3] + ["--images", "f", "--out", "out"],
            setup=do(std, write("f/a.tif", img)),
            check=labels_out({"a.tif": S64}) if ok else None,
        )
        if name not in TRAIN_FLOAT_KINDS:
            continue
        trainable = ok and name not in ("float32 constant zeros",)
        add(
            f"train {name}",
            g,
            ["train", "--images", "f", "--labels", "fl", "--out", "m.pt"] + fast(),
            setup=do(std, write("f/a.tif", img), write("fl/a.tif", lab)),
            check=model_out() if trainable else None,
        )
    for size in (300, 2100):
        img = nuclei((size, size))[0].astype(np.float32)
        img[size - 2, size - 3] = np.nan
        add(
            f"predict one NaN in {size}x{size}",
            g,
            PRED[:3] + ["--images", "f", "--out", "out"],
            setup=do(std, write("f/a.tif", img)),
        )
    big = nuclei((300, 300))[0].astype(np.float32) * 1e20
    add(
        "predict 300x300 float32 1e20 scale",
        g,
        PRED[:3] + ["--images", "f", "--out", "out"],
        setup=do(std, write("f/a.tif", big)),
        check=labels_out({"a.tif": (300, 300)}),
    )
    prob = np.random.default_rng(0).random(S64).astype(np.float32)
    prob[5, 5] = np.nan
    add(
        "split a probability map with NaN",
        g,
        ["split", "--input", "p.tif", "--out", "out"],
        setup=do(std, write("p.tif", prob)),
    )
    add(
        "split a probability map above 1",
        g,
        ["split", "--input", "p.tif", "--out", "out"],
        setup=do(std, write("p.tif", prob * 0 + 7.5)),
    )
    nan_img = f32.copy()
    nan_img[5, 5] = np.nan
    add(
        "measure --images with a NaN",
        g,
        ["measure", "--labels", "labels/a.tif", "--images", "f/a.tif", "--out", "t.csv"],
        setup=do(std, write("f/a.tif", nan_img)),
    )
    fl = lab.astype(np.float32)
    fl[2, 2] = np.nan
    add(
        "measure NaN labels",
        g,
        ["measure", "--labels", "l/a.tif", "--out", "t.csv"],
        setup=do(std, write("l/a.tif", fl)),
    )
    add(
        "export-rois float labels with fractions",
        g,
        ["export-rois", "--labels", "l/a.tif", "--out", "rois"],
        setup=do(std, write("l/a.tif", lab.astype(np.float32) + 0.5)),
    )
    add(
        "train float labels with NaN",
        g,
        ["train", "--images", "images/a.png", "--labels", "l", "--out", "m.pt"] + fast(),
        setup=do(std, write("l/a.tif", fl)),
    )
    add(
        "evaluate NaN labels",
        g,
        ["evaluate", "--pred", "l", "--gt", "labels/a.tif"],
        setup=do(std, write("l/a.tif", fl)),
    )


def channel_cases() -> None:
    g = "channel axes"
    rng = np.random.default_rng(0)
    img, lab = nuclei()
    ga = np.stack([img, rng.integers(0, 255, S64, dtype=np.uint8)], -1)
    ga_const = np.stack([img, np.full(S64, 255, np.uint8)], -1)
    rgb = np.stack([img, img // 2, 255 - img], -1)
    rgba = np.concatenate([rgb, np.full(S64 + (1,), 255, np.uint8)], -1)
    one = do(std)

    def pred(name, arr, check=None, model="model.pt", extra=(), fname="x.tif", **kw):
        add(
            name,
            g,
            ["predict", "--model", model, "--images", "f", "--out", "out", *extra],
            setup=do(one, write(f"f/{fname}", arr, **kw)),
            check=check,
        )

    pred("grey+alpha PNG (alpha varies)", ga, fname="x.png")
    pred("grey+constant alpha PNG", ga_const, labels_out({"x.tif": S64}), fname="x.png")
    pred("256x256x2 TIFF", np.stack([nuclei((256, 256))[0]] * 2, -1))
    pred("RGB PNG on a grey model", rgb, fname="x.png")
    pred(
        "RGB PNG on an RGB model",
        rgb,
        labels_out({"x.tif": S64}),
        model="rgb_model.pt",
        fname="x.png",
    )
    pred(
        "RGBA (constant alpha) on an RGB model",
        rgba,
        labels_out({"x.tif": S64}),
        model="rgb_model.pt",
        fname="x.png",
    )
    pred(
        "grey PNG on an RGB model",
        img,
        labels_out({"x.tif": S64}),
        model="rgb_model.pt",
        fname="x.png",
    )
    big = np.random.default_rng(0).integers(0, 65535, (64, 64, 300), dtype=np.uint16)
    pred(
        "64x64x300 TIFF without axes",
        big,
        labels_out({"x.tif": (64, 64, 300)}, note="64 planes of 64 x 300"),
    )
    pred("64x64x300 TIFF --channel-axis -1", big, extra=["--channel-axis", "-1"])
    pred(
        "64x64x300 TIFF --channel-axis none",
        big,
        labels_out({"x.tif": (64, 64, 300)}),
        extra=["--channel-axis", "none"],
    )
    pred("64x64x5 TIFF without axes", rng.integers(0, 255, (64, 64, 5), dtype=np.uint8))
    pred("64x64x1 TIFF", img[..., None], labels_out({"x.tif": S64}), photometric="minisblack")
    pred("1x64x64 TIFF", img[None], labels_out({"x.tif": None}))
    pred(
        "3x64x64 TIFF on an RGB model",
        np.stack([img] * 3),
        labels_out({"x.tif": S64}),
        model="rgb_model.pt",
    )
    pred(
        "3x64x64 TIFF on a grey model (3 planes)",
        np.stack([img] * 3),
        labels_out({"x.tif": (3, 64, 64)}),
    )
    pred("RGB --channel-axis 0", rgb, extra=["--channel-axis", "0"], fname="x.png")
    pred(
        "RGB --channel-axis none",
        rgb,
        labels_out({"x.tif": (64, 64, 3)}),
        extra=["--channel-axis", "none"],
        fname="x.png",
    )
    pred("2D --channel-axis 0", img, extra=["--channel-axis", "0"], fname="x.png")
    tz = np.stack([np.stack([img] * 3)] * 2)[:, :, None]  # T, Z, C=1, Y, X
    pred(
        "ImageJ TZCYX, 1 channel",
        tz,
        labels_out({"x.tif": (2, 3, 64, 64)}),
        imagej=True,
        metadata={"axes": "TZCYX"},
    )
    pred(
        "ImageJ TZCYX, 2 channels",
        np.concatenate([tz, tz], 2),
        imagej=True,
        metadata={"axes": "TZCYX"},
    )
    pred(
        "ImageJ ZCYX, 3 channels on an RGB model",
        np.stack([np.stack([img] * 3)] * 2),
        labels_out({"x.tif": (2, 64, 64)}),
        model="rgb_model.pt",
        imagej=True,
        metadata={"axes": "ZCYX"},
    )
    pred(
        "OME-TIFF CYX, 2 channels",
        np.stack([img, img]),
        fname="x.ome.tif",
        ome=True,
        metadata={"axes": "CYX"},
    )
    pred(
        "OME-TIFF ZYX",
        np.stack([img] * 4),
        labels_out({"x.tif": (4, 64, 64)}),
        fname="x.ome.tif",
        ome=True,
        metadata={"axes": "ZYX"},
    )
    pred(
        "4D TIFF without axes",
        np.stack([np.stack([img] * 3)] * 2),
        labels_out({"x.tif": (2, 3, 64, 64)}),
    )
    pred("1D TIFF", img[0])
    pred("1x1 image", img[:1, :1], labels_out({"x.tif": None}))
    pred("1x3000 image", np.tile(img[:1], (1, 47)), labels_out({"x.tif": (1, 3008)}))
    pred("complex64 TIFF", img.astype(np.complex64))
    pred("16-bit grey PNG", img.astype(np.uint16) * 200, labels_out({"x.tif": S64}), fname="x.png")
    pred("JPEG", img, labels_out({"x.tif": S64}), fname="x.jpg")
    pred("BMP", rgb, labels_out({"x.tif": S64}), model="rgb_model.pt", fname="x.bmp")
    pal = np.zeros(S64, np.uint8)
    pal[10:20, 10:20] = 1
    add(
        "predict a palette PNG",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(
            one,
            mkdir("f"),
            lambda d: __import__("PIL.Image").Image.fromarray(pal, "P").save(d / "f/x.png"),
        ),
        check=labels_out({"x.tif": S64}),
    )

    def two_series(p_rel):
        def w(d):
            (d / "f").mkdir(exist_ok=True)
            with tifffile.TiffWriter(d / p_rel) as t:
                t.write(img)
                t.write(img[:32])

        return w

    add(
        "predict a multi-series TIFF",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, two_series("f/x.tif")),
        check=labels_out({"x.tif": S64}, note="holds 2 images"),
    )
    add(
        "predict x.ome.tif",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, write("f/x.ome.tif", img, ome=True)),
        check=labels_out({"x.tif": S64}),
    )
    add(
        "predict x.ome.tif and x.tif",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, write("f/x.ome.tif", img, ome=True), write("f/x.tif", img)),
    )
    add(
        "predict a PNG named .tif",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, mkdir("f"), lambda d: shutil.copy(d / "images/a.png", d / "f/x.tif")),
    )
    add(
        "predict a TIFF named .png",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, mkdir("f"), lambda d: tifffile.imwrite(d / "f/x.png", img)),
        check=labels_out({"x.tif": S64}),
    )
    add(
        "predict an empty .png",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, raw("f/x.png", b"")),
    )
    add(
        "predict a text file named .tif",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, raw("f/x.tif", b"hello\n")),
    )

    def trunc(rel, src):
        def w(d):
            data = (d / src).read_bytes()
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data[: len(data) // 2])

        return w

    add(
        "predict a truncated TIFF",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, write("g/x.tif", img), trunc("f/x.tif", "g/x.tif")),
    )
    add(
        "predict a truncated PNG",
        g,
        ["predict", "--model", "model.pt", "--images", "f", "--out", "out"],
        setup=do(one, trunc("f/x.png", "images/a.png")),
    )
    add(
        "train grey+alpha images with grey labels",
        g,
        ["train", "--images", "f", "--labels", "l", "--out", "m.pt"] + fast(),
        setup=do(one, write("f/a.png", ga), write("l/a.tif", lab)),
        check=model_out(),
    )
    add(
        "train 64x64x300 image and labels",
        g,
        ["train", "--images", "f", "--labels", "l", "--out", "m.pt"] + fast(),
        setup=do(one, write("f/a.tif", big), write("l/a.tif", (big > 60000).astype(np.uint16))),
        check=model_out(),
    )
    add(
        "train 64x64x300 image, 64x64 labels",
        g,
        ["train", "--images", "f", "--labels", "l", "--out", "m.pt"] + fast(),
        setup=do(one, write("f/a.tif", big), write("l/a.tif", lab)),
    )
    add(
        "split RGB labels whose channels differ",
        g,
        ["split", "--input", "f", "--out", "out"],
        setup=do(one, write("f/x.png", rgb)),
    )
    add(
        "measure a 64x64x300 label stack",
        g,
        ["measure", "--labels", "l", "--out", "t.csv"],
        setup=do(one, write("l/a.tif", (big > 65000).astype(np.uint16))),
        check=csv_out("t.csv", 1),
    )


NUMERIC = ["-1", "0", "nan", "inf", "1e308", "abc"]
INT_HUGE = "1000000000000"


H = "huge"  # in the tables below: 1e308 for a float option, 10**12 for a whole number
# Every numeric option of every sub-command: its type and which of the hostile values
# are meaningful (the others must be refused). A huge budget runs until SIGTERM.
TRAIN_OPTS = {
    "--minutes": (float, {H}),
    "--epochs": (int, {H}),
    "--patch-size": (int, set()),
    "--batch-size": (int, set()),
    "--depth": (int, set()),
    "--base-channels": (int, set()),
    "--border-weight": (float, {"0"}),
    "--zoom": (float, {"0"}),
    "--interface-weight": (float, {"0"}),
    "--contact-gap": (int, {"0"}),
    "--sample-by-loss": (float, {"0"}),
    "--ema": (float, {"0"}),
    "--lr": (float, set()),
    "--val-fraction": (float, {"0"}),
    "--patience": (int, {"0", H}),
    "--steps-per-epoch": (int, {H}),
    "--seed": (int, {"0"}),
}
PREDICT_OPTS = {
    "--tile-size": (int, {H}),
    "--overlap": (int, {"0"}),
    "--batch-size": (int, {H}),
    "--threshold": (float, set()),
    "--min-distance": (int, {H}),
    "--h": (float, {"0", H}),
    "--boundary-threshold": (float, set()),
    "--min-size": (int, {"0", H}),
    "--block-size": (int, {H}),  # zarr input only: ignored for files
    "--block-margin": (int, {H}),
    "--channel-axis": (str, set()),  # -1 and 0 name a spatial axis of a 2D image
}
SPLIT_OPTS = {
    "--min-distance": (int, {H}),
    "--h": (float, {H}),
    "--smooth": (float, {"0"}),
    "--min-size": (int, {"0", H}),
    "--threshold": (float, set()),
}
LONG_RUNNING = {"--minutes", "--epochs", "--steps-per-epoch"}


def _values(kind):
    for v in NUMERIC:
        if v == "1e308":
            yield H, (INT_HUGE if kind is int else "1e308")
        else:
            yield v, v


def option_cases() -> None:
    g = "option ranges"
    for opt, (kind, valid) in TRAIN_OPTS.items():
        for key, v in _values(kind):
            sig = ((signal.SIGTERM, 12.0),) if opt in LONG_RUNNING and key == H else ()
            add(
                f"train {opt} {v}",
                g,
                TRAIN + fast(opt) + [opt, v],
                check=model_out() if key in valid else None,
                signals=sig,
                expect_stop=bool(sig),
            )
    for opt, (kind, valid) in PREDICT_OPTS.items():
        for key, v in _values(kind):
            ok = labels_out(ABC) if key in valid else None
            add(f"predict {opt} {v}", g, PRED + [opt, v], check=ok)
    for _key, v in _values(float):
        add(f"predict --measure --pixel-size {v}", g, PRED + ["--measure", "--pixel-size", v])
    add(
        "predict --measure --pixel-size 0.5",
        g,
        PRED + ["--measure", "--pixel-size", "0.5"],
        check=both(labels_out(ABC, extra=["measurements.csv"]), csv_out("out/measurements.csv", 3)),
    )
    for opt, (kind, valid) in SPLIT_OPTS.items():
        for key, v in _values(kind):
            ok = labels_out(ABC) if key in valid else None
            add(
                f"split {opt} {v}",
                g,
                ["split", "--input", "labels", "--out", "out", opt, v],
                check=ok,
            )
    for _key, v in _values(float):
        add(
            f"measure --pixel-size {v}",
            g,
            ["measure", "--labels", "labels", "--out", "t.csv", "--pixel-size", v],
        )
    add(
        "measure --pixel-size with 4 values",
        g,
        ["measure", "--labels", "labels", "--out", "t.csv", "--pixel-size", "1", "1", "1", "1"],
    )
    add(
        "measure --unit without --pixel-size",
        g,
        ["measure", "--labels", "labels", "--out", "t.csv", "--unit", "nm"],
    )
    for key, v in _values(float):
        sig = ((signal.SIGTERM, 12.0),) if key == H else ()
        add(
            f"demo --minutes {v}",
            g,
            ["demo", "--headless", "--out", "demo", "--minutes", v],
            setup=lambda d: None,
            signals=sig,
            expect_stop=bool(sig),
        )


def model_cases() -> None:
    g = "model files"
    # a model without "normalisation" uses the defaults, as files from before it was
    # saved did (core.checkpoint reads it with .get); every other damage is refused
    usable = {"meta-no-normalisation"}
    resume_too = {
        "empty",
        "truncated-half",
        "pickle-payload-torch",
        "pickle-payload-plain",
        "meta-no-outputs",
        "meta-no-normalisation",
        "meta-spec-depth-99",
        "folder-named-pt",
        "symlink-loop",
        "chmod-000",
    }
    for kind, make in DAMAGED_MODELS.items():
        add(
            f"predict --model {kind}",
            g,
            ["predict", "--model", "bad.pt", "--images", "images", "--out", "out"],
            setup=do(std, make),
            check=labels_out(ABC) if kind in usable else None,
        )
        if kind in resume_too:
            add(
                f"train --resume {kind}",
                g,
                TRAIN + fast() + ["--resume", "bad.pt"],
                setup=do(std, make),
                check=model_out() if kind in usable else None,
            )
    for kind in ("truncated-half", "pickle-payload-torch", "meta-no-outputs", "folder-named-pt"):
        add(
            f"export-bioimageio {kind}",
            g,
            ["export-bioimageio", "bad.pt", "pkg.zip"],
            setup=do(std, DAMAGED_MODELS[kind]),
        )
    add(
        "predict --model missing",
        g,
        ["predict", "--model", "nope.pt", "--images", "images", "--out", "out"],
    )
    add("train --resume missing", g, TRAIN + fast() + ["--resume", "nope.pt"])
    add(
        "train --resume an RGB model on grey images",
        g,
        TRAIN + fast() + ["--resume", "rgb_model.pt"],
        check=model_out(),
    )


def non_utf8_cases() -> None:
    g = "non-UTF-8"
    img, lab = nuclei()
    name = b"img_\xff"
    bad_images = do(
        std, write(b"images/" + name + b".png", img), write(b"labels/" + name + b".tif", lab)
    )
    four = {**ABC, f"img_{XFF}.tif": S64}
    add("predict a non-UTF-8 file name", g, PRED, setup=bad_images, check=labels_out(four))
    add("train a non-UTF-8 file name", g, train(), setup=bad_images, check=model_out())
    add(
        "split a non-UTF-8 file name",
        g,
        ["split", "--input", "labels", "--out", "out"],
        setup=bad_images,
        check=labels_out(four),
    )
    add(
        "measure a non-UTF-8 file name",
        g,
        ["measure", "--labels", "labels", "--images", "images", "--out", "t.csv"],
        setup=bad_images,
        check=both(csv_out("t.csv", 4), stderr_has("not valid UTF-8")),
    )
    add(
        "export-rle a non-UTF-8 file name",
        g,
        ["export-rle", "--labels", "labels", "--out", "r.csv"],
        setup=bad_images,
        check=both(csv_out("r.csv", 4, column="ImageId"), stderr_has("not valid UTF-8")),
    )
    add(
        "export-rois a non-UTF-8 file name",
        g,
        ["export-rois", "--labels", "labels", "--out", "rois"],
        setup=bad_images,
        check=zips_out([f"{n}_rois.zip" for n in ["a", "b", "c", f"img_{XFF}"]]),
    )
    add(
        "evaluate a non-UTF-8 file name",
        g,
        ["evaluate", "--pred", "labels", "--gt", "labels2", "--per-image"],
        setup=do(bad_images, copy("labels", "labels2")),
        check=json_stdout("per_image"),
    )
    add(
        "predict --out a non-UTF-8 folder",
        g,
        PRED[:-1] + [b"out_\xff"],
        check=labels_out(ABC, folder=f"out_{XFF}"),
    )
    add(
        "train --out a non-UTF-8 model name",
        g,
        TRAIN[:-1] + [b"m_\xff.pt"] + fast(),
        check=model_out(f"m_{XFF}.pt"),
    )
    add(
        "measure --out a non-UTF-8 CSV name",
        g,
        ["measure", "--labels", "labels", "--out", b"t_\xff.csv"],
        check=csv_out(f"t_{XFF}.csv", 3),
    )
    add(
        "predict --model a non-UTF-8 name",
        g,
        ["predict", "--model", b"m_\xff.pt", "--images", "images", "--out", "out"],
        setup=do(
            std, lambda d: shutil.copy(d / "model.pt", os.fsdecode(os.fsencode(d) + b"/m_\xff.pt"))
        ),
        check=labels_out(ABC),
    )
    ids = do(std, raw("ids.txt", b"a\nb\n" + b"caf\xe9\n"))
    add("predict --ids-file not UTF-8", g, PRED + ["--ids-file", "ids.txt"], setup=ids)
    add("train --ids-file not UTF-8", g, train("--ids-file", "ids.txt"), setup=ids)
    add(
        "evaluate --ids-file not UTF-8",
        g,
        ["evaluate", "--pred", "labels", "--gt", "labels", "--ids-file", "ids.txt"],
        setup=ids,
    )
    cfg = do(std, raw("cfg.json", b'{"lr": 0.001, "loss": "bce\xff"}'))
    add("train --config not UTF-8", g, train("--config", "cfg.json"), setup=cfg)
    add(
        "predict --images a non-UTF-8 glob",
        g,
        ["predict", "--model", "model.pt", "--images", b"images/*\xff*.png", "--out", "out"],
        setup=bad_images,
        check=labels_out({f"img_{XFF}.tif": S64}),
    )


def empty_cases() -> None:
    g = "empty / missing"
    empty = do(std, mkdir("e"))
    add(
        "predict an empty folder",
        g,
        ["predict", "--model", "model.pt", "--images", "e", "--out", "out"],
        setup=empty,
    )
    add(
        "train an empty images folder",
        g,
        ["train", "--images", "e", "--labels", "labels", "--out", "m.pt"] + fast(),
        setup=empty,
    )
    add(
        "train an empty labels folder",
        g,
        ["train", "--images", "images", "--labels", "e", "--out", "m.pt"] + fast(),
        setup=empty,
    )
    add("split an empty folder", g, ["split", "--input", "e", "--out", "out"], setup=empty)
    add("measure an empty folder", g, ["measure", "--labels", "e", "--out", "t.csv"], setup=empty)
    add(
        "export-rle an empty folder",
        g,
        ["export-rle", "--labels", "e", "--out", "r.csv"],
        setup=empty,
    )
    add(
        "export-rois an empty folder",
        g,
        ["export-rois", "--labels", "e", "--out", "rois"],
        setup=empty,
    )
    add("evaluate an empty folder", g, ["evaluate", "--pred", "e", "--gt", "labels"], setup=empty)
    only_sys = do(
        std,
        raw("e/Thumbs.db", b"x"),
        raw("e/.DS_Store", b"x"),
        raw("e/notes.txt", b"x"),
        raw("e/._a.png", b"x"),
    )
    add(
        "predict a folder of system files",
        g,
        ["predict", "--model", "model.pt", "--images", "e", "--out", "out"],
        setup=only_sys,
    )
    add(
        "predict --images missing",
        g,
        ["predict", "--model", "model.pt", "--images", "nope", "--out", "out"],
    )
    add(
        "predict --ids-file empty",
        g,
        PRED + ["--ids-file", "ids.txt"],
        setup=do(std, raw("ids.txt", b"\n\n")),
    )
    add(
        "predict --ids-file matching nothing",
        g,
        PRED + ["--ids-file", "ids.txt"],
        setup=do(std, raw("ids.txt", b"zzz\n")),
    )
    add(
        "predict --ids-file is a folder",
        g,
        PRED + ["--ids-file", "ids"],
        setup=do(std, mkdir("ids")),
    )
    add(
        "predict --ids-file chmod 000",
        g,
        PRED + ["--ids-file", "ids.txt"],
        setup=do(std, raw("ids.txt", b"a\n"), chmod("ids.txt", 0)),
    )
    add(
        "predict --ids-file picks one",
        g,
        PRED + ["--ids-file", "ids.txt"],
        setup=do(std, raw("ids.txt", b"b\n")),
        check=labels_out({"b.tif": S64}),
    )
    add("train a chmod-000 label", g, train(), setup=do(std, chmod("labels/b.tif", 0)))
    add(
        "train images without any labels",
        g,
        train(),
        setup=do(
            std, lambda d: [p.rename(p.with_name("z" + p.name)) for p in (d / "labels").iterdir()]
        ),
    )
    add(
        "measure labels holding no objects",
        g,
        ["measure", "--labels", "l", "--out", "t.csv"],
        setup=do(std, write("l/a.tif", np.zeros(S64, np.uint16))),
        check=lambda d, r, b: None if (d / "t.csv").is_file() else "no CSV",
    )
    add(
        "export-rois labels holding no objects",
        g,
        ["export-rois", "--labels", "l", "--out", "rois"],
        setup=do(std, write("l/a.tif", np.zeros(S64, np.uint16))),
        check=zips_out([]),
    )
    add(
        "train labels all zero",
        g,
        ["train", "--images", "images/a.png", "--labels", "l", "--out", "m.pt"] + fast(),
        setup=do(std, write("l/a.tif", np.zeros(S64, np.uint16))),
    )


def mismatch_cases() -> None:
    g = "mismatched inputs"
    img, lab = nuclei()
    add(
        "train labels of another shape",
        g,
        train(),
        setup=do(std, write("labels/a.tif", np.zeros((60, 64), np.uint16) + 1)),
    )
    add(
        "train 3D labels for 2D images",
        g,
        train(),
        setup=do(std, write("labels/a.tif", np.stack([lab] * 5))),
    )
    add(
        "train 2D labels for a 12-plane stack",
        g,
        ["train", "--images", "f", "--labels", "l", "--out", "m.pt"] + fast(),
        setup=do(std, write("f/a.tif", np.stack([img] * 12)), write("l/a.tif", lab)),
    )
    add(
        "train RGB and grey images mixed",
        g,
        train(),
        setup=do(std, rm("images/a.png"), write("images/a.png", np.stack([img] * 3, -1))),
        check=model_out(),
    )
    add(
        "train two label files for one image",
        g,
        train(),
        setup=do(
            std,
            rm("labels/a.tif"),
            write("labels/a_masks.tif", lab),
            write("labels/a_labels.tif", lab),
        ),
    )
    add(
        "measure --images of another shape",
        g,
        ["measure", "--labels", "labels", "--images", "f", "--out", "t.csv"],
        setup=do(std, write("f/a.png", img[:40]), write("f/b.png", img), write("f/c.png", img)),
    )
    add(
        "measure --images missing one",
        g,
        ["measure", "--labels", "labels", "--images", "f", "--out", "t.csv"],
        setup=do(std, write("f/a.png", img)),
    )
    add(
        "evaluate shapes differ",
        g,
        ["evaluate", "--pred", "p", "--gt", "labels"],
        setup=do(std, write("p/a.tif", lab[:40]), write("p/b.tif", lab), write("p/c.tif", lab)),
    )
    add(
        "evaluate a prediction without ground truth",
        g,
        ["evaluate", "--pred", "p", "--gt", "labels"],
        setup=do(std, write("p/z.tif", lab)),
    )
    add(
        "evaluate",
        g,
        ["evaluate", "--pred", "labels", "--gt", "labels2"],
        setup=do(std, copy("labels", "labels2")),
        check=json_stdout(),
    )
    add(
        "split a uint8 probability map",
        g,
        ["split", "--input", "p.tif", "--out", "out"],
        setup=do(
            std, write("p.tif", (np.random.default_rng(0).random(S64) * 255).astype(np.uint8))
        ),
    )
    add(
        "export-rois 4D labels",
        g,
        ["export-rois", "--labels", "l", "--out", "rois"],
        setup=do(std, write("l/a.tif", np.stack([np.stack([lab] * 2)] * 2))),
        check=zips_out(["a_rois.zip"]),
    )
    add(
        "measure --axes TYX on 2D labels",
        g,
        ["measure", "--labels", "labels", "--out", "t.csv", "--axes", "TYX"],
    )


def config_cases() -> None:
    g = "config files"
    for name, text in {
        "not JSON": b"{lr: }",
        "a list": b"[1, 2]",
        "unknown key": b'{"learning_rate": 0.1}',
        "wrong type": b'{"epochs": "ten"}',
        "NaN lr": b'{"lr": NaN}',
        "Infinity minutes": b'{"minutes": Infinity}',
        "huge depth": b'{"depth": 1000000}',
        "huge base_channels": b'{"base_channels": 100000}',
        "negative border weight": b'{"border_weight": -5}',
        "empty file": b"",
    }.items():
        # the setting under test is not given on the command line (it would win)
        drop = {"Infinity minutes": "--epochs", "huge depth": "--depth"}.get(name, "")
        drop = "--base-channels" if "base_channels" in name else drop
        add(
            f"train --config {name}",
            g,
            TRAIN + fast(drop) + ["--config", "cfg.json"],
            setup=do(std, raw("cfg.json", text)),
        )
    add(
        "train --config with settings the options replace",
        g,
        train("--config", "cfg.json"),
        setup=do(std, raw("cfg.json", b'{"depth": 3, "epochs": 40, "lr": 0.002}')),
        check=model_out(),
    )
    add("train --config missing", g, train("--config", "nope.json"))
    add(
        "train --config chmod 000",
        g,
        train("--config", "cfg.json"),
        setup=do(std, raw("cfg.json", b"{}"), chmod("cfg.json", 0)),
    )


def signal_cases(rng: random.Random) -> None:
    g = "signals"
    keep = do(std, copy("model.pt", "m.pt"))
    argv = TRAIN + fast("--epochs") + ["--minutes", "0.3", "--overwrite"]
    for sig, n in ((signal.SIGINT, 5), (signal.SIGTERM, 5)):
        for _ in range(n):
            t = round(rng.uniform(1.0, 12.0), 2)
            add(
                f"train --overwrite, {sig.name} at {t} s",
                g,
                argv,
                setup=keep,
                check=model_out(),
                always=still_loadable("m.pt"),
                signals=((sig, t),),
                expect_stop=True,
                may_change=("m.pt",),
            )
    for _ in range(2):
        t = round(rng.uniform(3.0, 10.0), 2)
        add(
            f"train --overwrite, SIGINT twice at {t} s",
            g,
            argv,
            setup=keep,
            check=model_out(),
            always=still_loadable("m.pt"),
            signals=((signal.SIGINT, t), (signal.SIGINT, t + 0.3)),
            expect_stop=True,
            may_change=("m.pt",),
        )
    many = do(std, *[write(f"many/i{k:02d}.png", nuclei((256, 256), seed=k)[0]) for k in range(12)])
    for sig in (signal.SIGINT, signal.SIGTERM):
        for _ in range(2):
            t = round(rng.uniform(3.0, 9.0), 2)
            add(
                f"predict 12 images, {sig.name} at {t} s",
                g,
                ["predict", "--model", "model.pt", "--images", "many", "--out", "out"],
                setup=many,
                signals=((sig, t),),
                expect_stop=True,
                check=labels_out({f"i{k:02d}.tif": (256, 256) for k in range(12)}),
            )


def build_cases(seed: int) -> list[Case]:
    CASES.clear()
    output_path_cases()
    probability_cases()
    float_cases()
    channel_cases()
    option_cases()
    model_cases()
    non_utf8_cases()
    empty_cases()
    mismatch_cases()
    config_cases()
    signal_cases(random.Random(seed))
    for i, c in enumerate(CASES):
        c.idx = i
    return list(CASES)


# --------------------------------------------------------------------------- running


def _entry(p: bytes) -> tuple:
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(p))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", stat.S_IMODE(st.st_mode))
    if stat.S_ISREG(st.st_mode):
        with open(p, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        return ("file", digest, stat.S_IMODE(st.st_mode))
    return ("other", stat.S_IFMT(st.st_mode))


def snapshot(root: Path) -> dict[bytes, tuple]:
    """Every entry under root (not following links): kind, hash, mode."""
    snap: dict[bytes, tuple] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            snap[os.path.relpath(p, base)] = _entry(p)
    return snap


LEFTOVER = (b"*.lock", b".napari-unet-staging-*", b"*.tmp", b".napari-unet-probe*")


def _first_message(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower() or "Traceback" in ln:
            return ln.strip()[:300]
    return (lines[-1].strip() if lines else "")[:300]


def classify(case: Case, d: Path, run: Run, before: dict, after: dict) -> tuple[str, str]:
    err = run.err
    if run.hung:
        return "HANG", f"no exit within {case.timeout:g} s"
    if "Traceback (most recent call last)" in err:
        return "TRACEBACK", _first_message(err)
    if "internal error" in err:
        return "INTERNAL_ERROR", _first_message(err)
    if (d / "PWNED").exists():
        return "DATA_LOSS", "the pickle payload ran (marker file created)"
    replaceable = run.rc == 0 or case.expect_stop
    changed = [
        k
        for k in before
        if after.get(k) != before[k]
        and not (replaceable and any(fnmatch.fnmatch(os.fsdecode(k), p) for p in case.may_change))
    ]
    if changed:
        what = os.fsdecode(changed[0])
        how = "removed" if changed[0] not in after else "changed"
        return "DATA_LOSS", f"{what} {how} ({len(changed)} entries)"
    new = [k for k in after if k not in before]
    left = [k for k in new if any(fnmatch.fnmatch(os.path.basename(k), p) for p in LEFTOVER)]
    if left:
        return "LEFTOVER", f"left behind: {os.fsdecode(left[0])}"
    if case.always is not None:
        why = case.always(d, run, before)
        if why:
            return "DATA_LOSS", why
    if run.rc == 0:
        why = case.check(d, run, before) if case.check else "exit 0 for input that is wrong"
        if why and case.check is None:
            return "WRONG_SUCCESS", why
        return ("WRONG_SUCCESS", why) if why else ("OK", "")
    sent = {int(s) for s, _ in case.signals}
    if case.expect_stop and (run.rc in (2, 130, 143) or -(run.rc or 0) in sent):
        return "STOPPED", _first_message(err)
    if run.rc == 2:
        if any(m in err for m in MALFORMED):
            return "BAD_CASE", f"the case's command line is malformed: {_first_message(err)}"
        if not err.strip():
            return "SILENT_REFUSAL", "exit 2 without a message"
        if new:
            return "PARTIAL", f"exit 2 but {os.fsdecode(new[0])} was created"
        return "REFUSED", _first_message(err)
    return "BAD_EXIT", f"exit {run.rc}: {_first_message(err)}"


def run_case(case: Case, root: Path, drop_root: bool) -> dict:
    d = root / f"{case.idx:03d}"
    d.mkdir()
    case.setup(d)
    before = snapshot(d)
    argv = [a if isinstance(a, bytes) else str(a) for a in case.argv]
    env = python_env()
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HOME=str(d), PYTHONDONTWRITEBYTECODE="1")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        (DROP_ROOT if drop_root else []) + CLI + argv,
        cwd=d,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    timers = [
        threading.Timer(t, lambda s=s: proc.poll() is None and proc.send_signal(s))
        for s, t in case.signals
    ]
    for t in timers:
        t.start()
    hung = False
    try:
        out, err = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        hung = True
    for t in timers:
        t.cancel()
    run = Run(
        proc.returncode,
        out.decode("utf-8", "backslashreplace"),
        err.decode("utf-8", "backslashreplace"),
        time.monotonic() - t0,
        hung,
    )
    after = snapshot(d)
    try:
        cls, why = classify(case, d, run, before, after)
    except Exception as exc:  # noqa: BLE001 - a check that breaks is a failure to look at
        cls, why = "WRONG_SUCCESS", f"check failed: {type(exc).__name__}: {exc}"
    return {
        "name": case.name,
        "group": case.group,
        "command": "napari-unet "
        + " ".join(os.fsdecode(a) if isinstance(a, bytes) else a for a in argv),
        "rc": run.rc,
        "class": cls,
        "message": _first_message(run.err),
        "why": why,
        "seconds": round(run.seconds, 2),
        "signals": [[signal.Signals(s).name, t] for s, t in case.signals],
    }


def main() -> int:
    global FX
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", help="run the cases whose name contains this text")
    p.add_argument("--group", help="run the cases of this group")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--seed", type=int, default=0, help="for the random signal times")
    p.add_argument(
        "--fixtures",
        help="keep the fixtures (images, trained model) in this folder and reuse them next time",
    )
    p.add_argument("--save", default="hostile_inputs", help="results name ('' = do not save)")
    args = p.parse_args()
    cases = build_cases(args.seed)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    if args.group:
        cases = [c for c in cases if c.group == args.group]
    if args.list:
        for c in cases:
            print(f"{c.idx:3d} [{c.group}] {c.name}")
        print(f"{len(cases)} cases")
        return 0
    drop_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="napari-unet-hostile-"))
    FX = root / "fixtures"
    t0 = time.monotonic()
    if args.fixtures and (Path(args.fixtures) / "rgb_model.pt").is_file():
        shutil.copytree(args.fixtures, FX)  # while working on the cases: skip the training
        print(f"fixtures from {args.fixtures}")
    else:
        build_fixtures(FX, print)
        if args.fixtures:
            shutil.copytree(FX, args.fixtures)
    print(
        f"{len(cases)} cases, {args.jobs} at a time, in {root}"
        + (" (as root without the capabilities to bypass file permissions)" if drop_root else "")
    )
    results: list[dict] = []
    done = [0]

    def one(c: Case) -> dict:
        r = run_case(c, root, drop_root)
        done[0] += 1
        flag = "  <-- FAILURE" if r["class"] in FAILURES else ""
        print(
            f"[{done[0]:3d}/{len(cases)}] {r['class']:14s} {r['seconds']:6.1f}s {c.name}{flag}",
            flush=True,
        )
        return r

    # the long cases first, so that the pool ends evenly
    order = sorted(cases, key=lambda c: -(c.group in ("signals",) or "train" in c.argv[:1]))
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, order))
    results.sort(key=lambda r: r["name"])
    wall = time.monotonic() - t0
    counts = Counter(r["class"] for r in results)
    print("\n" + "-" * 100)
    print(f"{'class':14s} {'group':18s} {'rc':>4s}  case / first line of the message")
    for r in sorted(results, key=lambda r: (r["class"] not in FAILURES, r["group"], r["name"])):
        print(f"{r['class']:14s} {r['group']:18s} {r['rc']!s:>4s}  {r['name']}")
        if r["class"] in FAILURES:
            print(f"{'':39s}-> {r['why'] or r['message']}")
    print("-" * 100)
    failures = sum(counts[c] for c in FAILURES)
    print(
        f"{len(results)} cases in {wall:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; {failures} failure(s)"
    )
    if args.save and not (args.only or args.group):
        save(
            args.save,
            {
                "cases": len(results),
                "counts": dict(sorted(counts.items())),
                "failures": failures,
                "wall_s": round(wall, 1),
                "jobs": args.jobs,
                "seed": args.seed,
                "as_root_without_dac_capabilities": drop_root,
                "command": "python bench/hostile_inputs.py",
                "results": results,
            },
        )
    if args.keep:
        print(f"kept {root}")
    else:
        for dirpath, dirnames, _ in os.walk(root):
            for n in dirnames:
                with_perm = os.path.join(dirpath, n)
                if not os.path.islink(with_perm):
                    os.chmod(with_perm, 0o755)
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
