"""Compare ways of turning predicted probabilities into nuclei, on validation images only.

The images are the 60 that ``napari-unet train`` holds back for validation from
bench/splits/dsb2018_train_ids.txt (seed 0, the trainer's default): the model never
trained on them, and the held-back test ids are never touched here.

Variants: seeds from the boundary output; connected components (no split); the distance
watershed with markers at least 6 px apart (the default before) or h-maxima markers of
depth h (the default now, h = 1), at thresholds 0.5 to 0.8. All drop objects under 20 px.

Usage: python bench/postprocess_sweep.py MODEL.pt [--tta]
Prints a table and writes bench/results/postprocess_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.io import read_image, read_labels
from napari_unet.core.metrics import evaluate
from napari_unet.core.predict import predict_probabilities
from napari_unet.core.split import labels_from_probabilities, split_nuclei

HERE = Path(__file__).resolve().parent


def validation_ids() -> list[str]:
    names = sorted((HERE / "splits" / "dsb2018_train_ids.txt").read_text().split())
    n_val = round(0.1 * len(names))
    return sorted(np.random.default_rng(0).choice(names, n_val, replace=False).tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--tta", action="store_true", help="average the 4 flips")
    ap.add_argument(
        "--data",
        default=os.environ.get("NAPARI_UNET_DATA", str(HERE.parent.parent / "shared" / "data")),
    )
    args = ap.parse_args()
    root = Path(args.data) / "dsb2018_stage1_train"
    bundle = load_checkpoint(args.model)
    probs, gts = [], []
    for i in validation_ids():
        img = read_image(root / "images" / f"{i}.png")
        p = predict_probabilities(bundle, img, channel_axis=-1)
        if args.tta:
            for ax in ((0,), (1,), (0, 1)):
                flipped = predict_probabilities(bundle, np.flip(img, ax), channel_axis=-1)
                p = p + np.flip(flipped, tuple(a + 1 for a in ax))
            p = p / 4
        probs.append(p)
        gts.append(read_labels(root / "masks" / f"{i}.tif"))
    variants = {
        "boundary t0.5 b0.5": lambda p: labels_from_probabilities(p[0], p[1], min_size=20),
        "boundary t0.7 b0.5": lambda p: labels_from_probabilities(
            p[0], p[1], threshold=0.7, min_size=20
        ),
        "connected components t0.7": lambda p: labels_from_probabilities(
            p[0], threshold=0.7, split=False, min_size=20
        ),
    }
    for t in (0.5, 0.6, 0.7, 0.8):
        variants[f"distance t{t} min distance 6"] = lambda p, t=t: split_nuclei(
            p[0] > t, min_distance=6, min_size=20
        )
        for h in (0.5, 1.0, 1.5, 2.0, 3.0):
            variants[f"distance t{t} h{h}"] = lambda p, t=t, h=h: split_nuclei(
                p[0] > t, h=h, min_size=20
            )
    results = {}
    print(f"{'variant':40s} {'f1':>6s} {'dsb':>6s} {'pq':>6s} {'n_pred':>7s}")
    for name, f in variants.items():
        r = evaluate(gts, [f(p) for p in probs])
        results[name] = {k: r[k] for k in ("f1", "dsb_score", "pq", "n_pred", "n_true")}
        print(f"{name:40s} {r['f1']:6.3f} {r['dsb_score']:6.3f} {r['pq']:6.3f} {r['n_pred']:7d}")
    out = HERE / "results" / f"postprocess_sweep{'_tta' if args.tta else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"model": str(args.model), "n_images": len(gts), "results": results}, indent=2)
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
