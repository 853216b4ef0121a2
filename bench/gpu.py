"""GPU measurements in one short run (issue 23): speed, memory, out-of-memory, CPU agreement.

On CUDA, with synthetic touching nuclei (no data files):

* ``train``: images/s of the core trainer (:func:`~napari_unet.core.train.iter_train`)
  with and without AMP, at the default model (depth 4, base 16, patch 128, batch 8) and
  at base 32; ``--seconds`` of steps per configuration after a warm-up, timed between
  ``torch.cuda.synchronize()`` calls; the peak ``torch.cuda.max_memory_allocated`` of each.
  ``sample_batch_ms`` is the CPU's time to sample and augment one batch: a rate near
  ``batch / sample_batch_ms`` means the trainer waits on the CPU, not the GPU.
* ``predict``: Mpixel/s of :func:`~napari_unet.core.predict.predict_probabilities` on a
  4096x4096 image (default tiles, and larger ones), and its memory peak.
* ``oom``: the out-of-memory path. The process is capped to ``--oom-cap-gib`` of GPU
  memory (``torch.cuda.set_per_process_memory_fraction``), then the trainer starts with a
  batch and patch far too large, and :func:`~napari_unet.core.predict.predict` with tiles
  far too large; both must shrink on their own and carry on (their ``notes`` say how).
* ``cpu_vs_gpu``: the model trained on the GPU, saved and loaded on the CPU, predicts a
  1024x1024 image on both: object F1 between the two label images (IoU > 0.5) and the
  largest absolute difference of probabilities.
* ``env``: GPU, driver, torch, CUDA and cuDNN versions, the machine.

Each section is recorded on its own: an exception becomes ``{"error", "traceback"}`` in
its place and the other sections still run; the JSON is rewritten after each section,
so a run cut short leaves what was measured. Without CUDA (or with ``--tiny``) the same
sections run with a tiny model and tiny sizes, the AMP configurations are marked
skipped, and the out-of-memory path is simulated (the UNet raises an out-of-memory
error above a number of pixels per forward pass); this is what tests/test_gpu_bench.py
runs, so that the script cannot rot.

Needs only numpy, scipy, scikit-image, tifffile and torch, with the repository on the
import path (no napari, no Qt, no installed distribution)::

    PYTHONPATH=. python bench/gpu.py --out gpu.json

Usage: python bench/gpu.py [--out FILE] [--seconds S] [--tiny] [--oom-cap-gib G]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from _common import RESULTS, loadavg, machine, median, peak_rss_mib, reset_peak_rss
from split_speed import touching_discs

#: Sizes on a GPU (the issue's) and for a tiny run on a CPU (a smoke test).
FULL = {
    "depth": 4,
    "base": 16,
    "wide_base": 32,
    "patch": 128,
    "batch": 8,
    "train_images": 8,
    "train_size": 512,
    "warmup_steps": 5,
    "predict_size": 4096,
    "predict_tiles": {"default": (512, 4), "large_tiles": (1024, 8)},
    "oom_train": (256, 256),  # batch, patch
    "oom_predict": (4096, 4),  # tile, batch
    "compare_size": 1024,
}
TINY = {
    "depth": 2,
    "base": 4,
    "wide_base": 8,
    "patch": 32,
    "batch": 4,
    "train_images": 3,
    "train_size": 128,
    "warmup_steps": 2,
    "predict_size": 256,
    "predict_tiles": {"default": (512, 4), "large_tiles": (128, 2)},
    "oom_train": (16, 64),
    "oom_predict": (256, 4),
    "compare_size": 128,
}
#: Tiny runs: pixels per forward pass above which the simulated device runs out of memory.
TINY_OOM_PIXELS = 64 * 64 * 4


def synthetic(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` float32 image of touching bright discs on noise, and its labels."""
    n = max(5, int(1000 * (size / 2048) ** 2))
    labels = touching_discs((size, size), n, seed=seed)
    rng = np.random.default_rng(seed)
    image = rng.normal(0.1, 0.03, labels.shape).astype(np.float32)
    image += 0.8 * (labels > 0)
    return image, labels


