"""How close is the model-free object size estimate to the truth? (issue 18)

:func:`napari_unet.core.size.estimate_diameter` guesses the median object diameter of a raw
image; prediction resizes images by it. This compares the guess with the median equivalent
diameter of the ground-truth objects (:func:`napari_unet.core.size.median_diameter`) on:

- synthetic nuclei (tests/_synthetic.py ``sized_nuclei``: textured ellipses, touching pairs,
  noise, uneven background) of 8 to 120 px;
- Cell Tracking Challenge Fluo-N2DH-GOWT1 (6 images, ~60 px nuclei);
- NIH3T3 Hoechst (18 images, ~90 px; the ground truth merges touching nuclei, so its
  "truth" is a little high where nuclei touch);
- MICCAI H&E tissue (15 RGB images, 10-30 px);
- the 67 DSB2018 stage-1 test-split images of bench/splits (fluorescence, brightfield,
  tissue; 10-50 px).

The external sets are used for measuring only. For each set it prints the ratio
estimate / truth (median, worst, share within a factor 1.3) and the time per image, and
saves everything to bench/results/size_estimate.json.

Usage: python bench/size_estimate.py [--data ../shared/data] [--sets synthetic,ctc,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import DATA, RESULTS, machine  # noqa: E402

SETS = ("synthetic", "ctc", "nih3t3", "miccai", "dsb")
SYNTHETIC_SIZES = (8, 12, 16, 24, 32, 48, 64, 90, 120)


def cases(name: str, data: Path):
    """Yield (image name, image, channel axis, ground-truth labels) of one set."""
    from napari_unet.core.io import read_image

    ext = data / "external"
    if name == "synthetic":
        from _synthetic import sized_nuclei

        for d in SYNTHETIC_SIZES:
            for seed, background in ((0, "uneven"), (1, "flat"), (2, "uneven")):
                img, lab = sized_nuclei(d, seed=seed, background=background)
                yield f"d{d}_s{seed}_{background}", img, None, lab
    elif name == "ctc":
        root = ext / "ctc_gowt1_nuclei"
        for f in sorted((root / "images").glob("*.tif")):
            yield f.stem, read_image(f), None, read_image(root / "masks" / f.name)
    elif name == "nih3t3":
        root = ext / "nih3t3_nuclei"
        for f in sorted((root / "images").glob("*.png")):
            yield (
                f.stem,
                read_image(f),
                None,
                read_image(root / "labels_cc_derived" / f"{f.stem}.tif"),
            )
    elif name == "miccai":
        root = ext / "miccai_he_nuclei"
        for f in sorted((root / "images").glob("*.png")):
            img = read_image(f)
            yield f.stem, img[..., :3], -1, read_image(root / "masks" / f"{f.stem}.tif")
    elif name == "dsb":
        root = data / "dsb2018_stage1_train"
        for i in (HERE / "splits" / "dsb2018_test_ids.txt").read_text().split():
            img = read_image(root / "images" / f"{i}.png")
            if img.ndim == 3 and img.shape[-1] == 4:
                img = img[..., :3]
            yield (
                i[:12],
                img,
                -1 if img.ndim == 3 else None,
                read_image(root / "masks" / f"{i}.tif"),
            )
    else:
        raise SystemExit(f"unknown set {name!r}; choose from {SETS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    from napari_unet.core.size import estimate_diameter, median_diameter

    report: dict = {"machine": machine(), "sets": {}}
    print(
        f"{'set':10s} {'images':>6s} {'true px':>12s} {'ratio med':>9s} {'worst':>6s} "
        f"{'<=1.3x':>7s} {'s/image':>8s}"
    )
    for name in args.sets.split(","):
        rows = []
        for image_name, img, axis, lab in cases(name, Path(args.data)):
            truth = median_diameter(np.asarray(lab))
            t0 = time.perf_counter()
            est = estimate_diameter(img, channel_axis=axis)
            dt = time.perf_counter() - t0
            ratio = est.diameter / truth if est.found else float("nan")
            rows.append(
                {
                    "image": image_name,
                    "shape": list(img.shape),
                    "true": round(truth, 2),
                    "estimate": round(est.diameter, 2),
                    "ratio": round(ratio, 3),
                    "confidence": est.confidence,
                    "n_objects": est.n_objects,
                    "seconds": round(dt, 3),
                }
            )
        r = np.array([row["ratio"] for row in rows], float)
        off = np.where(np.isfinite(r), np.maximum(r, 1 / r), np.inf)
        worst = r[np.argmax(off)]
        truths = [row["true"] for row in rows]
        summary = {
            "images": len(rows),
            "true_min": round(min(truths), 1),
            "true_max": round(max(truths), 1),
            "ratio_median": round(float(np.nanmedian(r)), 3),
            "ratio_worst": round(float(worst), 3),
            "within_1.3": round(float(np.mean(off <= 1.3)), 3),
            "seconds_median": round(float(np.median([row["seconds"] for row in rows])), 3),
        }
        report["sets"][name] = {"summary": summary, "images": rows}
        print(
            f"{name:10s} {len(rows):6d} {summary['true_min']:5.0f}-{summary['true_max']:<6.0f} "
            f"{summary['ratio_median']:9.2f} {summary['ratio_worst']:6.2f} "
            f"{summary['within_1.3']:7.0%} {summary['seconds_median']:8.3f}",
            flush=True,
        )
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / "size_estimate.json"
        out.write_text(json.dumps(report, indent=1))
        print(f"saved {out}")


if __name__ == "__main__":
    main()
