"""What the end-of-training fit costs, against one prediction of the same images.

At the end of a run the trainer predicts the held-back images with the best-validated
and the final weights, scores both at the default settings, and then fits the threshold
and split depth (21 settings scored). It keeps time free for this in the budget, counted
in predictions of the fit's images (``napari_unet.core.final_fit.FIT_PER_PASS`` for
the fit). This script measures those parts on the 60 DSB 2018 validation images (seed 0, as
bench/validation_score.py; the test ids are not touched) and on the 11 of them that each
validation scores, with a trained model, repeated, and reports medians. The fit is
timed twice in each repeat, side by side: on one thread and on the threads the trainer
uses (``napari_unet.core.tune.fit_threads()``).

Usage: python bench/fit_cost.py MODEL.pt [--repeats 3]
Prints a table and writes bench/results/fit_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _common import DATA, RESULTS, loadavg, machine


def main() -> None:
    import torch
    from postprocess_sweep import validation_ids

    from napari_unet.core import final_fit, validation
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.data import Normalisation, prepare_samples
    from napari_unet.core.io import read_image, read_labels
    from napari_unet.core.losses import loss_function
    from napari_unet.core.predict import PredictConfig, labels_from_output
    from napari_unet.core.train_config import TrainConfig
    from napari_unet.core.tune import fit_threads, score_labels, tune_postprocessing

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = DATA / "dsb2018_stage1_train"
    ids = validation_ids()
    bundle = load_checkpoint(args.model)
    norm = Normalisation.from_dict(bundle.meta.get("normalisation", {}))
    samples = prepare_samples(
        [read_image(root / "images" / f"{i}.png") for i in ids],
        [read_labels(root / "masks" / f"{i}.tif") for i in ids],
        normalisation=norm,
        names=ids,
        in_channels=bundle.in_channels,
    )
    cfg = TrainConfig()
    subset = validation.first_pixels(samples, cfg.val_max_images, cfg.val_max_pixels)
    device = torch.device("cpu")
    loss_fn = loss_function(cfg.loss)
    la0 = loadavg()
    result = {
        "what": "seconds of the parts of the end-of-training fit, medians of repeats",
        "model": args.model,
        "repeats": args.repeats,
        "device": "CPU",
        "torch_threads": torch.get_num_threads(),
        "FIT_PER_PASS": final_fit.FIT_PER_PASS,
        "fit_threads": fit_threads(),
        "sets": {},
    }
    print(
        f"{'images':>17s} {'Mpx':>5s} {'validate':>9s} {'predict':>8s} {'score':>6s} "
        f"{'fit 1 thr':>9s} {'fit':>6s} {'(score+fit)/predict':>20s}  ({fit_threads()} threads)"
    )
    for name, ss in (("validation subset", subset), ("all held back", samples)):
        inst = [s.targets.instances for s in ss]
        times: dict[str, list[float]] = {
            "validate": [],
            "predict": [],
            "score": [],
            "fit_1_thread": [],
            "fit": [],
        }
        for _ in range(args.repeats):
            t = time.perf_counter()
            validation.validate(bundle, ss, loss_fn, device, len(bundle.outputs))
            times["validate"].append(time.perf_counter() - t)
            t = time.perf_counter()
            probs = final_fit.predict_held_back(bundle, ss, device, None)
            times["predict"].append(time.perf_counter() - t)
            t = time.perf_counter()
            score_labels(
                inst, [labels_from_output(p, bundle.outputs, PredictConfig()) for p in probs]
            )
            times["score"].append(time.perf_counter() - t)
            t = time.perf_counter()
            one = tune_postprocessing(probs, inst, bundle.outputs, workers=1)
            times["fit_1_thread"].append(time.perf_counter() - t)
            t = time.perf_counter()
            threaded = tune_postprocessing(probs, inst, bundle.outputs)
            times["fit"].append(time.perf_counter() - t)
            assert threaded == one, "the threaded fit chose differently"
        med = {k: statistics.median(v) for k, v in times.items()}
        px = sum(s.shape[0] * s.shape[1] for s in ss)
        ratio = (med["score"] + med["fit"]) / med["predict"]
        result["sets"][name] = {
            "n_images": len(ss),
            "pixels": px,
            "seconds": times,
            "median_s": med,
            "fit_per_predict": ratio,
            "fit_per_predict_1_thread": (med["score"] + med["fit_1_thread"]) / med["predict"],
            "fit_speedup": med["fit_1_thread"] / med["fit"],
            "predict_per_validate": med["predict"] / med["validate"],
        }
        print(
            f"{name:>17s} {px / 1e6:5.1f} {med['validate']:9.2f} {med['predict']:8.2f} "
            f"{med['score']:6.2f} {med['fit_1_thread']:9.2f} {med['fit']:6.2f} {ratio:20.2f}"
        )
    result["loadavg_start"], result["loadavg_end"] = la0, loadavg()
    result["machine"] = machine()
    out = RESULTS / "fit_cost.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
