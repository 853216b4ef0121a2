"""Run every speed and memory benchmark (issues 5, 20, 23); print a table; write latest.json.

Each benchmark is its own script (runnable alone) and runs here in a fresh process:

    train     bench/train_speed.py     1. trainer images/s vs a bare PyTorch loop
    viewer    bench/viewer_lag.py      2. event-loop lateness while the Train widget trains
    viewer_predict  bench/viewer_lag.py --mode predict
                                       2. the same while the Predict widget predicts a
                                          4096x4096 image (issue 23)
    predict   bench/predict_large.py   3. 1k-8k images: peak memory, Mpixel/s, MONAI, seams
    split     bench/split_speed.py     4. split_nuclei vs the scikit-image recipe
    startup   bench/startup.py         5. import, napari start-up, widgets, lazy torch
    memory    bench/memory_after.py    6. RSS before / peak / after training and prediction
    measure   bench/measure_speed.py   7. measurements of 1,000 objects on 2048x2048
    rois      bench/roi_export.py      7. ImageJ ROI set of the same 1,000 objects

``latest.json`` has one key per target (measured value, target, pass/fail, the
benchmark's own result file) plus the machine and its load average at the start and
the end. The machine's load matters: on a busy 2-core CPU torch runs 3-10x slower,
so absolute timings taken under load are not comparable; ratios are taken side by
side inside each benchmark.

Usage: python bench/run.py [--quick] [--only train,predict,...]
(--only re-runs some benchmarks and updates their targets in latest.json; the others keep
their earlier results, and the earlier report is kept under "updated".)
(about 15 minutes on a quiet 2-core machine; --quick about 6)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import HERE, RESULTS, ROOT, loadavg, machine, python_env

BENCHES = {
    "train": "train_speed.py",
    "viewer": "viewer_lag.py",
    "viewer_predict": "viewer_lag.py",
    "predict": "predict_large.py",
    "split": "split_speed.py",
    "startup": "startup.py",
    "memory": "memory_after.py",
    "measure": "measure_speed.py",
    "rois": "roi_export.py",
}
RESULT_FILES = {
    "train": "train_speed.json",
    "viewer": "viewer_lag.json",
    "viewer_predict": "viewer_lag_predict.json",
    "predict": "predict_large.json",
    "split": "split_speed.json",
    "startup": "startup.json",
    "memory": "memory_after.json",
    "measure": "measure_speed.json",
    "rois": "roi_export.json",
}


def _args(name: str, quick: bool) -> list[str]:
    if name in ("split", "measure", "rois"):
        return ["--repeats", "3" if quick else "5"]
    mode = ["--mode", "predict"] if name == "viewer_predict" else []
    return mode + (["--quick"] if quick else [])


def targets(name: str, r: dict) -> dict:
    """The issue's targets for one benchmark's result: {key: {value, target, passed}}."""
    if name == "train":
        return {
            "1_training_throughput": {
                "value": {
                    "trainer_img_s": r["trainer_img_s_median"],
                    "bare_loop_img_s": r["bare_img_s_median"],
                    "ratio": r["ratio"],
                },
                "target": "trainer >= 0.95 x bare PyTorch loop",
                "passed": r["ratio"] >= 0.95,
            }
        }
    if name == "viewer":
        tr = r["training"]
        return {
            "2_viewer_responsive": {
                "value": {
                    "p99_ms": tr["p99_ms"],
                    "max_ms": tr["max_ms"],
                    "seconds": r["seconds"],
                    "idle_p99_ms": r["idle"].get("p99_ms"),
                    "after_stop_max_ms": r["while_stopping"].get("max_ms"),
                },
                "target": "p99 <= 30 ms, max <= 100 ms over >= 60 s of training",
                # --quick trains for 15 s only: too short to judge (None = not judged)
                "passed": (tr["p99_ms"] <= 30 and tr["max_ms"] <= 100)
                if r["seconds"] >= 60
                else None,
            }
        }
    if name == "viewer_predict":
        pr = r["predicting"]
        return {
            "2_viewer_responsive_predicting": {
                "value": {
                    "p99_ms": pr["p99_ms"],
                    "max_ms": pr["max_ms"],
                    "size": r["size"],
                    "seconds": r["predict_seconds"],
                    "idle_p99_ms": r["idle"].get("p99_ms"),
                    "torch_in_viewer_process": r["torch_imported_in_viewer_process"],
                    "adding_layers_ms": r["add_layers_ms"],
                },
                "target": "p99 <= 30 ms, max <= 100 ms during a 4096x4096 prediction",
                "passed": pr["p99_ms"] <= 30 and pr["max_ms"] <= 100 and r["size"] >= 4096,
            }
        }
    if name == "predict":
        seams = r["seams"]
        sizes = {
            f"{s['size']}": {
                "mpix_s": s["mpix_s"],
                "peak_increase_mib": s["peak_increase_mib"],
                "output_mib": s["output_mib"],
                "working_mib": s["working_mib"],
            }
            for s in r["sizes"]
        }
        working = [s["working_mib"] for s in r["sizes"]]
        areas = [s["size"] ** 2 for s in r["sizes"]]
        # "grows with the tile, not the image": the largest image has >= 16x the area
        # of the smallest; its working memory must stay under 2x
        bounded = max(working) <= 2 * min(working) if max(areas) >= 16 * min(areas) else None
        return {
            "3_large_images_memory": {
                "value": sizes,
                "target": "working memory (peak increase minus the output) bounded, "
                "<= 2x from the smallest to the largest (>= 16x the area)",
                "passed": bounded,
            },
            "3_large_images_vs_monai": {
                "value": {str(m["size"]): m["speed_ratio"] for m in r["monai"]},
                "target": "ours >= MONAI sliding_window_inference (time ratio MONAI / ours)",
                "passed": r["speed_vs_monai_min"] >= 1.0,
            },
            "3_large_images_seams": {
                "value": {
                    "max_abs_diff_margin_64": seams["max_abs_diff_margin_64"],
                    "mean_abs_diff_margin_64": seams["mean_abs_diff_margin_64"],
                },
                "target": "tiled = whole-image prediction away from the borders "
                "(max abs difference of probabilities <= 0.01)",
                "passed": seams["max_abs_diff_margin_64"] <= 0.01,
            },
        }
    if name == "split":
        return {
            "4_splitting": {
                "value": {"split_nuclei_s": r["split_nuclei_s"], "ratio": r["ratio"]},
                "target": "<= 1 s and <= 1.1 x the scikit-image recipe",
                "passed": r["split_nuclei_s"] <= 1.0 and r["ratio"] <= 1.1,
            }
        }
    if name == "startup":
        p = r["passed"]
        return {
            "5_startup_import": {
                "value": {
                    "import_ms": round(1000 * r["import_napari_unet_s"], 1),
                    "pulls_in": r["import_pulls_in"],
                },
                "target": "<= 50 ms, no torch",
                "passed": p["import"],
            },
            "5_startup_napari": {
                "value": {
                    "difference_s": r["napari_start_difference_s"],
                    "cpu_difference_s": r.get("napari_start_cpu_difference_s"),
                },
                "target": "napari starts <= 0.2 s slower with the plugin",
                "passed": p["napari_start"],
            },
            "5_startup_widgets": {
                "value": r["widget_open_cold_s"],
                "target": "each widget opens in <= 0.5 s",
                "passed": p["widgets"],
            },
            "5_startup_torch_lazy": {
                "value": {
                    "torch_loaded_after_opening_widgets": r["torch_loaded_after_opening_widgets"]
                },
                "target": "torch not imported by opening the widgets",
                "passed": p["torch_lazy"],
            },
        }
    if name == "memory":
        return {
            "6_memory_after_work": {
                "value": {
                    "worst_after_over_before": r["worst_after_over_before"],
                    "worst_first_run": r["worst_after_over_before_first_run"],
                },
                "target": r["target"],
                "passed": r["passed"],
            }
        }
    if name == "measure":
        return {
            "7_measure_objects": {
                "value": {"seconds": r["value_s"], "objects": r["objects"]},
                "target": "1,000 objects of a 2048x2048 image measured in < 1 s",
                "passed": r["passed"],
            }
        }
    if name == "rois":
        return {
            "7_roi_export": {
                "value": {
                    "seconds": r["write_roi_zip_s"],
                    "objects": r["n_objects"],
                    "iou_min": r["iou_min"],
                },
                "target": "ImageJ ROI set of 1,000 objects in < 2 s, every ROI IoU >= 0.9",
                "passed": r["passed"],
            }
        }
    raise ValueError(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs, fewer repeats")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    args = ap.parse_args(argv)
    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(names) - set(BENCHES)
        if unknown:
            ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHES)}")
    report = {
        "quick": args.quick,
        "machine": machine(),
        "loadavg_start": loadavg(),
        "targets": {},
        "benchmarks": {},
    }
    t_all = time.perf_counter()
    for name in names:
        script = HERE / BENCHES[name]
        print(f"\n=== {name}: {script.name} {' '.join(_args(name, args.quick))}", flush=True)
        t = time.perf_counter()
        load = loadavg()
        proc = subprocess.run(
            [sys.executable, str(script), *_args(name, args.quick)],
            env=python_env(),
            cwd=ROOT,
        )
        entry = {
            "script": f"bench/{script.name}",
            "seconds": round(time.perf_counter() - t, 1),
            "loadavg_before": load,
            "loadavg_after": loadavg(),
            "exit_code": proc.returncode,
            "result_file": f"bench/results/{RESULT_FILES[name]}",
        }
        report["benchmarks"][name] = entry
        if proc.returncode != 0:
            report["targets"][name] = {"value": None, "target": "", "passed": False}
            continue
        result = json.loads((RESULTS / RESULT_FILES[name]).read_text())
        for key, value in targets(name, result).items():
            report["targets"][key] = {**value, "benchmark": name}
    report["loadavg_end"] = loadavg()
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    out = RESULTS / "latest.json"
    if args.only and out.exists():  # a re-run of some benchmarks updates the full report
        previous = json.loads(out.read_text())
        if previous.get("quick") == args.quick:
            rerun = set(names)
            for key, value in previous.get("targets", {}).items():
                if value.get("benchmark") not in rerun and key not in report["targets"]:
                    report["targets"][key] = value
            for name, entry in previous.get("benchmarks", {}).items():
                report["benchmarks"].setdefault(name, entry)
            report["updated"] = {"benchmarks": sorted(rerun), "previous": previous}
    judged = [t["passed"] for t in report["targets"].values() if t["passed"] is not None]
    report["all_passed"] = all(judged)
    report["not_judged"] = [k for k, t in report["targets"].items() if t["passed"] is None]
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"\n{'target':28s} {'pass':5s} value")
    for key, t in sorted(report["targets"].items()):
        value = json.dumps(t["value"], default=str)
        if len(value) > 90:
            value = value[:87] + "..."
        mark = "n/a" if t["passed"] is None else "yes" if t["passed"] else "NO"
        print(f"{key:28s} {mark:5s} {value}")
    print(
        f"\nload average {report['loadavg_start']} -> {report['loadavg_end']}, "
        f"{report['seconds']:.0f} s; wrote {out.relative_to(ROOT)}"
    )
    return 0 if all(b["exit_code"] == 0 for b in report["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
