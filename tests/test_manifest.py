"""The npe2 manifest: valid, importable, and offering what the user guide promises."""

from pathlib import Path

import pytest

from napari_unet import PLUGIN_NAME

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_file(ROOT / "napari.yaml")


def test_package_manifest_is_the_top_level_one():
    inside = ROOT / "napari_unet" / "napari.yaml"
    assert inside.resolve() == (ROOT / "napari.yaml").resolve()


def test_manifest_validates_with_imports(manifest):
    manifest.validate_imports()
    assert manifest.name == PLUGIN_NAME == "napari-unet-trainer"
    assert manifest.display_name == "napari-unet"


def test_widgets_have_the_documented_display_names(manifest):
    names = [w.display_name for w in manifest.contributions.widgets]
    assert names == ["Train", "Predict", "Split nuclei"]


def test_every_command_resolves_to_a_callable(manifest):
    for command in manifest.contributions.commands:
        assert callable(_resolve(command.python_name)), command.id


def _resolve(python_name):
    import importlib

    module, _, attribute = python_name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def test_sample_data_and_writers(manifest):
    from napari_unet.samples import SAMPLE_NAMES

    keys = [s.key for s in manifest.contributions.sample_data]
    assert keys == [*SAMPLE_NAMES, "nuclei_zstack"]  # the DSB2018 images, then a synthetic stack
    writers = {w.command: w for w in manifest.contributions.writers}
    # the TIFF writer first: napari gives a name without a suffix to a plugin's first writer
    assert list(writers) == [
        "napari-unet-trainer.write_labels",
        "napari-unet-trainer.write_labels_rois",
        "napari-unet-trainer.write_labels_folder",
    ]
    assert writers["napari-unet-trainer.write_labels"].layer_types == ["labels"]
    assert writers["napari-unet-trainer.write_labels"].filename_extensions == [".tif", ".tiff"]
    assert writers["napari-unet-trainer.write_labels_rois"].layer_types == ["labels"]
    assert writers["napari-unet-trainer.write_labels_rois"].filename_extensions == [".zip"]
    assert writers["napari-unet-trainer.write_labels_folder"].layer_types == ["labels+"]


def test_installed_plugin_is_discoverable():
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN_NAME)  # the installed entry point finds it
    assert [w.display_name for w in manifest.contributions.widgets] == [
        "Train",
        "Predict",
        "Split nuclei",
    ]


def test_importing_the_widget_modules_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import napari_unet._widgets._train, napari_unet._widgets._predict, "
        "napari_unet._widgets._split, napari_unet._writer, napari_unet._sample_data; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert out.stdout.strip().splitlines()[-1] == "False"
