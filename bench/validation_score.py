"""Score models on the DSB 2018 validation images, by kind: how a default is chosen.

The images are the 60 that ``napari-unet train`` holds back for validation from
bench/splits/dsb2018_train_ids.txt (seed 0, the trainer's default): no model trained on
them, and the held-back test ids are never touched here. So two candidate defaults can
be compared, and one picked, without looking at the test images.

Each model predicts with its own default settings (those fitted at the end of its
training, as ``napari-unet predict`` uses them).

With ``--flips`` each model is also scored with test-time augmentation (``napari-unet
predict --flips``: the mean of the tiles' probabilities as they are and mirrored three ways),
as a second row ``NAME+flips``, timed side by side with the plain prediction.

Usage: python bench/validation_score.py NAME=MODEL.pt [NAME=MODEL.pt ...] [--flips] [--out NAME]
Prints a table and writes bench/results/variants/validation_score.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    from dsb_unet_vs_otsu import make_split
    from postprocess_sweep import validation_ids

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.io import read_image, read_labels
    from napari_unet.core.metrics import evaluate
    from napari_unet.core.predict import PredictConfig, predict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=MODEL.pt")
    ap.add_argument("--out", default="validation_score")
    ap.add_argument("--flips", action="store_true", help="also score with test-time flips")
    ap.add_argument(
        "--data",
        default=os.environ.get("NAPARI_UNET_DATA", str(HERE.parent.parent / "shared" / "data")),
    )
    args = ap.parse_args()
    data = Path(args.data)
    root = data / "dsb2018_stage1_train"
    _, test, kinds = make_split(data)
    ids = validation_ids()
    assert not set(ids) & set(test), "validation and test images overlap"
    images = [read_image(root / "images" / f"{i}.png") for i in ids]
    gts = [read_labels(root / "masks" / f"{i}.tif") for i in ids]
    results = {}
    print(f"{'model':12s} {'kind':18s} {'n':>3s} {'f1':>6s} {'dsb':>6s}")
    runs = []
    for spec in args.models:
        name, _, path = spec.partition("=")
        runs.append((name, path, False))
        if args.flips:
            runs.append((f"{name}+flips", path, True))
    for name, path, flips in runs:
        bundle = load_checkpoint(path)
        cfg = PredictConfig.for_model(bundle, flips=flips)
        t0 = time.perf_counter()
        preds = [predict(bundle, img, channel_axis=-1, config=cfg).labels for img in images]
        seconds = time.perf_counter() - t0
        entry = {
            "model": path,
            "flips": flips,
            "threshold": cfg.threshold,
            "h": cfg.h,
            "steps": bundle.meta.get("steps"),
            "postprocess": bundle.meta.get("postprocess"),
            "predict_s": round(seconds, 1),
        }
        groups = {"all": list(range(len(ids)))}
        for k in sorted(set(kinds[i] for i in ids)):
            groups[k] = [j for j, i in enumerate(ids) if kinds[i] == k]
        for g, idx in groups.items():
            r = evaluate([gts[j] for j in idx], [preds[j] for j in idx])
            entry[g] = {k: r[k] for k in ("n_images", "n_true", "f1", "dsb_score", "pq")}
            print(f"{name:12s} {g:18s} {len(idx):3d} {r['f1']:6.3f} {r['dsb_score']:6.3f}")
        results[name] = entry
    out = HERE / "results" / "variants" / f"{args.out}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n_images": len(ids), "models": results}, indent=2, default=str))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
