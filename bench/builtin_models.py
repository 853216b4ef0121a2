"""Score models as a user gets them, with no training: DSB 2018 held-back images and external sets.

For each model (a built-in NAME or a .pt file) and each object-size mode, predicts with the
defaults of ``napari-unet predict`` and scores, next to Otsu + distance watershed
(bench/baselines.py) on the same images:

- ``dsb_test``: the 67 held-back DSB 2018 images (never trained on), per kind: object F1 at
  IoU 0.5 (pooled over images) and the DSB score;
- ``gowt1``: ``external/ctc_gowt1_nuclei`` (nuclei about 60 px across), object F1;
- ``nih3t3``: ``external/nih3t3_nuclei`` (about 90 px across), pixel Dice against its binary
  masks (touching nuclei are merged in them), and F1 against their connected components;
- ``miccai``: ``external/miccai_he_nuclei`` (H&E tissue of another lab), object F1.

Size modes: ``auto`` (the default of predict: the diameter is estimated from each image),
``true`` (the median diameter of each image's ground truth objects given as ``--diameter``,
what a user who knows the size would type) and ``off`` (no resizing).

    python bench/builtin_models.py --model nuclei [--model other.pt] [--modes auto true]
        [--sets dsb_test gowt1 nih3t3 miccai] [--name builtin_models]

The ``external/`` sets are for measuring only: nothing here trains on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
DATA = Path(os.environ.get("NAPARI_UNET_DATA", str(ROOT.parent / "shared" / "data")))

from _common import machine, save  # noqa: E402
from baselines import otsu_watershed  # noqa: E402


def load_set(name: str, limit: int | None = None) -> list[dict]:
    """Return [{name, image, gt, kind}] of one scoring set."""
    from napari_unet.core.io import read_image, read_labels

    items = []
    if name == "dsb_test":
        root = DATA / "dsb2018_stage1_train"
        from dsb_unet_vs_otsu import image_kind

        stats = {s["id"]: s for s in json.loads((root / "per_image_stats.json").read_text())}
        ids = (HERE / "splits" / "dsb2018_test_ids.txt").read_text().split()
        for i in ids:
            p = root / "images" / f"{i}.png"
            items.append(
                {
                    "name": i,
                    "image": read_image(p),
                    "gt": read_labels(root / "masks" / f"{i}.tif"),
                    "kind": image_kind(stats[i], p),
                }
            )
    else:
        sub = {"gowt1": "ctc_gowt1_nuclei", "nih3t3": "nih3t3_nuclei", "miccai": "miccai_he_nuclei"}
        root = DATA / "external" / sub[name]
        gt_dir = root / ("labels_cc_derived" if name == "nih3t3" else "masks")
        for p in sorted((root / "images").iterdir()):
            item = {
                "name": p.stem,
                "image": read_image(p),
                "gt": read_labels(gt_dir / f"{p.stem}.tif"),
                "kind": name,
            }
            if name == "nih3t3":
                item["binary"] = read_labels(root / "masks_binary" / f"{p.stem}.png") > 0
            items.append(item)
    return items[:limit] if limit else items


def score(items: list[dict], preds: list[np.ndarray], set_name: str) -> dict:
    """Pooled scores of a set, and per kind for dsb_test."""
    from napari_unet.core.metrics import evaluate, pixel_scores

    def block(sel):
        r = evaluate([items[i]["gt"] for i in sel], [preds[i] for i in sel])
        out = {k: r[k] for k in ("n_images", "f1", "precision", "recall", "dsb_score")}
        if set_name == "nih3t3":
            dice = [pixel_scores(preds[i] > 0, items[i]["binary"])["dice"] for i in sel]
            out["pixel_dice"] = float(np.median(dice))
            out["pixel_dice_mean"] = float(np.mean(dice))
        return out

    result = {"all": block(range(len(items)))}
    if set_name == "dsb_test":
        for kind in sorted({it["kind"] for it in items}):
            result[kind] = block([i for i, it in enumerate(items) if it["kind"] == kind])
    return result


def run_model(model: str, items: list[dict], mode: str) -> tuple[list[np.ndarray], dict]:
    from napari_unet.core.builtin import resolve_model
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.data import guess_channel_axis, median_object_diameter
    from napari_unet.core.predict import PredictConfig, predict

    bundle = load_checkpoint(resolve_model(model))
    preds, diameters, seconds = [], [], []
    for it in items:
        if mode == "true":
            diameter = median_object_diameter(it["gt"])
        else:
            diameter = {"auto": "auto", "off": None}[mode]
        cfg = PredictConfig.for_model(bundle, diameter=diameter)
        t = time.perf_counter()
        axis = guess_channel_axis(it["image"].shape, bundle.in_channels)  # as the CLI does
        r = predict(bundle, it["image"], channel_axis=axis, config=cfg)
        seconds.append(time.perf_counter() - t)
        preds.append(r.labels)
        scale = r.scale
        diameters.append(
            {
                "true": round(median_object_diameter(it["gt"]), 1),
                "used": None if scale.diameter is None else round(scale.diameter, 1),
                "estimated": scale.estimated,
                "factor": round(scale.factor, 3),
            }
        )
    return preds, {"seconds_median": float(np.median(seconds)), "diameters": diameters}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--modes", nargs="+", default=["auto", "true"], choices=["auto", "true", "off"])
    ap.add_argument(
        "--sets", nargs="+", default=["dsb_test", "gowt1", "nih3t3", "miccai"],
        choices=["dsb_test", "gowt1", "nih3t3", "miccai"],
    )  # fmt: skip
    ap.add_argument("--limit", type=int, help="at most this many images per set (a quick look)")
    ap.add_argument("--name", default="builtin_models", help="results file name")
    args = ap.parse_args(argv)

    result = {"machine": machine(), "models": args.model, "modes": args.modes, "sets": {}}
    rows = []
    for set_name in args.sets:
        items = load_set(set_name, args.limit)
        entry = result["sets"][set_name] = {"n_images": len(items)}
        t = time.perf_counter()
        otsu = [otsu_watershed(it["image"]) for it in items]
        entry["otsu_watershed"] = score(items, otsu, set_name)
        entry["otsu_watershed"]["seconds_median"] = (time.perf_counter() - t) / max(1, len(items))
        rows.append((set_name, "Otsu + watershed", "-", entry["otsu_watershed"]))
        for model in args.model:
            for mode in args.modes:
                preds, info = run_model(model, items, mode)
                s = score(items, preds, set_name)
                s.update(info)
                entry[f"{Path(model).stem}|{mode}"] = s
                rows.append((set_name, Path(model).stem, mode, s))
                print(f"{set_name:9s} {Path(model).stem:22s} {mode:5s} {_summary(s)}", flush=True)
        save(args.name, result)
    print()
    print(f"{'set':9s} {'model':22s} {'size':5s} scores (pooled over images)")
    for set_name, model, mode, s in rows:
        print(f"{set_name:9s} {model:22s} {mode:5s} {_summary(s)}")
    path = save(args.name, result)
    print(f"saved {path}")
    return 0


def _summary(s: dict) -> str:
    a = s["all"]
    text = f"F1 {a['f1']:.3f}  DSB {a['dsb_score']:.3f}"
    if "pixel_dice" in a:
        text += f"  pixel Dice {a['pixel_dice']:.3f}"
    kinds = [k for k in s if k not in ("all", "seconds_median", "diameters")]
    if kinds:
        text += "  (" + ", ".join(f"{k} {s[k]['f1']:.3f}" for k in kinds) + ")"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