class Run:
    """What the sections share: the device, the sizes, the data and a trained model."""

    def __init__(self, device, sizes: dict, seconds: float, oom_cap_gib: float) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.sizes = sizes
        self.seconds = seconds
        self.oom_cap_gib = oom_cap_gib
        n, s = sizes["train_images"], sizes["train_size"]
        pairs = [synthetic(s, seed=i) for i in range(n)]
        self.images = [p[0] for p in pairs]
        self.labels = [p[1] for p in pairs]
        self.bundle = None  # the model trained by the train section (default, AMP on CUDA)
        self._images: dict = {}

    def image(self, size: int, seed: int) -> np.ndarray:
        """A synthetic image (made once per size and seed)."""
        if (size, seed) not in self._images:
            self._images[size, seed] = synthetic(size, seed)[0]
        return self._images[size, seed]

    def config(self, **changes):
        """A TrainConfig at this run's sizes, without validation, stopped by the caller."""
        from napari_unet.core.train import TrainConfig

        s = self.sizes
        settings = {
            "depth": s["depth"],
            "base_channels": s["base"],
            "patch_size": s["patch"],
            "batch_size": s["batch"],
            "device": self.device.type,
            "val_fraction": 0.0,
            "tune_postprocessing": False,
            "epochs": 1,
            "steps_per_epoch": 10**6,
        }
        return TrainConfig(**{**settings, **changes})

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def peak(self) -> dict:
        """The memory peak since :meth:`reset_peak`, in MiB, and what it is."""
        if self.cuda:
            import torch

            return {
                "peak_mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1),
                "peak_reserved_mib": round(torch.cuda.max_memory_reserved(self.device) / 2**20, 1),
            }
        return {"peak_rss_mib": round(peak_rss_mib(), 1)}

    def model(self):
        """The trained model (trained now, briefly, if the train section did not)."""
        if self.bundle is None:
            self.bundle = self.train_for(self.config(), self.seconds)["result"].bundle
        return self.bundle

    def train_for(self, config, seconds: float, warmup: int = 0, good_steps: int | None = None):
        """Train `config` for `seconds` after `warmup` steps (or `good_steps` steps).

        Returns the steps and seconds measured, the run's notes and its TrainResult.
        """
        from napari_unet.core.train import STEP, iter_train

        stop = threading.Event()
        gen = iter_train(self.images, self.labels, config, stop=stop)
        done, t0, n0, window = 0, None, 0, None
        while True:
            try:
                p = next(gen)
            except StopIteration as end:
                result = end.value
                break
            if p.kind != STEP or p.loss is None or stop.is_set():
                continue
            done += 1
            if t0 is None and done >= warmup:
                self.sync()
                t0, n0 = time.perf_counter(), done
            elif t0 is not None and (
                done - n0 >= good_steps
                if good_steps is not None
                else time.perf_counter() - t0 >= seconds
            ):
                self.sync()
                window = (done - n0, time.perf_counter() - t0)
                stop.set()
        if window is None:
            raise RuntimeError(f"training stopped ({result.stopped}) before the window ended")
        return {"steps": window[0], "seconds": window[1], "notes": result.notes, "result": result}


def section_env(run: Run, out: dict, save) -> None:
    import torch

    from napari_unet.core.device import describe_device

    info = {
        "device": describe_device(run.device),
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
        "driver": _driver(),
        "numpy": np.__version__,
    }
    if run.cuda:
        props = torch.cuda.get_device_properties(run.device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
        )
    info["machine"] = machine()
    out.update(info)


def _driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi, else /proc), or None."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    with contextlib.suppress(OSError):
        return Path("/proc/driver/nvidia/version").read_text().splitlines()[0].strip()
    return None


