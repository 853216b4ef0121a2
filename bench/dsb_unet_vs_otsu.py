"""Train with default settings on DSB2018, predict held-back images, compare with Otsu + watershed.

Runs the real command line, as a user would:

    napari-unet train   --images .../images --labels .../masks --ids-file train_ids --minutes M
    napari-unet predict --model ... --ids-file test_ids --out pred/
    napari-unet evaluate --pred pred/ --gt .../masks --per-image

and scores the classic baseline (bench/baselines.py: Otsu threshold + distance-transform
watershed) on the same held-back images. Prints a table and writes
bench/results/dsb_unet_vs_otsu.json.

The split (bench/splits/dsb2018_{train,test}_ids.txt) is fixed: 10% of the images of each
kind, drawn once with seed 2018; it is never used for tuning.

A candidate default is trained with one extra option and its results kept apart with
``--tag NAME --train-args "..."`` (files ``bench/results/variants/..._<M>min_<NAME>``, as
those of ``--seed N``).

Usage: python bench/dsb_unet_vs_otsu.py [--minutes 10] [--seed N] [--tag NAME --train-args "..."]
[--model MODEL.pt] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPLITS = HERE / "splits"
RESULTS = HERE / "results"


def image_kind(stat: dict, image_path: Path) -> str:
    """Kind of image: fluorescence (grey, dark background), brightfield (grey, light
    background) or tissue (colour)."""
    if not stat["rgb_equal"]:
        return "tissue_colour"
    from napari_unet.core.io import read_image

    img = read_image(image_path)
    grey = img if img.ndim == 2 else img[..., 0]
    return "brightfield_grey" if float(np.mean(grey)) > 100 else "fluorescence"


def make_split(data: Path) -> tuple[list[str], list[str], dict[str, str]]:
    root = data / "dsb2018_stage1_train"
    stats = sorted(json.loads((root / "per_image_stats.json").read_text()), key=lambda s: s["id"])
    kinds = {s["id"]: image_kind(s, root / "images" / f"{s['id']}.png") for s in stats}
    test_file, train_file = SPLITS / "dsb2018_test_ids.txt", SPLITS / "dsb2018_train_ids.txt"
    if test_file.exists() and train_file.exists():
        test = test_file.read_text().split()
        train = train_file.read_text().split()
        return train, test, kinds
    rng = np.random.default_rng(2018)
    test = []
    for kind in sorted(set(kinds.values())):
        ids = sorted(i for i, k in kinds.items() if k == kind)
        n = max(1, round(0.1 * len(ids)))
        test += sorted(rng.choice(ids, n, replace=False).tolist())
    test = sorted(test)
    train = sorted(set(kinds) - set(test))
    SPLITS.mkdir(exist_ok=True)
    test_file.write_text("\n".join(test) + "\n")
    train_file.write_text("\n".join(train) + "\n")
    return train, test, kinds


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "napari_unet", *map(str, args)]
    print("$ napari-unet " + " ".join(map(str, args)), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    if r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode})")
    return r


def per_kind(per_image: list[dict], kinds: dict[str, str], gt_dir: Path, pred_dir: Path) -> dict:
    from napari_unet.core.io import read_labels
    from napari_unet.core.metrics import evaluate

    out = {}
    for kind in sorted(set(kinds[p["name"]] for p in per_image)):
        names = [p["name"] for p in per_image if kinds[p["name"]] == kind]
        r = evaluate(
            [read_labels(gt_dir / f"{n}.tif") for n in names],
            [read_labels(pred_dir / f"{n}.tif") for n in names],
            names=names,
        )
        out[kind] = {
            k: r[k] for k in ("n_images", "f1", "precision", "recall", "dsb_score", "dice")
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument(
        "--data", default=os.environ.get("NAPARI_UNET_DATA", str(ROOT.parent / "shared" / "data"))
    )
    ap.add_argument("--model", help="reuse this model instead of training")
    ap.add_argument(
        "--seed",
        type=int,
        help="train with this seed (default: the trainer's, 0); results go to ..._seed<N> files",
    )
    ap.add_argument("--tag", help="name of a variant: results go to ..._<M>min_<TAG> files")
    ap.add_argument(
        "--train-args", default="", help='extra options for napari-unet train, e.g. "--lr 5e-4"'
    )
    args = ap.parse_args()
    if args.train_args and not args.tag:
        ap.error("--train-args needs --tag, so that the defaults' results are not overwritten")
    data = Path(args.data)
    root = data / "dsb2018_stage1_train"
    train, test, kinds = make_split(data)
    print(
        f"split: {len(train)} train, {len(test)} held back "
        + ", ".join(f"{k}: {sum(kinds[i] == k for i in test)}" for k in sorted(set(kinds.values())))
    )
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="napari-unet-bench-"))
    tag = f"{args.minutes:g}min" + (f"_seed{args.seed}" if args.seed is not None else "")
    tag += f"_{args.tag}" if args.tag else ""
    model = Path(args.model) if args.model else RESULTS / f"dsb_default_{tag}.pt"
    t_train = None
    if not args.model:
        t0 = time.perf_counter()
        cli(
            "train",
            "--images",
            root / "images",
            "--labels",
            root / "masks",
            "--ids-file",
            SPLITS / "dsb2018_train_ids.txt",
            "--out",
            model,
            "--minutes",
            str(args.minutes),
            "--overwrite",
            *(["--seed", str(args.seed)] if args.seed is not None else []),
            *shlex.split(args.train_args),
        )
        t_train = time.perf_counter() - t0
    pred = work / "unet"
    t0 = time.perf_counter()
    cli(
        "predict",
        "--model",
        model,
        "--images",
        root / "images",
        "--ids-file",
        SPLITS / "dsb2018_test_ids.txt",
        "--out",
        pred,
    )
    t_pred = time.perf_counter() - t0
    unet = json.loads(cli("evaluate", "--pred", pred, "--gt", root / "masks", "--per-image").stdout)

    sys.path.insert(0, str(HERE))
    from baselines import otsu_watershed

    from napari_unet.core.io import read_image, write_labels_tiff

    base_dir = work / "otsu"
    for i in test:
        write_labels_tiff(
            base_dir / f"{i}.tif", otsu_watershed(read_image(root / "images" / f"{i}.png"))
        )
    otsu = json.loads(
        cli("evaluate", "--pred", base_dir, "--gt", root / "masks", "--per-image").stdout
    )

    keys = ("f1", "precision", "recall", "dsb_score", "pq", "dice")
    from napari_unet.core.checkpoint import load_checkpoint

    b = load_checkpoint(model)
    hist = b.meta.get("history", [])
    result = {
        "machine": f"{os.cpu_count()} CPU cores, torch threads default",
        "device": b.meta.get("device"),
        "train_minutes_budget": args.minutes,
        "seed": args.seed if args.seed is not None else 0,
        "train_args": args.train_args,
        "model": str(model),
        "train_wall_s": None if t_train is None else round(t_train, 1),
        "train_steps": b.meta.get("steps"),
        "validations": len(hist),
        "predict_wall_s": round(t_pred, 1),
        "n_train": len(train),
        "n_test": len(test),
        "unet": {k: unet[k] for k in keys},
        "otsu_watershed": {k: otsu[k] for k in keys},
        "unet_by_kind": per_kind(unet["per_image"], kinds, root / "masks", pred),
        "otsu_by_kind": per_kind(otsu["per_image"], kinds, root / "masks", base_dir),
    }
    print()
    print(f"{'':22s}" + "".join(f"{k:>11s}" for k in keys))
    for name in ("unet", "otsu_watershed"):
        print(f"{name:22s}" + "".join(f"{result[name][k]:11.3f}" for k in keys))
    for name in ("unet_by_kind", "otsu_by_kind"):
        for kind, r in result[name].items():
            label = f"{name.split('_')[0]} {kind} ({r['n_images']})"
            print(f"{label:34s}" + "".join(f"{r[k]:11.3f}" for k in ("f1", "dsb_score", "dice")))
    # a seed or a variant is history, kept apart from the current results
    out = (RESULTS / "variants" if tag != f"{args.minutes:g}min" else RESULTS) / (
        f"dsb_unet_vs_otsu_{tag}.json"
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
