"""From the GUI to the cluster and back: export a training set, train with the CLI, predict."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from napari_unet import PLUGIN_NAME
from napari_unet.cli import main
from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.export import export_training_set, safe_stems
from napari_unet.core.io import list_image_files, pair_images_and_labels, read_labels
from napari_unet.core.train import TrainConfig
from tests._gui_helpers import (
    assert_unchanged,
    error_messages,
    layer_snapshot,
    make_tiny,
    open_widget,
    wait_idle,
)


def test_safe_stems_pair_whatever_the_layer_names(tmp_path):
    names = ["cells 1", "cells/1", "x_mask", "", "A", "a"]
    stems = safe_stems(names)
    assert len(set(s.lower() for s in stems)) == len(names)
    imgs = [np.full((20, 20), i, np.uint8) for i in range(len(names))]
    labs = [np.full((20, 20), i + 1, np.uint16) for i in range(len(names))]
    s = export_training_set(tmp_path / "e", names, imgs, labs, TrainConfig())
    pairs, missing = pair_images_and_labels(
        list_image_files(tmp_path / "e" / "images"), list_image_files(tmp_path / "e" / "labels")
    )
    assert not missing and len(pairs) == len(names)
    for image_file, label_file in pairs:
        i = int(tifffile.imread(image_file)[0, 0])
        assert int(read_labels(label_file)[0, 0]) == i + 1  # each image with its own labels
    assert subprocess.run(["bash", "-n", str(s.folder / "run_on_cluster.sh")]).returncode == 0


def test_export_refuses_to_overwrite_and_writes_nothing(tmp_path):
    img, lab = np.zeros((20, 20), np.float32), np.zeros((20, 20), np.uint16)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "b_labels.tif").write_bytes(b"mine")
    with pytest.raises(NapariUnetError, match="nothing is overwritten"):
        export_training_set(tmp_path, ["a", "b"], [img, img], [lab, lab], TrainConfig())
    assert (tmp_path / "labels" / "b_labels.tif").read_bytes() == b"mine"
    assert not (tmp_path / "images").exists() and not (tmp_path / "train_config.json").exists()
    with pytest.raises(NapariUnetError, match="nothing to export"):
        export_training_set(tmp_path / "n", [], [], [], TrainConfig())
    with pytest.raises(NapariUnetError, match="whole numbers"):
        export_training_set(tmp_path / "f", ["a"], [img], [img], TrainConfig())


def test_large_label_values_are_kept(tmp_path):
    lab = np.zeros((20, 20), np.uint32)
    lab[5:10, 5:10] = 70000
    export_training_set(tmp_path, ["a"], [np.zeros((20, 20))], [lab], TrainConfig())
    back = read_labels(tmp_path / "labels" / "a_labels.tif")
    assert back.max() == 70000


@pytest.fixture
def viewer(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    return make_napari_viewer()


@pytest.mark.gui
def test_export_train_on_cluster_cli_and_predict_in_napari(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN_NAME, "fluo_dense")
    viewer.open_sample(PLUGIN_NAME, "fluo_small")
    train = open_widget(viewer, "Train")
    predict = open_widget(viewer, "Predict")
    assert train.export_button.text() == "Export for a cluster..."
    train.pairs.set_pairs([("fluo_dense", "fluo_dense_ground_truth")])
    make_tiny(train)
    train.lr.setValue(0.002)
    train.seed.setValue(5)
    # a correction from an earlier round is in the session's training set
    small = viewer.layers["fluo_small"].data
    corrected = np.asarray(viewer.layers["fluo_small_ground_truth"].data).copy()
    corrected[:5, :5] = 0
    train.session.add_training_pair("fluo_small", small, corrected)
    before = layer_snapshot(viewer)

    folder = tmp_path / "for cluster"
    summary = train.export_for_cluster(folder)
    assert summary is not None and not error_messages()
    assert_unchanged(viewer, before)
    settings = json.loads((folder / "train_config.json").read_text())
    assert settings["lr"] == 0.002 and settings["seed"] == 5 and settings["depth"] == 2
    assert settings["base_channels"] == 8 and settings["device"] == "cpu"
    assert "checkpoint_path" not in settings
    np.testing.assert_array_equal(
        read_labels(folder / "labels" / "fluo_small_labels.tif"), corrected
    )
    script = (folder / "run_on_cluster.sh").read_text()
    assert "#SBATCH" in script and "torchrun" in script and "--config train_config.json" in script

    # a second export into the same folder: a clear error, nothing overwritten
    mtime = (folder / "train_config.json").stat().st_mtime_ns
    assert train.export_for_cluster(folder) is None
    assert any("nothing is overwritten" in m for m in error_messages())
    assert (folder / "train_config.json").stat().st_mtime_ns == mtime

    # "on the cluster": the command of the script, a few steps
    model = folder / "model.pt"
    args = ["train", "--images", folder / "images", "--labels", folder / "labels"]
    args += ["--config", folder / "train_config.json", "--out", model]
    args += ["--epochs", "1", "--steps-per-epoch", "4", "--val-fraction", "0"]
    assert main(list(map(str, args))) == 0
    trained = load_checkpoint(model)
    assert trained.meta["train_config"]["lr"] == 0.002
    assert trained.meta["n_train_images"] == 2  # the selected pair and the correction

    # back in napari: Predict with the model file
    predict.image.setCurrentText("fluo_small")
    predict.model_choice.setCurrentText("A model file")
    predict.model_path.value = str(model)
    predict.tile_size.setValue(128)
    qtbot.mouseClick(predict.predict_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, predict)
    assert not [m for m in error_messages() if "overwritten" not in m]
    result = viewer.layers["fluo_small_labels"]
    assert result.data.shape == np.asarray(small).shape[:2]
    assert result.data.dtype == np.uint32  # (4 steps: too few to expect nuclei)
    assert predict.session.model_info.source == "Loaded from model.pt"
