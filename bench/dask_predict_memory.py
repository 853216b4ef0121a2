"""Peak memory and time of prediction on a zarr image larger than its chunks: dask blocks vs whole.

A synthetic nuclei image of --size x --size float32 pixels is written to a zarr array
with 512 x 512 chunks (tiles of the test generator, so it is never whole in this
process). A UNet of the default architecture (depth 4, base 16) is trained for
--train-steps steps on synthetic nuclei, so that the labelling has real objects to
work on. Then, each in a fresh process (peak resident memory = ru_maxrss of that
process, which includes the Python, torch and dask libraries, about 0.4-0.5 GB):

- ``dask-<block>``: :func:`napari_unet.core.dask_predict.predict_to_zarr` with blocks of
  each of --blocks pixels, local threaded scheduler, reading the zarr array and writing
  a zarr group (the number of network tiles run is counted: tiles at block borders are
  run by each block they touch);
- ``whole``: :func:`napari_unet.core.predict.predict` on the image read into memory
  (the single-process path of ``napari-unet predict`` for a TIFF).

The labels of both are compared (equal up to renumbering). Prints a table and writes
bench/results/dask_predict_memory.json.

Usage: python bench/dask_predict_memory.py [--size 4096] [--blocks 1024 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))


def make_image(path: Path, size: int) -> None:
    import zarr
    from _synthetic import nuclei_image

    z = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(512, 512), dtype="f4")
    k = 0
    for y in range(0, size, 512):
        for x in range(0, size, 512):
            img, _ = nuclei_image(shape=(512, 512), n=150, seed=k)
            z[y : y + 512, x : x + 512] = img
            k += 1


def train_model(path: Path, steps: int, tiny: bool = False) -> None:
    from _synthetic import nuclei_image

    from napari_unet.core.checkpoint import save_checkpoint
    from napari_unet.core.train import TrainConfig, train

    pairs = [nuclei_image(shape=(256, 256), n=60, seed=100 + s) for s in range(6)]
    cfg = TrainConfig(epochs=1, steps_per_epoch=steps, val_fraction=0.0, lr=3e-3, device="cpu")
    if tiny:
        cfg.depth, cfg.base_channels = 2, 8
    r = train([p[0] for p in pairs], [p[1] for p in pairs], cfg)
    save_checkpoint(r.bundle, path)


def child(mode: str, model: str, image: str, out: str, block: int) -> None:
    import zarr

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.predict import PredictConfig

    bundle = load_checkpoint(model)
    cfg = PredictConfig(device="cpu")
    t0 = time.perf_counter()
    tiles = [0]
    forward = bundle.model.forward

    def counting(x):
        tiles[0] += int(x.shape[0])
        return forward(x)

    bundle.model.forward = counting
    if mode == "dask":
        from napari_unet.core.dask_predict import predict_to_zarr

        arr = zarr.open_array(image, mode="r")
        s = predict_to_zarr(bundle, arr, out, config=cfg, block_size=block, scheduler="threads")
        n = s.n_objects
    else:
        from napari_unet.core.io import write_labels_tiff
        from napari_unet.core.predict import predict

        img = zarr.open_array(image, mode="r")[:]
        res = predict(bundle, img, config=cfg)
        write_labels_tiff(out, res.labels)
        n = int(res.labels.max())
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "mode": mode if mode == "whole" else f"dask-{block}",
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(peak_mb),
                "objects": n,
                "tiles_run": tiles[0],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--blocks", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument(
        "--tiny", action="store_true", help="a UNet of depth 2, base 8 (fast, small activations)"
    )
    ap.add_argument("--name", default="dask_predict_memory", help="results/<name>.json")
    ap.add_argument("--child", nargs=5)
    args = ap.parse_args()
    if args.child:
        mode, model, image, out, block = args.child
        child(mode, model, image, out, int(block))
        return
    import tifffile
    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_image(tmp / "image.zarr", args.size)
        train_model(tmp / "model.pt", args.train_steps, args.tiny)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        results = []
        jobs = [("whole", tmp / "whole.tif", 0)]
        jobs += [("dask", tmp / f"out{b}.zarr", b) for b in args.blocks]
        for mode, out, block in jobs:
            cmd = [sys.executable, __file__, "--child", mode, str(tmp / "model.pt")]
            cmd += [str(tmp / "image.zarr"), str(out), str(block)]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(results[-1], flush=True)
        a = tifffile.imread(tmp / "whole.tif")
        same = {}
        for b in args.blocks:
            lab = zarr.open_group(str(tmp / f"out{b}.zarr"), mode="r")["labels"][:]
            fg = (a > 0) | (lab > 0)
            pairs = np.unique(np.stack([a[fg], lab[fg]]), axis=1)
            same[f"dask-{b}"] = bool(
                ((a > 0) == (lab > 0)).all()
                and len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            )
    summary = {
        "image": f"{args.size}x{args.size} float32 zarr, chunks 512x512 "
        f"({args.size * args.size * 4 / 2**20:.0f} MiB)",
        "model": f"UNet depth {2 if args.tiny else 4}, base {8 if args.tiny else 16}, "
        f"trained {args.train_steps} steps on synthetic nuclei",
        "predict_config": "defaults (tile 512, overlap 64, batch 4, distance split)",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU only, "
        "shared with other work",
        "labels_equal_up_to_renumbering": same,
        "runs": results,
    }
    print(json.dumps(summary, indent=2))
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
