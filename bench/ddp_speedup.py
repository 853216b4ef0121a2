"""Training throughput of 2 torchrun processes (DDP, gloo) against 1 process, on CPU.

Each run trains the default UNet (depth 4, base 16) on real DSB2018 greyscale images
(synthetic nuclei where the shared data is absent) for --steps steps of --batch-size
patches of 128 x 128, without validation. Throughput = training patches per second over
all ranks, measured between step --warmup and the last step (so start-up, the process
group and the first slow steps are left out). Three set-ups, alternating in each repeat:

- 1 process using every core as torch threads (what napari-unet does without torchrun),
- 1 process with 1 thread,
- 2 processes (torchrun, gloo), each with cores / 2 threads (what napari-unet does under
  torchrun).

On a machine shared with other work, a process with several OpenMP threads can be much
slower than one with a single thread (the threads wait for each other when a core is
taken): the 1-thread set-up shows how much of a speed-up comes from that rather than from
data parallelism. Medians over --repeats runs; the load average before each run is
recorded.

Prints a table and writes bench/results/ddp_speedup.json.

Usage: python bench/ddp_speedup.py [--repeats 3] [--steps 20] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = Path(os.environ.get("NAPARI_UNET_DATA", ROOT.parent / "shared" / "data"))


def load_data(n: int = 8):
    root = DATA / "dsb2018_stage1_train"
    stats_file = root / "per_image_stats.json"
    if stats_file.is_file():
        from napari_unet.core.io import read_image, read_labels

        stats = sorted(json.loads(stats_file.read_text()), key=lambda s: s["id"])
        ids = [s["id"] for s in stats if s["rgb_equal"] and s["shape"][:2] == [256, 256]][:n]
        imgs = [read_image(root / "images" / f"{i}.png")[..., 0] for i in ids]
        labs = [read_labels(root / "masks" / f"{i}.tif") for i in ids]
        return imgs, labs, f"DSB2018 stage 1: {len(ids)} greyscale 256x256 images"
    sys.path.insert(0, str(ROOT / "tests"))
    from _synthetic import nuclei_image

    pairs = [nuclei_image(shape=(256, 256), n=40, seed=s) for s in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs], f"synthetic: {n} 256x256 images"


def worker(args) -> None:
    """Train under torchrun (or alone); rank 0 writes per-step times to --result."""
    from napari_unet.core.distributed import Distributed
    from napari_unet.core.train import TrainConfig, iter_train

    dist = Distributed.from_env()
    if dist is None:
        import torch

        torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    imgs, labs, what = load_data()
    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=args.steps,
        batch_size=args.batch_size,
        patch_size=128,
        val_fraction=0.0,
        device="cpu",
    )
    times = []
    for p in iter_train(imgs, labs, cfg, distributed=dist):
        if p.kind == "step":
            times.append(time.perf_counter())
    if dist is not None:
        dist.close()
    if dist is None or dist.is_main:
        import torch

        Path(args.result).write_text(
            json.dumps(
                {
                    "times": times,
                    "world_size": 1 if dist is None else dist.world_size,
                    "threads": torch.get_num_threads(),
                    "data": what,
                }
            )
        )


def one_run(n_proc: int, args, threads: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "r.json"
        me = [str(Path(__file__).resolve()), "--worker", "--result", str(result)]
        me += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        me += ["--threads", str(threads)]
        if n_proc == 1:
            cmd = [sys.executable, *me]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd += [f"--nproc_per_node={n_proc}", *me]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("OMP_NUM_THREADS", None)
        load = os.getloadavg()[0]
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        r = json.loads(result.read_text())
    t = r["times"]
    w = args.warmup
    patches = (len(t) - 1 - w) * args.batch_size * r["world_size"]
    return {
        "processes": n_proc,
        "threads_per_process": r["threads"],
        "patches_per_s": patches / (t[-1] - t[w]),
        "load_before": load,
        "data": r["data"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    runs = []
    setups = {"1 process, all cores": (1, 0), "1 process, 1 thread": (1, 1), "2 processes": (2, 0)}
    for i in range(args.repeats):
        for name, (n, threads) in setups.items():
            r = one_run(n, args, threads)
            r["setup"] = name
            runs.append(r)
            print(
                f"run {i + 1}: {n} process(es) x {r['threads_per_process']} thread(s): "
                f"{r['patches_per_s']:.2f} patches/s (load {r['load_before']:.1f})",
                flush=True,
            )
    med = {
        name: float(np.median([r["patches_per_s"] for r in runs if r["setup"] == name]))
        for name in setups
    }
    one, one_t, two = (med[k] for k in setups)
    summary = {
        "what": "training patches (128x128) per second over all ranks, UNet depth 4 base 16, "
        f"batch {args.batch_size} per rank, steps {args.warmup}..{args.steps} timed",
        "data": runs[0]["data"],
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores available, shared with other work",
        "torch": __import__("torch").__version__,
        "repeats": args.repeats,
        "median_patches_per_s": {k: round(v, 3) for k, v in med.items()},
        "speedup_2_processes_vs_1_process_all_cores": round(two / one, 3),
        "speedup_2_processes_vs_1_process_1_thread": round(two / one_t, 3),
        "runs": runs,
    }
    print(
        f"median patches/s: 1 process (all cores) {one:.2f}, 1 process (1 thread) {one_t:.2f}, "
        f"2 processes {two:.2f}; speed-up {two / one:.2f}x vs all cores, "
        f"{two / one_t:.2f}x vs 1 thread"
    )
    out = HERE / "results" / "ddp_speedup.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
