"""The package is importable without heavy imports, and its wheel carries the manifest."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["napari_unet", "napari_unet.core", "napari_unet.samples"])
def test_import_pulls_in_neither_qt_nor_napari_nor_torch(module):
    code = (
        f"import sys, {module}; "
        "bad = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_core_modules_never_import_gui_packages():
    import re

    pattern = re.compile(r"^\s*(from|import)\s+(napari|qtpy|magicgui|PyQt\d|PySide\d)\b", re.M)
    for path in (ROOT / "napari_unet" / "core").glob("*.py"):
        found = pattern.findall(path.read_text())
        assert not found, f"{path.name} imports {found}"


#: Largest wheel accepted: the built-in models (float16) and the samples must stay small.
MAX_WHEEL_BYTES = 50_000_000


def test_wheel_contains_the_manifest_sample_data_and_built_in_models(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("napari_unet_trainer-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        manifest = z.read("napari_unet/napari.yaml").decode()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        eps = z.read(entry_points).decode()
    # the packaged manifest is the top-level one, as a real file
    assert manifest == (ROOT / "napari.yaml").read_text()
    assert "napari-unet-trainer = napari_unet:napari.yaml" in eps
    assert "napari-unet = napari_unet.cli:main" in eps
    assert any(n.startswith("napari_unet/sample_data/") and n.endswith(".tif") for n in names)
    # the built-in models' index and every model file it lists (napari_unet/models)
    assert "napari_unet/models/builtin.json" in names
    index = json.loads((ROOT / "napari_unet" / "models" / "builtin.json").read_text() or "[]")
    for entry in index:
        assert f"napari_unet/models/{entry['file']}" in names, entry
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, f"{wheel.name}: {wheel.stat().st_size} bytes"
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(ROOT / "napari.yaml")
    names = {w.display_name for w in pm.contributions.widgets}
    assert names == {"Train", "Predict", "Split nuclei"}
