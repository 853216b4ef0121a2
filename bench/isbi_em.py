"""ISBI 2012 EM membranes (the U-Net paper's data): train on 25 images, score 5.

Runs the real command line with default settings, as a user would:

    napari-unet train   --images isbi2012_em/images --labels isbi2012_em/instances_cc
                        --ids-file train_ids --minutes M --out model.pt
    napari-unet predict --model model.pt --images isbi2012_em/images --ids-file test_ids
                        --out pred/ [--no-split]

The split is fixed and documented in bench/splits/isbi2012_{train,test}_ids.txt: images
00-24 train, 25-29 are held back (the 30 challenge test images have no labels). The
instance labels are the connected components of the cell-interior class (255), as
derived in the data folder.

Scores on the 5 held-back images, for the default prediction and for ``--no-split``
(cells in EM are separated by membranes, not by shape, so splitting by distance may cut
cells):

- pixel Dice of the cell-interior class (prediction > 0 against label == 255);
- cells correctly separated: ground-truth cells matched one-to-one by a predicted object
  with IoU > 0.5, out of all ground-truth cells.

Usage: python bench/isbi_em.py [--minutes 10] [--data ../shared/data]
Writes bench/results/isbi_em.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPLITS = HERE / "splits"
RESULTS = HERE / "results"


def cli(*args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "napari_unet", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return r


def score(pred_dir: Path, root: Path, ids: list[str]) -> dict:
    from napari_unet.core.io import read_labels
    from napari_unet.core.metrics import match_objects

    inter = card = 0
    tp = n_true = n_pred = 0
    for i in ids:
        pred = read_labels(pred_dir / f"{i}.tif")
        interior = read_labels(root / "labels" / f"{i}.png") > 0
        cells = read_labels(root / "instances_cc" / f"{i}.tif")
        inter += int(np.logical_and(pred > 0, interior).sum())
        card += int((pred > 0).sum() + interior.sum())
        m = match_objects(cells, pred, thresholds=(0.5,))
        tp, n_true, n_pred = tp + int(m.tp[0]), n_true + m.n_true, n_pred + m.n_pred
    return {
        "interior_dice": 2 * inter / max(card, 1),
        "cells_separated": tp,
        "cells_true": n_true,
        "cells_predicted": n_pred,
        "separated_fraction": tp / max(n_true, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("NAPARI_UNET_DATA", "../shared/data"))
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "isbi_em.json")
    parser.add_argument("--keep", type=Path, help="keep the model and predictions here")
    args = parser.parse_args(argv)

    root = args.data / "isbi2012_em"
    train_ids = (SPLITS / "isbi2012_train_ids.txt").read_text().split()
    test_ids = (SPLITS / "isbi2012_test_ids.txt").read_text().split()
    work = args.keep or Path(tempfile.mkdtemp(prefix="isbi-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "isbi_model.pt"
    t0 = time.perf_counter()
    cli(
        "train", "--images", root / "images", "--labels", root / "instances_cc",
        "--ids-file", SPLITS / "isbi2012_train_ids.txt", "--minutes", args.minutes,
        "--out", model, "--overwrite",
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    results = {}
    for name, extra in (("default (split)", []), ("no split", ["--no-split"])):
        pred = work / ("pred" if not extra else "pred_nosplit")
        cli(
            "predict", "--model", model, "--images", root / "images",
            "--ids-file", SPLITS / "isbi2012_test_ids.txt", "--out", pred, "--overwrite", *extra,
        )  # fmt: skip
        results[name] = score(pred, root, test_ids)
    from napari_unet.core.checkpoint import load_checkpoint

    meta = load_checkpoint(model).meta
    out = {
        "minutes": args.minutes,
        "train_seconds": train_s,
        "steps": meta.get("steps"),
        "device": meta.get("device"),
        "train_ids": train_ids,
        "test_ids": test_ids,
        "results": results,
        "load_average": os.getloadavg(),
    }
    print(f"{'prediction':16} {'interior Dice':>14} {'cells separated (IoU > 0.5)':>30}")
    for name, r in results.items():
        print(
            f"{name:16} {r['interior_dice']:>14.3f} "
            f"{r['cells_separated']:>12} / {r['cells_true']} ({r['separated_fraction']:.3f})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
