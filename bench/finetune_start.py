"""Is a built-in model a better starting point than nothing? Fine-tune against scratch on new H&E.

For each of ``--splits`` random choices of 3 images of ``external/miccai_he_nuclei``:
train for ``--minutes`` (default 1) on those 3 with the Train defaults, once starting from the
built-in model and once from scratch, and score both (and the built-in model untouched) on the
other 12 images with the defaults of ``napari-unet predict``: object F1 at IoU 0.5, pooled over
the 12. Prints a table and the medians over the splits, saves bench/results/finetune_start.json::

    python bench/finetune_start.py [--model nuclei] [--minutes 1] [--splits 3]

The external set is used as issue 18 allows: the 3 "corrected" images are trained on, only the
other 12 are scored.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = Path(os.environ.get("NAPARI_UNET_DATA", str(HERE.parent.parent / "shared" / "data")))

from _common import machine, median, save  # noqa: E402


def score(bundle, items) -> float:
    from napari_unet.core.metrics import evaluate
    from napari_unet.core.predict import PredictConfig, predict

    preds = []
    for it in items:
        cfg = PredictConfig.for_model(bundle)
        preds.append(predict(bundle, it["image"], channel_axis=-1, config=cfg).labels)
    return float(evaluate([it["gt"] for it in items], preds)["f1"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--splits", type=int, default=3)
    args = ap.parse_args(argv)

    from builtin_models import load_set

    from napari_unet.core.builtin import resolve_model
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.train import TrainConfig, train

    start = load_checkpoint(resolve_model(args.model))
    items = load_set("miccai")
    result = {"machine": machine(), "model": args.model, "minutes": args.minutes, "splits": []}
    for seed in range(args.splits):
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(items), 3, replace=False).tolist())
        train_items = [items[i] for i in chosen]
        test_items = [it for i, it in enumerate(items) if i not in chosen]
        row = {"seed": seed, "trained_on": [it["name"] for it in train_items]}
        row["builtin"] = score(start, test_items)
        for how, init in (("finetuned", start), ("scratch", None)):
            t = time.perf_counter()
            r = train(
                [it["image"] for it in train_items],
                [it["gt"] for it in train_items],
                TrainConfig(minutes=args.minutes, seed=seed),
                names=[it["name"] for it in train_items],
                init=init,
            )
            before = init.meta.get("steps", 0) if init is not None else 0
            row[f"{how}_steps"] = int(r.bundle.meta.get("steps", 0)) - int(before)
            row[f"{how}_train_s"] = round(time.perf_counter() - t, 1)
            row[how] = score(r.bundle, test_items)
        row["gain"] = row["finetuned"] - row["scratch"]
        result["splits"].append(row)
        print(
            f"split {seed} (trained on {', '.join(row['trained_on'])}): "
            f"built-in {row['builtin']:.3f}  fine-tuned {row['finetuned']:.3f}  "
            f"scratch {row['scratch']:.3f}  gain {row['gain']:+.3f}",
            flush=True,
        )
        save("finetune_start", result)
    for k in ("builtin", "finetuned", "scratch", "gain"):
        result[f"median_{k}"] = median([r[k] for r in result["splits"]])
    print(
        f"median over {args.splits} splits: built-in {result['median_builtin']:.3f}, fine-tuned "
        f"{result['median_finetuned']:.3f}, scratch {result['median_scratch']:.3f}, gain "
        f"{result['median_gain']:+.3f} F1 on the other 12 images"
    )
    print(f"saved {save('finetune_start', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