def section_train(run: Run, out: dict, save) -> None:
    from napari_unet.core.data import Normalisation, PatchSampler, prepare_samples

    s = run.sizes
    out.update(depth=s["depth"], patch=s["patch"], batch=s["batch"])
    samples = prepare_samples(run.images, run.labels, normalisation=Normalisation())
    sampler = PatchSampler(samples, s["patch"], s["batch"], 2, seed=1)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        sampler.batch()
        times.append(time.perf_counter() - t)
    out["sample_batch_ms"] = round(1000 * median(times), 2)
    for name, base in (("default", s["base"]), ("wide", s["wide_base"])):
        for amp in (False, True):
            key = f"{name}_{'amp' if amp else 'fp32'}"
            if amp and not run.cuda:
                out[key] = {"skipped": "no CUDA"}
                continue
            out[key] = _attempt(lambda b=base, a=amp: _train_rate(run, b, a))
            save()
    for name in ("default", "wide"):
        fp32, amp = out[f"{name}_fp32"], out[f"{name}_amp"]
        if "img_s" in fp32 and "img_s" in amp:
            out[f"{name}_amp_speedup"] = round(amp["img_s"] / fp32["img_s"], 3)


def _train_rate(run: Run, base: int, amp: bool) -> dict:
    config = run.config(base_channels=base, amp=amp)
    run.reset_peak()
    got = run.train_for(config, run.seconds, warmup=run.sizes["warmup_steps"])
    rate = got["steps"] * config.batch_size / got["seconds"]
    if run.bundle is None and base == run.sizes["base"] and (amp or not run.cuda):
        run.bundle = got["result"].bundle
    return {
        "base_channels": base,
        "amp": amp,
        "img_s": round(rate, 2),
        "steps": got["steps"],
        "seconds": round(got["seconds"], 2),
        **run.peak(),
    }


