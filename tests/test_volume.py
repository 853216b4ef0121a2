"""3D labels of z-stacks (issue 22): core/volume.py, 3D prediction and the CLI's axes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.metrics import match_objects
from napari_unet.core.predict import PredictConfig, predict, resolve_axes
from napari_unet.core.volume import (
    labels_from_probabilities_3d,
    min_volume,
    spacing_from_voxel_size,
    split_by_axes,
    split_nuclei_3d,
)
from napari_unet.samples import synthetic_nuclei_stack


def _ellipsoid(shape, centre, radii, z_step=1.0):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    q = (
        ((zz + 0.5) * z_step - centre[0]) ** 2 / radii[0] ** 2
        + (yy - centre[1]) ** 2 / radii[1] ** 2
        + (xx - centre[2]) ** 2 / radii[2] ** 2
    )
    return q < 1


def test_one_nucleus_across_slices_is_one_object():
    mask = _ellipsoid((20, 40, 40), (10, 20, 20), (8, 9, 9))
    labels = split_nuclei_3d(mask, h=1.0)
    assert labels.max() == 1 and np.count_nonzero(labels) == np.count_nonzero(mask)
    # the 2D split on the same mask gives one object per slice
    from napari_unet.core.split import split_nuclei

    assert split_nuclei(mask, h=1.0).max() == np.count_nonzero(mask.any(axis=(1, 2)))


@pytest.mark.parametrize("z_step", [1.0, 3.0])
@pytest.mark.parametrize("direction", ["side", "above"])
def test_touching_nuclei_are_split_in_3d(z_step, direction):
    depth = 36
    shape = (int(depth / z_step), 40, 60)
    a = (18.0, 20.0, 20.0)
    b = (18.0, 20.0, 36.0) if direction == "side" else (18.0, 20.0, 20.0)
    if direction == "above":
        shape = (int(48 / z_step), 40, 40)
        a, b = (14.0, 20.0, 20.0), (31.0, 20.0, 20.0)
    one = _ellipsoid(shape, a, (9, 9, 9), z_step)
    two = _ellipsoid(shape, b, (9, 9, 9), z_step)
    assert (one & two).any()  # they touch (overlap a little)
    truth = one.astype(np.int32) + 2 * (two & ~one)
    labels = split_nuclei_3d(truth > 0, spacing=(z_step, 1, 1), h=1.0)
    m = match_objects(truth, labels, 0.5)
    assert labels.max() == 2 and int(m.tp[0]) == 2


def test_anisotropy_matters():
    """Two nuclei pressed together in z: without the z-step the waist is not seen."""
    z_step = 4.0
    shape = (12, 30, 30)
    one = _ellipsoid(shape, (14.0, 15, 15), (9, 9, 9), z_step)
    two = _ellipsoid(shape, (31.0, 15, 15), (9, 9, 9), z_step)
    mask = one | two
    assert split_nuclei_3d(mask, spacing=(z_step, 1, 1), h=1.0).max() == 2
    # read as isotropic voxels the pair is a flat disc 12 voxels thick: one object
    assert split_nuclei_3d(mask, spacing=(1, 1, 1), h=1.0).max() == 1


def test_label_image_borders_stay_and_small_objects_go():
    labels = np.zeros((10, 30, 30), np.int32)
    labels[2:8, 5:15, 5:15] = 7
    labels[2:8, 5:15, 15:25] = 9  # touching, already separate
    labels[0, 0, 0] = 3  # one voxel
    out = split_nuclei_3d(labels, h=5.0, min_size=5)
    assert out.max() == 2 and out[0, 0, 0] == 0
    assert len(np.unique(out[2:8, 5:15, 5:15])) == 1


def test_fill_holes_in_3d():
    mask = _ellipsoid((20, 30, 30), (10, 15, 15), (8, 10, 10))
    mask[10, 13:17, 13:17] = False  # a hole in one slice
    out = split_nuclei_3d(mask, h=2.0, fill_holes=True)
    assert out[10, 15, 15] == 1
    assert split_nuclei_3d(mask, h=2.0, fill_holes=False)[10, 15, 15] == 0


def test_probabilities_with_and_without_boundary():
    shape = (20, 40, 60)
    one = _ellipsoid(shape, (10, 20, 20), (8, 9, 9))
    two = _ellipsoid(shape, (10, 20, 36), (8, 9, 9))
    fg = (one | two).astype(np.float32) * 0.9
    boundary = np.zeros_like(fg)
    boundary[:, :, 27:30] = 0.9  # the interface
    from_boundary = labels_from_probabilities_3d(fg, boundary, min_seed_size=4)
    assert from_boundary.max() == 2
    assert labels_from_probabilities_3d(fg, split=False).max() == 1
    assert labels_from_probabilities_3d(fg, h=1.0).max() == 2
    with pytest.raises(NapariUnetError, match="differs"):
        labels_from_probabilities_3d(fg, boundary[:-1])


def test_split_by_axes():
    one = _ellipsoid((10, 30, 30), (5, 15, 15), (4, 8, 8))
    stack = np.stack([one, one])  # T, Z, Y, X
    assert split_by_axes(one, "ZYX", h=1.0).max() == 1
    assert split_by_axes(one, "TYX", h=1.0).max() == np.count_nonzero(one.any(axis=(1, 2)))
    four = split_by_axes(stack, None, h=1.0)  # 4D: TZYX, ids unique over time
    assert four.max() == 2 and set(np.unique(four[1])) == {0, 2}


def test_settings_and_messages():
    assert spacing_from_voxel_size((2.0, 0.5, 0.5)) == (4.0, 1.0, 1.0)
    assert spacing_from_voxel_size(None) == (1.0, 1.0, 1.0)
    with pytest.raises(NapariUnetError, match="same unit"):
        spacing_from_voxel_size((1000.0, 0.2, 0.2))  # nm for z, um for y/x
    with pytest.raises(NapariUnetError, match="three positive"):
        spacing_from_voxel_size((1.0, 0.0, 1.0))
    with pytest.raises(NapariUnetError, match="three"):
        spacing_from_voxel_size("abc")
    assert min_volume(20, (3, 1, 1)) < min_volume(20, (1, 1, 1))
    with pytest.raises(NapariUnetError, match="3-D"):
        split_nuclei_3d(np.zeros((5, 5), bool))
    assert resolve_axes(None, 2) == "YX" and resolve_axes(None, 4) == "TZYX"
    with pytest.raises(NapariUnetError, match="names 3 axes"):
        resolve_axes("ZYX", 2)
    with pytest.raises(NapariUnetError, match="one of"):
        resolve_axes("XYZ", 3)


def test_synthetic_stack_has_what_it_says():
    image, labels, pairs = synthetic_nuclei_stack((12, 96, 96), n=8, seed=3)
    assert image.dtype == np.float32 and labels.shape == image.shape
    assert 1 <= labels.max() <= 8
    for a, b in pairs:  # pairs touch: some voxel of one is next to the other
        from scipy import ndimage as ndi

        assert (ndi.binary_dilation(labels == a) & (labels == b)).any()


@pytest.fixture(scope="module")
def builtin():
    """The shipped ``nuclei`` model (the tests otherwise run with none installed)."""
    from napari_unet.core.builtin import ENV_VAR, resolve_model
    from napari_unet.core.checkpoint import load_checkpoint

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_VAR, raising=False)
        try:
            path = resolve_model("nuclei")
        except NapariUnetError:
            pytest.skip("the package ships no 'nuclei' model")
        return load_checkpoint(path, device="cpu")


@pytest.fixture
def real_models(monkeypatch):
    """The package's own built-in models, by name."""
    from napari_unet.core.builtin import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)


