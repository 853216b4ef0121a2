"""bench/gpu.py runs end to end on the CPU with tiny sizes, so the GPU measurement cannot rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("env", "train", "predict", "oom", "cpu_vs_gpu")
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui")

# Runs the script as the GPU machine does (`PYTHONPATH=. python bench/gpu.py`), then
# prints the GUI modules it imported: that machine has neither napari nor Qt.
RUNNER = f"""
import runpy, sys
sys.argv = ["bench/gpu.py", *sys.argv[1:]]
sys.path.insert(0, "bench")
runpy.run_path("bench/gpu.py", run_name="__main__")
gui = sorted(m for m in sys.modules if m.split(".")[0] in {GUI!r} or "_widgets" in m)
print("GUI_MODULES", gui)
"""


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, float):
        yield tree


def test_gpu_bench_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "--tiny", "--seconds", "0.5", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GUI_MODULES []" in proc.stdout, proc.stdout[-2000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "tiny"
    assert r["errors"] == [], {k: r[k].get("error") for k in SECTIONS}
    for name in SECTIONS:
        assert "error" not in r[name] and "skipped" not in r[name], (name, r[name])
        assert r[name]["section_seconds"] >= 0
    assert all(math.isfinite(v) for v in _numbers(r))
    assert r["env"]["torch"] and r["env"]["device"].startswith("CPU")

    train = r["train"]
    for key in ("default_fp32", "wide_fp32"):
        assert train[key]["img_s"] > 0 and train[key]["steps"] >= 1, train[key]
    assert train["wide_fp32"]["base_channels"] > train["default_fp32"]["base_channels"]
    assert train["default_amp"] == {"skipped": "no CUDA"}
    assert train["wide_amp"] == {"skipped": "no CUDA"}
    assert train["sample_batch_ms"] > 0

    for key in ("default", "large_tiles"):
        assert r["predict"][key]["mpix_s"] > 0, r["predict"][key]

    oom = r["oom"]
    assert oom["cap"].startswith("simulated") and oom["passed"] is True
    assert oom["train"]["end"]["batch"] < oom["train"]["start"]["batch"]
    assert oom["train"]["steps_after_retry"] >= 3
    assert any("ran out of memory" in n for n in oom["train"]["notes"])
    start, end = oom["predict"]["start"], oom["predict"]["end"]
    assert end["batch"] < start["batch"] and end["tile"] < start["tile"], (start, end)
    assert any("ran out of memory" in n for n in oom["predict"]["notes"])

    cmp_ = r["cpu_vs_gpu"]
    assert cmp_["compared"].startswith("cpu vs cpu")
    assert cmp_["object_f1"] == 1.0 and cmp_["max_abs_prob_diff"] < 1e-5
    assert "errors" in proc.stdout and "object F1" in proc.stdout  # the table


def test_failures_are_recorded_and_shown(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu

    failed = gpu._attempt(lambda: 1 / 0)
    assert failed["error"].startswith("ZeroDivisionError") and "Traceback" in failed["traceback"]
    result = {
        "env": {"device": "CUDA: X"},
        "train": {"default_fp32": failed, "default_amp": {"skipped": "no CUDA"}},
        "oom": {"train": {"passed": True, "start": 1, "end": 2}, "predict": failed},
    }
    assert sorted(gpu._errors(result)) == ["oom.predict", "train.default_fp32"]
    gpu.print_table({**result, "errors": sorted(gpu._errors(result))})
    shown = capsys.readouterr().out
    assert "ERROR ZeroDivisionError" in shown and "skipped: no CUDA" in shown
    assert "OK: 1 -> 2" in shown