def section_predict(run: Run, out: dict, save) -> None:
    from napari_unet.core.predict import PredictConfig, predict_probabilities

    bundle = run.model()
    size = run.sizes["predict_size"]
    image = run.image(size, seed=100)
    out["size"] = size
    warm = PredictConfig(device=run.device.type)
    predict_probabilities(bundle, image[: size // 4, : size // 4], config=warm)
    for name, (tile, batch) in run.sizes["predict_tiles"].items():
        config = PredictConfig(tile_size=tile, batch_size=batch, device=run.device.type)

        def measure(config=config, tile=tile, batch=batch) -> dict:
            run.reset_peak()
            times = []
            t_end = time.perf_counter() + run.seconds
            while not times or (time.perf_counter() < t_end and len(times) < 5):
                t = time.perf_counter()
                predict_probabilities(bundle, image, config=config)
                run.sync()
                times.append(time.perf_counter() - t)
            return {
                "tile": tile,
                "batch": batch,
                "amp": run.cuda,  # prediction runs in mixed precision on CUDA
                "mpix_s": round(size * size / 1e6 / median(times), 2),
                "seconds": [round(t, 3) for t in times],
                **run.peak(),
            }

        out[name] = _attempt(measure)
        save()


@contextlib.contextmanager
def memory_cap(run: Run):
    """Make the device run out of memory early: a real cap on CUDA, simulated elsewhere."""
    import torch

    if run.cuda:
        index = run.device.index if run.device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        cap = min(1.0, run.oom_cap_gib * 2**30 / total)
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap, index)
        try:
            yield f"real: set_per_process_memory_fraction({cap:.4f}) = {run.oom_cap_gib:g} GiB"
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
            torch.cuda.empty_cache()
        return
    from napari_unet.core.model import UNet

    forward = UNet.forward
    oom = getattr(torch, "OutOfMemoryError", RuntimeError)

    def capped(self, x):
        pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
        if pixels > TINY_OOM_PIXELS:
            raise oom(f"simulated: out of memory ({pixels} > {TINY_OOM_PIXELS} pixels per pass)")
        return forward(self, x)

    UNet.forward = capped
    try:
        yield f"simulated: UNet.forward raises above {TINY_OOM_PIXELS} pixels per pass"
    finally:
        UNet.forward = forward


def section_oom(run: Run, out: dict, save) -> None:
    with memory_cap(run) as how:
        out["cap"] = how
        out["train"] = _attempt(lambda: _oom_train(run))
        save()
        out["predict"] = _attempt(lambda: _oom_predict(run))
    out["passed"] = bool(out["train"].get("passed") and out["predict"].get("passed"))


def _oom_train(run: Run) -> dict:
    batch, patch = run.sizes["oom_train"]
    config = run.config(batch_size=batch, patch_size=patch)
    got = run.train_for(config, 0.0, good_steps=3)
    adjusted = got["result"].bundle.meta.get("memory_adjustments", {})
    retried = any("ran out of memory" in n for n in got["notes"])
    return {
        "start": {"batch": batch, "patch": patch},
        "end": {
            "batch": adjusted.get("batch_size", batch),
            "patch": adjusted.get("patch_size", patch),
        },
        "steps_after_retry": got["steps"],
        "notes": got["notes"],
        "passed": retried and got["steps"] >= 3,
    }


def _oom_predict(run: Run) -> dict:
    from napari_unet.core.predict import PredictConfig, predict

    tile, batch = run.sizes["oom_predict"]
    image = run.image(run.sizes["predict_size"], seed=100)
    config = PredictConfig(tile_size=tile, batch_size=batch, device=run.device.type, split=False)
    t = time.perf_counter()
    result = predict(run.model(), image, config=config)
    retried = any("ran out of memory" in n for n in result.notes)
    return {
        "start": {"tile": tile, "batch": batch},
        "end": {"tile": result.settings["tile_size"], "batch": result.settings["batch_size"]},
        "notes": result.notes,
        "seconds": round(time.perf_counter() - t, 2),
        "passed": retried and result.labels.shape == image.shape,
    }


def section_cpu_vs_gpu(run: Run, out: dict, save) -> None:
    from napari_unet.core.checkpoint import load_checkpoint, save_checkpoint
    from napari_unet.core.metrics import match_objects
    from napari_unet.core.predict import PredictConfig, predict

    bundle = run.model()
    image, truth = synthetic(run.sizes["compare_size"], seed=200)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(bundle, Path(tmp) / "model.pt")
        on_cpu = load_checkpoint(path, device="cpu")
    ours = predict(bundle, image, config=PredictConfig.for_model(bundle, device=run.device.type))
    cpu = predict(on_cpu, image, config=PredictConfig.for_model(on_cpu, device="cpu"))
    diffs = [np.abs(ours.probabilities[k] - cpu.probabilities[k]) for k in ours.probabilities]
    out.update(
        {
            "compared": f"{run.device.type} vs cpu"
            + ("" if run.cuda else " (no CUDA: checks the code path only)"),
            "size": run.sizes["compare_size"],
            "object_f1": round(
                match_objects(ours.labels, cpu.labels, thresholds=(0.5,)).f1(0.5), 4
            ),
            "max_abs_prob_diff": max(float(d.max()) for d in diffs),
            "mean_abs_prob_diff": float(np.mean([d.mean() for d in diffs])),
            "foreground_pixels_differing": int(((ours.labels > 0) != (cpu.labels > 0)).sum()),
            "objects": {
                "device": int(len(np.unique(ours.labels)) - 1),
                "cpu": int(len(np.unique(cpu.labels)) - 1),
                "truth": int(len(np.unique(truth)) - 1),
            },
            "f1_vs_truth": round(match_objects(truth, ours.labels, thresholds=(0.5,)).f1(0.5), 4),
        }
    )


def _attempt(fn) -> dict | None:
    """Run one measurement and return what it returns.

    An exception is returned as ``{"error", "traceback"}`` (and printed), not raised.
    """
    try:
        return fn()
    except Exception as error:  # recorded in the JSON (with the traceback); the run goes on
        text = traceback.format_exc()
        print(text, file=sys.stderr)
        return {"error": f"{type(error).__name__}: {error}", "traceback": text}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measured seconds per window (default 3 on CUDA, 1 tiny)",
    )
    ap.add_argument(
        "--tiny", action="store_true", help="tiny model and sizes (automatic without CUDA)"
    )
    ap.add_argument("--cpu", action="store_true", help="ignore CUDA (implies --tiny)")
    ap.add_argument(
        "--oom-cap-gib",
        type=float,
        default=2.0,
        help="GPU memory allowed in the out-of-memory section",
    )
    args = ap.parse_args(argv)

    import torch

    from napari_unet.core.device import select_device

    cuda = torch.cuda.is_available() and not args.cpu
    tiny = args.tiny or not cuda
    seconds = args.seconds if args.seconds is not None else (1.0 if tiny else 3.0)
    sizes = TINY if tiny else FULL
    t_start = time.perf_counter()
    result: dict = {
        "what": __doc__.splitlines()[0],
        "mode": "tiny" if tiny else "full",
        "seconds_per_window": seconds,
        "sizes": sizes,
        "loadavg_start": loadavg(),
    }
    names = ("env", "train", "predict", "oom", "cpu_vs_gpu")
    result.update({name: {"skipped": "not reached"} for name in names})
    out = Path(args.out)

    def save() -> None:
        result["seconds_total"] = round(time.perf_counter() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, out)

    run = Run(select_device("cuda" if cuda else "cpu"), sizes, seconds, args.oom_cap_gib)
    for name in names:
        t = time.perf_counter()
        print(f"-- {name}", flush=True)
        entry = result[name] = {}  # filled as the section goes, saved after each measurement
        section = globals()[f"section_{name}"]
        entry.update(_attempt(functools.partial(section, run, entry, save)) or {})
        entry["section_seconds"] = round(time.perf_counter() - t, 1)
        save()
    result["errors"] = sorted(_errors(result))
    result["loadavg_end"] = loadavg()
    save()
    print_table(result)
    print(f"wrote {out}")
    return result


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _errors(tree, path: str = ""):
    """Yield the dotted path of every entry holding an error."""
    if isinstance(tree, dict):
        if "error" in tree:
            yield path
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from _errors(v, f"{path}.{k}" if path else k)