def test_builtin_model_gives_3d_nuclei(real_models, builtin):
    """The shipped model on a synthetic z-stack (1:3): one object per nucleus in 3D."""
    image, truth, pairs = synthetic_nuclei_stack((16, 128, 128), n=12, seed=5)
    config = PredictConfig.for_model(builtin, device="cpu", tile_size=128)
    res = predict(builtin, image, config=config, voxel_size=(1.5, 0.5, 0.5))  # z-step 3 px
    assert res.settings["axes"] == "ZYX" and res.settings["z_step_px"] == 3.0
    assert any("labelled in 3D across 16 z-slices" in n for n in res.notes)
    m = match_objects(truth, res.labels, 0.5)
    assert int(m.tp[0]) >= truth.max() - 1 and int(m.fp[0]) <= 1, (m, truth.max())
    # the same stack read as frames: every nucleus cut into its slices
    frames = predict(builtin, image, config=config, axes="TYX")
    assert frames.labels.max() > 3 * truth.max()


def test_cli_predict_and_split_in_3d(real_models, builtin, tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.core.io import read_calibration

    image, truth, _ = synthetic_nuclei_stack((16, 96, 96), n=8, seed=6)
    folder = tmp_path / "in"
    folder.mkdir()
    # an ImageJ hyperstack with its voxel size: 1.5 um steps, 0.5 um pixels
    tifffile.imwrite(
        folder / "stack.tif",
        (image * 1000).clip(0, 65535).astype(np.uint16),
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"},
    )
    out = tmp_path / "out"
    code = main(["predict", "--images", str(folder), "--out", str(out), "--model", "nuclei"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "labelled in 3D across 16 z-slices (ZYX); voxel size 1.5 x 0.5 x 0.5" in err
    labels = tifffile.imread(out / "stack.tif")
    assert labels.shape == image.shape
    m = match_objects(truth, labels, 0.5)
    assert int(m.tp[0]) >= truth.max() - 1
    # the label file opens in Fiji as a z-stack with the voxel size
    axes, size, unit = read_calibration(out / "stack.tif")
    assert axes == "ZYX" and unit == "um" and np.allclose(size, (1.5, 0.5, 0.5))
    # a time series stays per frame
    out2 = tmp_path / "frames"
    code = main(
        ["predict", "--images", str(folder), "--out", str(out2), "--model", "nuclei"]
        + ["--axes", "TYX"]
    )
    assert code == 0
    assert read_calibration(out2 / "stack.tif")[0] == "TYX"
    assert tifffile.imread(out2 / "stack.tif").max() > 2 * truth.max()
    # split a 3D mask in 3D, with the voxel size given
    masks = tmp_path / "masks"
    masks.mkdir()
    tifffile.imwrite(masks / "m.tif", (truth > 0).astype(np.uint8))
    split_out = tmp_path / "split"
    code = main(
        ["split", "--input", str(masks), "--out", str(split_out), "--h", "1"]
        + ["--voxel-size", "3", "1", "1"]
    )
    err = capsys.readouterr().err
    assert code == 0 and "split in 3D (ZYX), z-step 3 pixels" in err, err
    m = match_objects(truth, tifffile.imread(split_out / "m.tif"), 0.5)
    assert int(m.tp[0]) >= truth.max() - 1
    # axes that do not fit: a clear message
    code = main(
        ["predict", "--images", str(folder), "--out", str(tmp_path / "x"), "--model", "nuclei"]
        + ["--axes", "TZYX"]
    )
    assert code == 2 and "names 4 axes, but the image has 3" in capsys.readouterr().err


def test_partly_painted_3d_labels_train_on_their_painted_slices():
    """3 of 40 slices painted, "labels are partial": 3 training samples, one per slice."""
    from napari_unet.core.data import Normalisation, prepare_samples

    image, truth, _ = synthetic_nuclei_stack((40, 64, 64), n=6, seed=8)
    painted = np.zeros_like(truth)
    for z in (5, 20, 33):
        painted[z] = truth[z] + (truth[z] > 0)  # objects 2.., background 1 (sparse)
        painted[z][truth[z] == 0] = 1
    samples = prepare_samples([image], [painted], normalisation=Normalisation(), sparse=True)
    assert len(samples) == 3


def test_a_3d_correction_annotates_the_planes_it_touched():
    """Fixing a 3D object in one slice annotates that slice, not the object's other slices."""
    from napari_unet.core.corrections import annotation_from_edits

    _, truth, _ = synthetic_nuclei_stack((16, 64, 64), n=4, seed=9)
    before = truth.copy()
    k = int(np.bincount(truth.ravel())[1:].argmax()) + 1  # the largest nucleus
    zs = np.flatnonzero((truth == k).any(axis=(1, 2)))
    assert zs.size > 2
    z = int(zs[zs.size // 2])
    after = before.copy()
    after[z][after[z] == k] = 0  # the user erased it in one slice
    annotation = annotation_from_edits(after, before)
    annotated = np.flatnonzero((annotation > 0).any(axis=(1, 2)))
    assert annotated.tolist() == [z]
