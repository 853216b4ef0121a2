"""Memory given back after training and prediction (issue 5, target 6).

One fresh process per scenario (``--child``). In it: load DSB2018 images, import
torch and the core, take the resident set size (RSS, ``/proc/self/status``) as
"before"; then

* train: the default TrainConfig, stopped by the stop event after ``--steps``
  steps (the user pressing Stop), keeping the returned model, as the widget does;
* predict: ``predict`` (probabilities and labels) on a 2048x2048 image, the result
  then dropped (its size is reported: it is the user's output, not work memory);
* both, one after the other.

RSS is sampled at every progress report (the peak during the work) and taken
again after the generator has finished. The target: after <= 1.10 x before.
``--no-trim`` runs the same with ``malloc_trim`` switched off, to show what
:func:`napari_unet.core.device.release_memory` changes (glibc keeps freed heap
memory otherwise).

Usage: python bench/memory_after.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
from pathlib import Path

from _common import dsb_fluo_pairs, loadavg, machine, rss_mib, run_json, save

ME = str(Path(__file__).resolve())


def child(scenario: str, steps: int, trim: bool) -> dict:
    import numpy as np
    import torch  # noqa: F401  (imported before "before": a library, not work memory)

    import napari_unet.core.device as dev
    from napari_unet.core.checkpoint import new_bundle
    from napari_unet.core.model import UNetSpec
    from napari_unet.core.predict import PredictConfig, iter_predict
    from napari_unet.core.train import STEP, TrainConfig, iter_train

    if not trim:
        dev.trim_heap = lambda: False  # release_memory looks it up at call time
    pairs = dsb_fluo_pairs(12)
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    big = np.tile(np.concatenate([p[0][:256, :256] for p in pairs[:8]], axis=1), (8, 1))
    untrained = new_bundle(UNetSpec(1, 2), {"outputs": ["foreground", "boundary"]})

    def work() -> dict:
        """One pass of the scenario; RSS before, peak, after (output kept, then its size)."""
        gc.collect()
        before = rss_mib()
        peak, output, model = before, 0, untrained
        if scenario in ("train", "both"):
            stop = threading.Event()
            config = TrainConfig(device="cpu", steps_per_epoch=max(steps // 2, 1))
            gen = iter_train(images, labels, config, stop=stop)
            while True:
                try:
                    p = next(gen)
                except StopIteration as e:
                    model = e.value.bundle  # kept, as the widget keeps it (8 MiB)
                    break
                peak = max(peak, rss_mib())
                if p.kind == STEP and p.step >= steps:
                    stop.set()  # the user presses Stop
            del gen
        result = None
        if scenario in ("predict", "both"):
            gen = iter_predict(model, big, config=PredictConfig(device="cpu"))
            while True:
                try:
                    next(gen)
                except StopIteration as e:
                    result = e.value
                    break
                peak = max(peak, rss_mib())
            del gen
            output = result.labels.nbytes + sum(a.nbytes for a in result.probabilities.values())
        after = rss_mib()  # right after the work ended, its output still held
        output_mib = output / 2**20
        return {
            "before_mib": round(before, 1),
            "peak_mib": round(peak, 1),
            "after_mib": round(after, 1),
            "output_mib": round(output_mib, 1),
            "after_over_before": round((after - output_mib) / before, 3),
        }

    gc.collect()
    imported = rss_mib()
    first = work()
    second = work()
    return {
        "scenario": scenario,
        "malloc_trim": trim,
        "steps": steps,
        "predict_image": list(big.shape),
        "after_import_mib": round(imported, 1),
        "first": first,
        "second": second,
        "loadavg": loadavg(),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--child", choices=["train", "predict", "both"])
    ap.add_argument("--no-trim", action="store_true")
    args = ap.parse_args(argv)
    steps = args.steps or (4 if args.quick else 10)
    if args.child:
        print(json.dumps(child(args.child, steps, not args.no_trim)))
        return {}
    load_start = loadavg()
    runs = []
    scenarios = ["train", "predict"] + ([] if args.quick else ["both"])
    for scenario in scenarios:
        for trim in (True,) if args.quick else (True, False):
            cmd = [ME, "--child", scenario, "--steps", str(steps)] + ([] if trim else ["--no-trim"])
            r = run_json(cmd)
            for which in ("first", "second"):
                w = r[which]
                print(
                    f"{scenario:8s} trim={str(trim):5s} {which:6s} before {w['before_mib']:6.1f} "
                    f"MiB, peak {w['peak_mib']:6.1f}, after {w['after_mib']:6.1f} (output "
                    f"{w['output_mib']:.0f}): after - output = {w['after_over_before']:.3f} x "
                    "before"
                )
            runs.append(r)
    with_trim = [r for r in runs if r["malloc_trim"]]
    worst = max(r["second"]["after_over_before"] for r in with_trim)
    worst_first = max(r["first"]["after_over_before"] for r in with_trim)
    result = {
        "what": "process RSS before, at the peak of, and after training/prediction (CPU)",
        "runs": runs,
        "worst_after_over_before": worst,
        "worst_after_over_before_first_run": worst_first,
        "target": "(after - output) <= 1.10 x before, on a repeated run (the first run also "
        "pays one-time costs: torch thread pool and kernels, imports)",
        "passed": worst <= 1.10,
        "loadavg_start": load_start,
        "machine": machine(),
    }
    save("memory_after", result)
    return result


if __name__ == "__main__":
    main()