def print_table(r: dict) -> None:
    """Print the main numbers, one line each."""
    rows = []
    env = r.get("env", {})
    rows.append(("device", env.get("device", env.get("error"))))
    rows.append(
        (
            "versions",
            f"torch {env.get('torch')}, CUDA {env.get('cuda_version')}, driver {env.get('driver')}",
        )
    )
    train = r.get("train", {})
    for key in ("default_fp32", "default_amp", "wide_fp32", "wide_amp"):
        e = train.get(key, {})
        rows.append(
            (
                f"train {key}",
                _show(
                    e, lambda e: f"{e['img_s']:.1f} img/s (base {e['base_channels']}), {_peak(e)}"
                ),
            )
        )
    rows.append(("train sampling one batch (CPU)", f"{train.get('sample_batch_ms')} ms"))
    pred = r.get("predict", {})
    for key in pred:
        if isinstance(pred[key], dict):
            rows.append(
                (
                    f"predict {pred.get('size')}^2 {key}",
                    _show(
                        pred[key],
                        lambda e: (
                            f"{e['mpix_s']:.1f} Mpixel/s (tile {e['tile']}, batch "
                            f"{e['batch']}), {_peak(e)}"
                        ),
                    ),
                )
            )
    oom = r.get("oom", {})
    for key in ("train", "predict"):
        e = oom.get(key, {})
        rows.append(
            (
                f"out-of-memory {key}",
                _show(
                    e, lambda e: f"{'OK' if e['passed'] else 'FAILED'}: {e['start']} -> {e['end']}"
                ),
            )
        )
    cmp_ = r.get("cpu_vs_gpu", {})
    rows.append(
        (
            "trained on device, CPU agrees",
            _show(
                cmp_,
                lambda e: (
                    f"object F1 {e['object_f1']:.4f}, max |dp| {e['max_abs_prob_diff']:.2e}"
                    f" ({e['compared']})"
                ),
            ),
        )
    )
    rows.append(("errors", ", ".join(r.get("errors", [])) or "none"))
    rows.append(("total", f"{r.get('seconds_total')} s"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _peak(e: dict) -> str:
    if "peak_mib" in e:
        return f"peak {e['peak_mib']:.0f} MiB allocated"
    return f"peak RSS {e.get('peak_rss_mib', float('nan')):.0f} MiB"


def _show(entry: dict, fmt) -> str:
    if "error" in entry:
        return f"ERROR {entry['error']}"
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    try:
        return fmt(entry)
    except (KeyError, TypeError, ValueError) as error:
        return f"(missing: {error})"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
