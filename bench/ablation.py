"""What each default training choice buys: train variants for the same number of steps, compare.

Each variant is one ``napari-unet train`` command on bench/splits/dsb2018_train_ids.txt
with the defaults except the options it names, trained for the same fixed number of
steps (``--epochs 8 --steps-per-epoch 100`` unless told otherwise) with one CPU thread,
so that two variants can train side by side on a 2-core machine without changing the
comparison. Each model is then scored with the ``napari-unet predict`` defaults on the
60 validation images the trainer held back from the training ids (seed 0): choices are
made on these, never on the held-back test ids. With and without splitting is scored on
every model (same probabilities, ``--no-split``).

Usage:
    python bench/ablation.py [--jobs 2] [--steps 800] [--only default,keep,...]
    python bench/ablation.py --list

Prints a table and writes bench/results/ablation.json (merged with earlier results, so
variants can be run in several goes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODELS = RESULTS / "ablation_models"

# name -> (what it tests, extra `napari-unet train` options)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "default": ("the defaults", []),
    "keep": (
        "no polarity correction (bright-background images as they are)",
        ["--polarity", "keep"],
    ),
    "semantic": (
        "2-class targets (foreground only), no boundary output",
        ["--targets", "semantic"],
    ),
    "bce": ("BCE loss only", ["--loss", "bce"]),
    "dice": ("Dice loss only", ["--loss", "dice"]),
    "weighted_bce": (
        "BCE with the UNet paper's border weights (w0 = 10)",
        ["--loss", "weighted_bce"],
    ),
}


def validation_ids() -> list[str]:
    names = sorted((HERE / "splits" / "dsb2018_train_ids.txt").read_text().split())
    n_val = round(0.1 * len(names))
    return sorted(np.random.default_rng(0).choice(names, n_val, replace=False).tolist())


def train(name: str, root: Path, steps: int, log_dir: Path) -> dict:
    model = MODELS / f"{name}.pt"
    epochs = max(1, steps // 100)
    cmd = [
        sys.executable, "-m", "napari_unet", "train",
        "--images", str(root / "images"), "--labels", str(root / "masks"),
        "--ids-file", str(HERE / "splits" / "dsb2018_train_ids.txt"),
        "--out", str(model), "--overwrite",
        "--epochs", str(epochs), "--steps-per-epoch", "100",
        *VARIANTS[name][1],
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"[{name}] $ napari-unet " + " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        r = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"[{name}] training failed, see {log_dir / f'{name}.log'}")
    wall = time.perf_counter() - t0
    print(f"[{name}] trained in {wall:.0f} s", flush=True)
    return {"train_wall_s": round(wall, 1), "model": str(model.relative_to(ROOT))}


def score(name: str, root: Path, ids: list[str], kinds: dict[str, str]) -> dict:
    import torch

    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.data import guess_channel_axis
    from napari_unet.core.io import read_image, read_labels
    from napari_unet.core.metrics import evaluate
    from napari_unet.core.predict import PredictConfig, labels_from_output, predict_probabilities

    torch.set_num_threads(1)
    bundle = load_checkpoint(MODELS / f"{name}.pt")
    outputs = list(bundle.outputs)
    gts, split, nosplit = [], [], []
    for i in ids:
        img = read_image(root / "images" / f"{i}.png")
        axis = guess_channel_axis(img.shape, bundle.in_channels)  # as the CLI does
        prob = predict_probabilities(bundle, img, channel_axis=axis)
        gts.append(read_labels(root / "masks" / f"{i}.tif"))
        split.append(labels_from_output(prob, outputs, PredictConfig()))
        nosplit.append(labels_from_output(prob, outputs, PredictConfig(split=False)))
    keys = ("f1", "precision", "recall", "dsb_score", "pq", "dice")
    out = {"steps": bundle.meta.get("steps")}
    for tag, preds in (("split", split), ("no_split", nosplit)):
        r = evaluate(gts, preds, names=ids)
        out[tag] = {k: r[k] for k in keys}
        out[tag]["by_kind"] = {}
        for kind in sorted(set(kinds[i] for i in ids)):
            sel = [j for j, i in enumerate(ids) if kinds[i] == kind]
            rk = evaluate([gts[j] for j in sel], [preds[j] for j in sel])
            out[tag]["by_kind"][kind] = {
                "n_images": len(sel), "n_true": rk["n_true"],
                **{k: rk[k] for k in ("f1", "dsb_score", "dice")},
            }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated variants (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="variants trained side by side")
    ap.add_argument("--steps", type=int, default=800, help="training steps per variant")
    ap.add_argument("--reuse", action="store_true", help="score existing models, do not train")
    ap.add_argument("--list", action="store_true")
    ap.add_argument(
        "--data", default=os.environ.get("NAPARI_UNET_DATA", str(ROOT.parent / "shared" / "data"))
    )
    args = ap.parse_args()
    if args.list:
        for k, (what, opts) in VARIANTS.items():
            print(f"{k:14s} {what}  {' '.join(opts)}")
        return
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; see --list")
    root = Path(args.data) / "dsb2018_stage1_train"
    sys.path.insert(0, str(HERE))
    from dsb_unet_vs_otsu import image_kind

    stats = {s["id"]: s for s in json.loads((root / "per_image_stats.json").read_text())}
    ids = validation_ids()
    kinds = {i: image_kind(stats[i], root / "images" / f"{i}.png") for i in ids}
    MODELS.mkdir(parents=True, exist_ok=True)
    out_file = RESULTS / "ablation.json"
    report = json.loads(out_file.read_text()) if out_file.exists() else {"variants": {}}
    report.update(
        {
            "machine": f"{os.cpu_count()} CPU cores, 1 torch thread per variant, "
            f"{args.jobs} variant(s) at a time",
            "steps": args.steps,
            "validation_images": len(ids),
            "validation_kinds": {
                k: sum(v == k for v in kinds.values()) for k in set(kinds.values())
            },
        }
    )

    def one(name: str) -> tuple[str, dict]:
        earlier = report["variants"].get(name, {})
        info = {k: earlier[k] for k in ("train_wall_s", "model") if k in earlier}
        if not args.reuse:
            info = train(name, root, args.steps, MODELS)
        info.update(score(name, root, ids, kinds))
        info["what"], info["options"] = VARIANTS[name][0], " ".join(VARIANTS[name][1])
        return name, info

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for name, info in pool.map(one, names):
            report["variants"][name] = info
            out_file.write_text(json.dumps(report, indent=2))
    print()
    print(f"{'variant':14s} {'F1':>6s} {'DSB':>6s} {'PQ':>6s} {'Dice':>6s} | "
          f"{'F1 nosplit':>10s} {'DSB nosplit':>11s} | F1 fluo / tissue / bf")  # fmt: skip
    for name, v in report["variants"].items():
        s, n = v["split"], v["no_split"]
        bk = s["by_kind"]
        per = " / ".join(f"{bk[k]['f1']:.3f}" for k in sorted(bk))
        print(
            f"{name:14s} {s['f1']:6.3f} {s['dsb_score']:6.3f} {s['pq']:6.3f} {s['dice']:6.3f} | "
            f"{n['f1']:10.3f} {n['dsb_score']:11.3f} | {per}"
        )
    print(f"\nsaved {out_file}")


if __name__ == "__main__":
    main()
