"""Shared helpers for the speed and memory benchmarks (issue 5).

Every benchmark records the machine and its load average next to its numbers: the
development machines are shared, and torch on a busy 2-core CPU runs 3-10x slower,
so a reader must be able to tell a quiet run from a loaded one. Ratios are taken
side by side (interleaved repeats in one process) so that load affects both sides.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DATA = Path(os.environ.get("NAPARI_UNET_DATA", ROOT.parent / "shared" / "data"))


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    """Describe the machine: CPU, cores, memory, Python and library versions."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "loadavg": loadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc; else peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """Peak resident set size in MiB since the start or the last :func:`reset_peak_rss`.

    Linux: ``VmHWM`` from ``/proc/self/status``; elsewhere ``ru_maxrss`` (process lifetime).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0: ``/proc/self/clear_refs``).

    Without it a warm-up's peak would hide a smaller peak measured after it.
    Returns False where this is not possible (the peak is then the lifetime peak).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def median(values) -> float:
    """Median of a non-empty sequence, as a float."""
    return float(statistics.median(values))


def save(name: str, result: dict) -> Path:
    """Write ``result`` (plus machine info and load) to ``bench/results/<name>.json``."""
    result = dict(result)
    result.setdefault("machine", machine())
    result["loadavg_end"] = loadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"saved {path.relative_to(ROOT)}")
    return path


def python_env() -> dict:
    """Environment for child processes: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_json(args: list[str], *, timeout: float = 600, env: dict | None = None) -> dict:
    """Run ``python <args>`` in a fresh process; return the JSON on its last stdout line."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or python_env(),
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(args)} printed no JSON:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


def xvfb_prefix() -> list[str]:
    """Command prefix giving a child process an X display (xvfb-run), or [] if one exists."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return []
    from shutil import which

    if which("xvfb-run") is None:
        raise RuntimeError("No display and no xvfb-run: apt-get install xvfb")
    return ["xvfb-run", "-a", "-s", "-screen 0 1920x1080x24"]


def dsb_fluo_pairs(n: int, min_size: int = 256) -> list[tuple]:
    """Load ``n`` greyscale DSB2018 training images (>= ``min_size``) with their labels.

    Falls back to the shipped samples when the shared data is absent.
    """
    import numpy as np

    root = DATA / "dsb2018_stage1_train"
    stats_file = root / "per_image_stats.json"
    if not stats_file.exists():
        from napari_unet.samples import load_sample

        return [load_sample(k) for k in ("fluo_dense", "fluo_crowded", "fluo_mixed", "fluo_small")]
    import imageio.v3 as iio
    import tifffile

    stats = json.loads(stats_file.read_text())
    items = stats.items() if isinstance(stats, dict) else ((s["id"], s) for s in stats)
    pairs = []
    for key, s in sorted(items):
        shape = s.get("shape") or s.get("image_shape")
        if not s.get("rgb_equal") or min(shape[:2]) < min_size:
            continue
        img = np.asarray(iio.imread(root / "images" / f"{key}.png"))[..., 0]
        lab = tifffile.imread(root / "masks" / f"{key}.tif")
        pairs.append((img, lab))
        if len(pairs) >= n:
            break
    return pairs


def dsb_tiled(size: int = 2048, tile: int = 256, n_objects: int = 1000):
    """A ``size`` x ``size`` label image of ``n_objects`` real DSB2018 nuclei, and its image.

    Greyscale 256x256 DSB2018 masks without overlaps, in sorted id order, tiled
    left to right and top to bottom and relabelled 1..n until ``n_objects`` nuclei are
    placed; the images go to the same places. Returns ``(labels, image, description)``,
    or None without the shared data.
    """
    import imageio.v3 as iio
    import numpy as np
    import tifffile

    root = DATA / "dsb2018_stage1_train"
    stats_file = root / "per_image_stats.json"
    if not stats_file.is_file():
        return None
    stats = sorted(json.loads(stats_file.read_text()), key=lambda s: s["id"])
    chosen = [
        s
        for s in stats
        if s["rgb_equal"] and s["shape"][:2] == [tile, tile] and s["overlap_px"] == 0
    ]
    labels = np.zeros((size, size), dtype=np.uint16)
    image = np.zeros((size, size), dtype=np.uint8)
    n, used = 0, 0
    slots = [(r, c) for r in range(0, size, tile) for c in range(0, size, tile)]
    for s, (r, c) in zip(chosen, slots, strict=False):
        if n >= n_objects:
            break
        mask = tifffile.imread(root / "masks" / f"{s['id']}.tif")
        ids = np.unique(mask)
        ids = ids[ids > 0][: n_objects - n]
        lut = np.zeros(int(mask.max()) + 1, dtype=np.uint16)
        lut[ids] = np.arange(n + 1, n + 1 + len(ids))
        labels[r : r + tile, c : c + tile] = lut[mask]
        image[r : r + tile, c : c + tile] = np.asarray(
            iio.imread(root / "images" / f"{s['id']}.png")
        )[..., 0]
        n += len(ids)
        used += 1
    return labels, image, f"{used} DSB2018 greyscale {tile}x{tile} images tiled in {size}x{size}"
