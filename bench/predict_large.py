"""Tiled prediction on large images: peak memory, speed, MONAI, seams (issue 5, target 3).

One fresh process per measurement (``--child``), so that each peak RSS
(``ru_maxrss``) belongs to one prediction only:

* sizes 1k, 2k, 4k (numpy in memory) and 8k (a uint8 zarr on disk read through
  dask): ``predict_probabilities`` with the default PredictConfig (tile 512,
  overlap 64, batch 4) on the CPU (``--quick``: 1k numpy and 2k dask/zarr).
  Reported: Mpixel/s, the peak RSS (``VmHWM``, reset after a warm-up on a 512x512
  image; ``ru_maxrss`` where it cannot be reset) above the baseline taken just
  before the prediction, the size of the output
  probabilities (inherent: ``(K, M, N)`` float32), and the working memory = peak
  increase minus the output. The input is in the baseline.
* MONAI ``sliding_window_inference`` against ours on the same normalised image,
  same model (channels_last, eval, inference mode), roi = tile, the same overlap
  (64/512), Gaussian blending, 4 tiles per batch; interleaved repeats, medians.
* seams: tiled probabilities against one whole-image forward pass, maximum
  absolute difference more than ``margin`` pixels from the image borders.

The model is the default UNet (depth 4, base 16, foreground + boundary) trained
for a few steps on DSB2018 images, so its outputs look like a real model's.

Usage: python bench/predict_large.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    dsb_fluo_pairs,
    loadavg,
    machine,
    median,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    run_json,
    save,
)

TILE, OVERLAP, BATCH = 512, 64, 4


def make_model(path: Path, steps: int) -> None:
    """Train the default UNet for ``steps`` steps on DSB images and save it."""
    from napari_unet.core.checkpoint import save_checkpoint
    from napari_unet.core.train import TrainConfig, train

    pairs = dsb_fluo_pairs(12)
    config = TrainConfig(
        epochs=1, steps_per_epoch=steps, val_fraction=0.0, patience=None, device="cpu"
    )
    result = train([p[0] for p in pairs], [p[1] for p in pairs], config)
    save_checkpoint(result.bundle, path)


def synthetic_image(size: int) -> np.ndarray:
    """A ``size x size`` uint8 nuclei image: DSB images mirrored and tiled."""
    pairs = dsb_fluo_pairs(4)
    tiles = [p[0][:256, :256] for p in pairs]
    row = np.concatenate([tiles[0], tiles[1][:, ::-1], tiles[2], tiles[3][:, ::-1]], axis=1)
    block = np.concatenate([row, row[::-1, ::-1]], axis=0)  # 512 x 1024
    reps = (-(-size // block.shape[0]), -(-size // block.shape[1]))
    return np.ascontiguousarray(np.tile(block, reps)[:size, :size])


def write_zarr(path: Path, size: int) -> None:
    """Write a ``size x size`` uint8 zarr, 1024 x 1024 chunks, one strip at a time."""
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(1024, 1024), dtype="uint8")
    strip = synthetic_image(max(size, 1024))[:1024]
    for y in range(0, size, 1024):
        z[y : y + 1024] = strip[: min(1024, size - y)]


def child_memory(model: str, size: int, zarr_path: str | None) -> dict:
    """Predict one image in this (fresh) process; report time and memory."""
    import torch

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.predict import PredictConfig, predict_probabilities

    bundle = load_checkpoint(model)
    config = PredictConfig(tile_size=TILE, overlap=OVERLAP, batch_size=BATCH, device="cpu")
    if zarr_path:
        import dask.array as da

        image = da.from_zarr(zarr_path)
        backend = f"dask over zarr on disk, chunks {image.chunksize}"
    else:
        image = synthetic_image(size)
        backend = "numpy in memory"
    predict_probabilities(bundle, synthetic_image(512), config=config)  # warm-up
    gc.collect()
    peak0 = peak_rss_mib()  # the warm-up's peak (first use of torch included)
    reset = reset_peak_rss()
    base = rss_mib()
    t = time.perf_counter()
    prob = predict_probabilities(bundle, image, config=config)
    dt = time.perf_counter() - t
    peak = peak_rss_mib()
    out_mib = prob.nbytes / 2**20
    del prob
    gc.collect()
    return {
        "size": size,
        "backend": backend,
        "seconds": round(dt, 2),
        "mpix_s": round(size * size / 1e6 / dt, 3),
        "baseline_rss_mib": round(base, 1),
        "peak_increase_mib": round(peak - base, 1),
        "output_mib": round(out_mib, 1),
        "working_mib": round(peak - base - out_mib, 1),
        "warmup_peak_mib": round(peak0, 1),
        "peak_reset_after_warmup": reset,
        "torch_threads": torch.get_num_threads(),
        "loadavg": loadavg(),
    }


def child_monai(model: str, size: int, repeats: int) -> dict:
    """Ours vs MONAI sliding_window_inference on the same image, interleaved."""
    import torch
    from monai.inferers import sliding_window_inference

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.data import Normalisation
    from napari_unet.core.predict import PredictConfig, predict_probabilities

    bundle = load_checkpoint(model)
    net = bundle.model.eval().to(memory_format=torch.channels_last)
    config = PredictConfig(tile_size=TILE, overlap=OVERLAP, batch_size=BATCH, device="cpu")
    raw = synthetic_image(size)[None]
    norm = Normalisation.from_dict(bundle.meta["normalisation"])
    lo, hi = norm.ranges(raw)
    x = torch.from_numpy(norm.apply(raw, lo, hi))[None]

    def ours():
        return predict_probabilities(bundle, raw[0], config=config)

    def predictor(t):
        return torch.sigmoid(net(t.contiguous(memory_format=torch.channels_last)))

    def theirs():
        with torch.inference_mode():
            return sliding_window_inference(
                x, (TILE, TILE), BATCH, predictor, overlap=OVERLAP / TILE, mode="gaussian"
            )[0].numpy()

    ours(), theirs()  # warm-up
    t_ours, t_monai = [], []
    for r in range(repeats):
        for fn, times in ((ours, t_ours), (theirs, t_monai))[:: 1 if r % 2 == 0 else -1]:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    a, b = ours(), theirs()
    m = 64
    return {
        "size": size,
        "repeats": repeats,
        "ours_s": [round(v, 3) for v in t_ours],
        "monai_s": [round(v, 3) for v in t_monai],
        "ours_mpix_s": round(size * size / 1e6 / median(t_ours), 3),
        "monai_mpix_s": round(size * size / 1e6 / median(t_monai), 3),
        "speed_ratio": round(median(t_monai) / median(t_ours), 3),
        "max_abs_diff_vs_monai_inside": round(float(np.abs(a - b)[:, m:-m, m:-m].max()), 4),
        "loadavg": loadavg(),
    }


def child_seams(model: str, size: int) -> dict:
    """Tiled probabilities against one whole-image forward pass."""
    import torch

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.data import Normalisation
    from napari_unet.core.predict import PredictConfig, predict_probabilities

    bundle = load_checkpoint(model)
    config = PredictConfig(tile_size=TILE, overlap=OVERLAP, batch_size=BATCH, device="cpu")
    raw = synthetic_image(size)
    tiled = predict_probabilities(bundle, raw, config=config)
    norm = Normalisation.from_dict(bundle.meta["normalisation"])
    lo, hi = norm.ranges(raw[None])
    x = torch.from_numpy(norm.apply(raw[None], lo, hi))[None]
    with torch.inference_mode():
        whole = torch.sigmoid(bundle.model.eval()(x))[0].numpy()
    out = {"size": size, "tile": TILE, "overlap": OVERLAP}
    for margin in (32, 64, 128):
        d = np.abs(tiled - whole)[:, margin:-margin, margin:-margin]
        out[f"max_abs_diff_margin_{margin}"] = round(float(d.max()), 5)
        out[f"mean_abs_diff_margin_{margin}"] = round(float(d.mean()), 6)
    # where the worst difference is: on a tile boundary (seam) or spread out?
    d = np.abs(tiled - whole).max(axis=0)
    out["max_abs_diff_whole_image"] = round(float(d.max()), 5)
    out["loadavg"] = loadavg()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="1k numpy and 2k dask/zarr only; MONAI at 1k"
    )
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--child", choices=["memory", "monai", "seams"])
    ap.add_argument("--model")
    ap.add_argument("--size", type=int)
    ap.add_argument("--zarr")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.child == "memory":
        print(json.dumps(child_memory(args.model, args.size, args.zarr)))
        return {}
    if args.child == "monai":
        print(json.dumps(child_monai(args.model, args.size, args.repeats)))
        return {}
    if args.child == "seams":
        print(json.dumps(child_seams(args.model, args.size)))
        return {}

    load_start = loadavg()
    sizes = [1024, 2048] if args.quick else [1024, 2048, 4096, 8192]
    zarr_size = sizes[-1]  # the largest image is read from a zarr on disk through dask
    monai_sizes = [1024] if args.quick else [1024, 2048]
    repeats = 2 if args.quick else 3
    me = [str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory(prefix="napari-unet-bench-") as tmp:
        model = Path(tmp) / "model.pt"
        t = time.perf_counter()
        make_model(model, args.train_steps)
        print(f"model trained for {args.train_steps} steps in {time.perf_counter() - t:.0f} s")
        rows = []
        for size in sizes:
            extra = []
            if size == zarr_size:
                zpath = Path(tmp) / f"image{size}.zarr"
                write_zarr(zpath, size)
                extra = ["--zarr", str(zpath)]
            r = run_json(
                me + ["--child", "memory", "--model", str(model), "--size", str(size)] + extra
            )
            print(
                f"{size:5d}^2 {r['backend'][:10]:10s} {r['mpix_s']:7.3f} Mpx/s  peak +"
                f"{r['peak_increase_mib']:7.1f} MiB = output {r['output_mib']:7.1f} + working "
                f"{r['working_mib']:6.1f} MiB  (load {r['loadavg'][0]})"
            )
            rows.append(r)
        monai = []
        for size in monai_sizes:
            r = run_json(
                me
                + ["--child", "monai", "--model", str(model), "--size", str(size)]
                + ["--repeats", str(repeats)]
            )
            print(
                f"MONAI {size}^2: ours {r['ours_mpix_s']} Mpx/s, MONAI {r['monai_mpix_s']} "
                f"Mpx/s, ours/MONAI speed {r['speed_ratio']}"
            )
            monai.append(r)
        seams = run_json(me + ["--child", "seams", "--model", str(model), "--size", "1024"])
        print(f"seams (1024^2, tile {TILE}, overlap {OVERLAP}): {seams}")
    working = [r["working_mib"] for r in rows]
    worst_ratio = min(m["speed_ratio"] for m in monai)
    result = {
        "what": "predict_probabilities, default tile 512 / overlap 64 / batch 4, CPU",
        "sizes": rows,
        "monai": monai,
        "seams": seams,
        "working_mib_min_max": [min(working), max(working)],
        "speed_vs_monai_min": worst_ratio,
        "targets": {
            "speed_vs_monai": ">= 1.0",
            "working memory": "bounded by the tile row, not the image area",
            "seams": "max abs difference small away from the borders",
        },
        "passed_speed": worst_ratio >= 1.0,
        "loadavg_start": load_start,
        "machine": machine(),
    }
    save("predict_large", result)
    return result


if __name__ == "__main__":
    main()
