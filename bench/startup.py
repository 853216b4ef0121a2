"""Start-up costs: package import, napari start-up, opening the widgets (issue 5, target 5).

Each measurement runs in a fresh Python process (``--child``), interleaved and
repeated; medians are reported.

* ``import napari_unet``: time of the import statement alone (the interpreter's own
  start is excluded), and whether torch, Qt or napari were imported by it.
* napari start-up with vs without the plugin: time from ``import napari`` to a
  ``napari.Viewer(show=False)`` whose events have been processed (plugin discovery,
  the manifest's menus and sample entries included), under Xvfb. "Without" hides
  the napari-unet distribution from ``importlib.metadata.distributions`` in that
  process, which is what npe2 scans for ``napari.manifest`` entry points, so napari
  starts exactly as if the plugin were not installed; everything else (napari
  settings, cache, Python) is the same. Runs alternate with/without.
* each widget (Train, Predict, Split nuclei) opened cold through the manifest with
  ``viewer.window.add_plugin_dock_widget`` in a fresh viewer process, then the other
  two; afterwards ``"torch" in sys.modules`` must be False (torch loads when work
  first needs it).

Usage: python bench/startup.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import loadavg, machine, median, python_env, save, xvfb_prefix

from napari_unet import PLUGIN_NAME

WIDGETS = ("Train", "Predict", "Split nuclei")
ME = str(Path(__file__).resolve())


def child_import() -> dict:
    t = time.perf_counter()
    import napari_unet  # noqa: F401

    dt = time.perf_counter() - t
    heavy = [m for m in ("torch", "napari", "qtpy", "PyQt6", "magicgui") if m in sys.modules]
    return {"seconds": dt, "heavy_modules": heavy}


def _hide_plugin() -> None:
    """Make napari-unet invisible to entry-point discovery (as if not installed)."""
    import importlib.metadata as md

    original = md.distributions

    def distributions(**kwargs):
        for dist in original(**kwargs):
            if (dist.metadata["Name"] or "").lower().replace("_", "-") != PLUGIN_NAME:
                yield dist

    md.distributions = distributions


def child_napari(with_plugin: bool) -> dict:
    if not with_plugin:
        _hide_plugin()
    t, c = time.perf_counter(), time.process_time()
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    QApplication.processEvents()
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    from npe2 import PluginManager

    names = {m.name for m in PluginManager.instance().iter_manifests()}
    viewer.close()
    return {
        "seconds": dt,
        "cpu_seconds": cpu,
        "with_plugin": with_plugin,
        "plugin_found": PLUGIN_NAME in names,
    }


def child_widget(first: str) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    QApplication.processEvents()
    times = {}
    for name in (first,) + tuple(w for w in WIDGETS if w != first):
        t = time.perf_counter()
        viewer.window.add_plugin_dock_widget(PLUGIN_NAME, name)
        QApplication.processEvents()
        times[name] = time.perf_counter() - t
    torch_loaded = "torch" in sys.modules
    viewer.close()
    return {"first": first, "seconds": times, "torch_loaded": torch_loaded}


def _run(args: list[str], gui: bool) -> dict:
    env = python_env()
    env.setdefault("NAPARI_CONFIG", "")  # never touch the user's napari settings
    cmd = (xvfb_prefix() if gui else []) + [sys.executable, ME, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--child", choices=["import", "napari", "widget"])
    ap.add_argument("--without-plugin", action="store_true")
    ap.add_argument("--widget", default="Train")
    args = ap.parse_args(argv)
    if args.child == "import":
        print(json.dumps(child_import()))
        return {}
    if args.child == "napari":
        print(json.dumps(child_napari(not args.without_plugin)))
        return {}
    if args.child == "widget":
        print(json.dumps(child_widget(args.widget)))
        return {}

    load_start = loadavg()
    # napari's own start varies by +-0.3 s from run to run here: 10 alternating pairs, and
    # the median of the paired differences, to see a 0.2 s effect
    repeats = args.repeats or (3 if args.quick else 10)
    imports = [_run(["--child", "import"], gui=False) for _ in range(2 * repeats + 1)]
    t_import = median(r["seconds"] for r in imports)
    heavy = sorted({m for r in imports for m in r["heavy_modules"]})
    n = len(imports)
    print(f"import napari_unet: {1000 * t_import:.1f} ms (median of {n}), pulls in {heavy}")

    with_p, without_p, cpu_with, cpu_without = [], [], [], []
    for r in range(repeats):
        order = (True, False) if r % 2 == 0 else (False, True)
        for flag in order:
            res = _run(["--child", "napari"] + ([] if flag else ["--without-plugin"]), gui=True)
            assert res["plugin_found"] == flag, res
            (with_p if flag else without_p).append(res["seconds"])
            (cpu_with if flag else cpu_without).append(res["cpu_seconds"])
    # median of the differences within each alternating pair (with - without)
    d_napari = median(a - b for a, b in zip(with_p, without_p, strict=True))
    d_cpu = median(a - b for a, b in zip(cpu_with, cpu_without, strict=True))
    print(
        f"napari start: with plugin {median(with_p):.2f} s, without {median(without_p):.2f} s, "
        f"difference {d_napari:+.3f} s (CPU time difference {d_cpu:+.3f} s)"
    )

    widget_runs = []
    for _ in range(max(1, repeats // 2) if args.quick else repeats):
        for name in WIDGETS:
            widget_runs.append(_run(["--child", "widget", "--widget", name], gui=True))
    cold = {w: median(r["seconds"][w] for r in widget_runs if r["first"] == w) for w in WIDGETS}
    torch_loaded = any(r["torch_loaded"] for r in widget_runs)
    for w, s in cold.items():
        print(f"open {w!r} (first widget in a fresh viewer): {s:.3f} s")
    print(f"torch imported after opening the widgets: {torch_loaded}")

    result = {
        "import_napari_unet_s": round(t_import, 4),
        "import_runs_s": [round(r["seconds"], 4) for r in imports],
        "import_pulls_in": heavy,
        "napari_start_with_plugin_s": [round(v, 3) for v in with_p],
        "napari_start_without_plugin_s": [round(v, 3) for v in without_p],
        "napari_start_difference_s": round(d_napari, 3),
        "napari_start_cpu_with_plugin_s": [round(v, 3) for v in cpu_with],
        "napari_start_cpu_without_plugin_s": [round(v, 3) for v in cpu_without],
        "napari_start_cpu_difference_s": round(d_cpu, 3),
        "widget_open_cold_s": {w: round(s, 3) for w, s in cold.items()},
        "widget_runs": widget_runs,
        "torch_loaded_after_opening_widgets": torch_loaded,
        "targets": {
            "import_napari_unet_s": 0.05,
            "napari_start_difference_s": 0.2,
            "widget_open_s": 0.5,
            "torch_loaded_after_opening_widgets": False,
        },
        "passed": {
            "import": t_import <= 0.05 and "torch" not in heavy,
            "napari_start": d_napari <= 0.2,
            "widgets": max(cold.values()) <= 0.5,
            "torch_lazy": not torch_loaded,
        },
        "loadavg_start": load_start,
        "machine": machine(),
    }
    save("startup", result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
