"""bfloat16 against float32 prediction with one model: do the labels agree? (issue 23 §1)

Predicts the 67 held-back DSB2018 images (``bench/splits/dsb2018_test_ids.txt``) with the
built-in ``nuclei`` model (or ``--model``) twice, ``precision="fp32"`` and ``"bf16"``
(``torch.autocast`` on the CPU), and reports:

- the object F1 at IoU 0.5 between the two label images of each image (target >= 0.99:
  bfloat16 changes nothing a user would see), median and worst;
- each precision's F1 and DSB score against the ground truth;
- the largest difference of the foreground probabilities.

On a CPU without native bfloat16 the bf16 run is emulated (slower, same rounding: the
network's inputs and weights in bfloat16, sums in float32), so the agreement measured here
holds for CPUs that compute it natively; the speed does not (see ``bench/cpu_bf16.py``).

Usage: python bench/bf16_parity.py [--model nuclei] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, save  # noqa: E402
from builtin_models import load_set  # noqa: E402
from cpu_bf16 import cpu_flags  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei", help="a built-in model's name or a .pt file")
    ap.add_argument("--limit", type=int, help="only the first N images")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from napari_unet.core.builtin import resolve_model
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.data import guess_channel_axis
    from napari_unet.core.metrics import evaluate, match_objects
    from napari_unet.core.predict import PredictConfig, predict

    torch.set_num_threads(args.threads)
    bundle = load_checkpoint(resolve_model(args.model), device="cpu")
    items = load_set("dsb_test", args.limit)
    preds: dict[str, list[np.ndarray]] = {"fp32": [], "bf16": []}
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    agreement, max_diff = [], []
    for it in items:
        probs = {}
        axis = guess_channel_axis(it["image"].shape, bundle.in_channels)  # as the CLI does
        for precision in ("fp32", "bf16"):
            cfg = PredictConfig.for_model(bundle, device="cpu", precision=precision)
            t0 = time.perf_counter()
            r = predict(bundle, it["image"], channel_axis=axis, config=cfg)
            seconds[precision].append(time.perf_counter() - t0)
            assert r.settings["precision_used"] == precision
            preds[precision].append(r.labels)
            probs[precision] = r.probabilities["foreground"]
        m = match_objects(preds["fp32"][-1], preds["bf16"][-1], 0.5)
        tp, fp, fn = int(m.tp[0]), int(m.fp[0]), int(m.fn[0])
        agreement.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
        max_diff.append(float(np.max(np.abs(probs["fp32"] - probs["bf16"]))))
    truth = [it["gt"] for it in items]
    scores = {}
    for precision in ("fp32", "bf16"):
        r = evaluate(truth, preds[precision])
        scores[precision] = {k: round(float(r[k]), 4) for k in ("f1", "dsb_score")}
        scores[precision]["seconds_median"] = round(float(np.median(seconds[precision])), 3)
    worst = int(np.argmin(agreement))
    out = {
        "model": args.model,
        "images": len(items),
        "threads": args.threads,
        "cpu_flags": cpu_flags(),
        "label_agreement_f1_median": round(float(np.median(agreement)), 4),
        "label_agreement_f1_worst": round(float(agreement[worst]), 4),
        "worst_image": items[worst]["name"],
        "images_below_0.99": int(np.sum(np.asarray(agreement) < 0.99)),
        "max_probability_difference": round(float(np.max(max_diff)), 4),
        "against_ground_truth": scores,
        "target": "object F1 between the bf16 and fp32 labels >= 0.99",
        "passed": bool(np.median(agreement) >= 0.99),
        "machine": machine(),
        "command": "python bench/bf16_parity.py " + " ".join(argv or sys.argv[1:]),
    }
    print(
        f"bf16 against fp32 labels on {len(items)} images: object F1 median "
        f"{out['label_agreement_f1_median']:.4f}, worst {out['label_agreement_f1_worst']:.4f} "
        f"({out['images_below_0.99']} below 0.99); ground truth F1 fp32 "
        f"{scores['fp32']['f1']:.4f} / bf16 {scores['bf16']['f1']:.4f}, DSB "
        f"{scores['fp32']['dsb_score']:.4f} / {scores['bf16']['dsb_score']:.4f}"
    )
    save("bf16_parity", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
