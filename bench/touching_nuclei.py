"""How many touching nuclei are recovered, with and without splitting.

For each held-back DSB2018 image (bench/splits/dsb2018_test_ids.txt), the ground-truth
nuclei that touch another nucleus (8-connectivity) are found, and a nucleus counts as
recovered when one predicted object overlaps it with IoU > 0.5 (at that threshold a match
is one-to-one). The model's prediction is scored twice: with the default splitting
(``napari-unet predict``) and with ``--no-split`` (connected components of the thresholded
foreground), so what the splitting buys is visible. Isolated nuclei are reported too.

Usage: python bench/touching_nuclei.py --model MODEL.pt [--data ../shared/data]
Writes bench/results/touching_nuclei.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def best_iou_per_object(gt: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """Largest IoU of each ground-truth object with any predicted object."""
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    both = (g > 0) & (p > 0)
    pairs, inter = np.unique(np.stack([g[both], p[both]]), axis=1, return_counts=True)
    g_area = dict(zip(*np.unique(g[g > 0], return_counts=True), strict=True))
    p_area = dict(zip(*np.unique(p[p > 0], return_counts=True), strict=True))
    best = dict.fromkeys(g_area, 0.0)
    for (gi, pi), n in zip(pairs.T, inter, strict=True):
        iou = n / (g_area[gi] + p_area[pi] - n)
        best[gi] = max(best[gi], float(iou))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("NAPARI_UNET_DATA", "../shared/data"))
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "touching_nuclei.json")
    args = parser.parse_args(argv)

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.data import guess_channel_axis
    from napari_unet.core.io import read_image, read_labels
    from napari_unet.core.metrics import touching_objects
    from napari_unet.core.predict import (
        PredictConfig,
        labels_from_output,
        predict_probabilities,
    )

    root = args.data / "dsb2018_stage1_train"
    test_ids = (HERE / "splits" / "dsb2018_test_ids.txt").read_text().split()
    bundle = load_checkpoint(args.model)
    variants = {"split (default)": PredictConfig.for_model(bundle, device="cpu")}
    variants["no split"] = replace(variants["split (default)"], split=False)
    counts = {
        name: {"touching": 0, "touching_recovered": 0, "isolated": 0, "isolated_recovered": 0}
        for name in variants
    }
    t0 = time.perf_counter()
    for image_id in test_ids:
        image = read_image(root / "images" / f"{image_id}.png")
        gt = read_labels(root / "masks" / f"{image_id}.tif")
        axis = guess_channel_axis(image.shape, bundle.in_channels)  # as the CLI does
        prob = predict_probabilities(bundle, image, channel_axis=axis, config=variants["no split"])
        touching = set(touching_objects(gt).tolist())
        for name, config in variants.items():
            pred = labels_from_output(prob, bundle.outputs, config)
            best = best_iou_per_object(gt, pred)
            for gi, iou in best.items():
                kind = "touching" if gi in touching else "isolated"
                counts[name][kind] += 1
                counts[name][f"{kind}_recovered"] += int(iou > 0.5)
    for c in counts.values():
        c["touching_rate"] = c["touching_recovered"] / max(c["touching"], 1)
        c["isolated_rate"] = c["isolated_recovered"] / max(c["isolated"], 1)
    result = {
        "model": str(args.model),
        "n_images": len(test_ids),
        "split_file": "bench/splits/dsb2018_test_ids.txt",
        "counts": counts,
        "seconds": time.perf_counter() - t0,
    }
    print(f"{'':18} {'touching recovered':>22} {'isolated recovered':>22}")
    for name, c in counts.items():
        print(
            f"{name:18} {c['touching_recovered']:>6}/{c['touching']:<6} ({c['touching_rate']:.3f})"
            f"   {c['isolated_recovered']:>6}/{c['isolated']:<6} ({c['isolated_rate']:.3f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
