"""Object size: measuring it, estimating it in raw images, and predicting at the model's size."""

from __future__ import annotations

import numpy as np
import pytest
from _synthetic import sized_nuclei
from scipy import ndimage as ndi

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.size import (
    estimate_diameter,
    mask_diameter,
    median_diameter,
    object_diameters,
    resize_window,
    resize_yx,
    resized_shape,
)

#: An estimate counts as right within this factor of the true median diameter (the
#: benchmark, bench/size_estimate.py, finds at most 1.2 on these synthetic nuclei).
TOLERANCE = 1.3


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = k
    return lab


# ---------------------------------------------------------------- measuring labels


def test_object_diameters_are_equivalent_diameters():
    lab = np.zeros((40, 40), np.int32)
    lab[0:10, 0:10] = 1  # area 100
    lab[20:40, 20:40] = 5  # area 400; ids 2-4 absent
    d = object_diameters(lab)
    np.testing.assert_allclose(d, 2 * np.sqrt(np.array([100, 400]) / np.pi))
    assert median_diameter(lab) == pytest.approx(np.median(d))
    # a binary mask: its 4-connected components
    assert object_diameters(lab > 0).size == 2
    assert np.isnan(median_diameter(np.zeros((5, 5), int)))
    with pytest.raises(NapariUnetError, match=">= 0"):
        object_diameters(-lab)


def test_mask_diameter_sees_single_nuclei_in_clumps():
    # chains of three touching discs of diameter 30: the clumps are much larger
    centres = [(40, 40 + 26 * i) for i in range(3)] + [(120, 40 + 26 * i) for i in range(3)]
    lab = _discs((170, 140), centres, 15)
    est = mask_diameter(lab > 0)
    assert median_diameter(ndi.label(lab > 0)[0]) > 50  # the clumps
    assert est.found and 30 / 1.15 < est.diameter < 30 * 1.15
    assert not mask_diameter(np.zeros((30, 30), bool)).found


# ---------------------------------------------------------------- estimating in images


@pytest.mark.parametrize("diameter", [8, 12, 20, 35, 60, 90, 120])
def test_estimate_on_synthetic_nuclei_of_known_size(diameter):
    """Textured nuclei (some touching) on an uneven, noisy background, 8 to 120 px."""
    img, lab = sized_nuclei(diameter, seed=diameter)
    truth = median_diameter(lab)
    est = estimate_diameter(img)
    assert est.found and est.n_objects >= 5
    assert truth / TOLERANCE < est.diameter < truth * TOLERANCE, (est, truth)


def test_estimate_on_bright_background_and_colour_images():
    img, lab = sized_nuclei(30, seed=4, background="flat")
    truth = median_diameter(lab)
    # brightfield-like: dark nuclei on a bright background
    dark = (img.max() - img) * 200
    est = estimate_diameter(dark.astype(np.float32))
    assert truth / TOLERANCE < est.diameter < truth * TOLERANCE
    # stained slide (H&E-like): purple nuclei on pink tissue and white background,
    # channels last
    w = img / img.max()
    pink = np.array([240, 170, 200], np.float32)
    purple = np.array([90, 60, 150], np.float32)
    rgb = pink * (1 - w[..., None]) + purple * w[..., None]
    est = estimate_diameter(rgb.astype(np.uint8), channel_axis=-1)
    assert truth / TOLERANCE < est.diameter < truth * TOLERANCE


def test_estimate_reads_crops_of_large_images_and_is_quick():
    import time

    img, lab = sized_nuclei(70, seed=5, shape=(1100, 1300), n=60)
    t0 = time.perf_counter()
    est = estimate_diameter(img)
    assert time.perf_counter() - t0 < 5  # ~0.3 s on a quiet CPU core
    truth = median_diameter(lab)
    assert truth / TOLERANCE < est.diameter < truth * TOLERANCE


def test_estimate_without_objects_and_bad_input():
    flat = np.full((64, 64), 7, np.uint16)
    est = estimate_diameter(flat)
    assert not est.found and est.confidence == "none"
    with pytest.raises(NapariUnetError, match="2D"):
        estimate_diameter(np.zeros((3, 8, 64, 64)))
    with pytest.raises(NapariUnetError, match="polarity"):
        estimate_diameter(flat, polarity="invert")


# ---------------------------------------------------------------- resizing


def test_resize_matches_the_trainings_resize_and_windows_match_the_whole():
    from napari_unet.core.data import resize_pair

    rng = np.random.default_rng(0)
    a = rng.random((2, 101, 77)).astype(np.float32)
    for factor in (3.0, 0.33, 0.5, 1.3):
        shape = resized_shape((101, 77), factor)
        whole = resize_yx(a, shape)
        trained, _ = resize_pair(a, np.zeros((101, 77), np.int32), factor)
        np.testing.assert_allclose(whole, trained, atol=1e-5)
        window = resize_window(
            lambda ys, xs: a[:, ys, xs], (101, 77), shape, slice(5, 30), slice(3, 20)
        )
        np.testing.assert_array_equal(window, whole[:, 5:30, 3:20])


# ---------------------------------------------------------------- prediction at the model's size


def _bundle(object_diameter=None):
    import torch

    from napari_unet.core.checkpoint import new_bundle
    from napari_unet.core.model import UNetSpec

    meta = {"outputs": ["foreground", "boundary"]}
    if object_diameter is not None:
        meta["object_diameter"] = object_diameter
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return new_bundle(UNetSpec(depth=2, base_channels=4), meta)


def _config(**kw):
    from napari_unet.core.predict import PredictConfig

    return PredictConfig(device="cpu", tile_size=128, overlap=16, **kw)


def test_objects_three_times_the_models_size_are_shrunk_by_three():
    from napari_unet.core.predict import iter_predict, object_scale, predict, prepare_image

    bundle = _bundle(object_diameter=20.0)
    img, lab = sized_nuclei(60, seed=1, shape=(400, 360), n=30)
    truth = median_diameter(lab)
    res = predict(bundle, img, config=_config())
    s = res.scale
    assert s.estimated and s.model_diameter == 20.0
    assert truth / TOLERANCE < s.diameter < truth * TOLERANCE
    assert s.factor == pytest.approx(20.0 / s.diameter)
    assert 1 / 3 / TOLERANCE < s.factor < 1 / 3 * TOLERANCE
    # the labels and probabilities come back at the image's size
    assert res.labels.shape == img.shape
    assert all(p.shape == img.shape for p in res.probabilities.values())
    assert res.settings["diameter"] == "auto"
    # the network saw the image shrunk: fewer tiles than at its own size
    tiles = [p.total for p in iter_predict(bundle, img, config=_config())][-1]
    own = [p.total for p in iter_predict(bundle, img, config=_config(diameter=None))][-1]
    assert tiles < own
    # a given diameter sets the factor exactly
    prepared = prepare_image(img, 1, None)
    assert object_scale(bundle, prepared, _config(diameter=60.0)).factor == pytest.approx(1 / 3)
    assert "diameter 60 px (given), resized x0.33" in object_scale(
        bundle, prepared, _config(diameter=60.0)
    ).describe(0.5, "µm").replace(" = 30 µm", "")


def test_scale_rules_off_close_clipped_and_models_without_a_size():
    from napari_unet.core.predict import object_scale, prepare_image

    img = prepare_image(sized_nuclei(20, seed=2)[0], 1, None)
    sized = _bundle(object_diameter=20.0)
    assert object_scale(sized, img, _config(diameter=None)).factor == 1
    close = object_scale(sized, img, _config(diameter=21.0))  # within 10 %: as it is
    assert close.factor == 1 and "not resized" in close.describe()
    tiny = object_scale(sized, img, _config(diameter=1.0))  # x20 > the limit of 4
    assert tiny.factor == 4 and "outside" in tiny.note
    huge = object_scale(sized, img, _config(diameter=1000.0))
    assert huge.factor == pytest.approx(1 / 8)
    # a model trained at its images' own scale: never resized, and it says so
    plain = _bundle()
    auto = object_scale(plain, img, _config())
    assert auto.factor == 1 and auto.diameter is None and "records no object size" in auto.note
    given = object_scale(plain, img, _config(diameter=40.0))
    assert given.factor == 1 and "not resized" in given.note


def test_a_stack_is_resized_slice_by_slice_with_one_estimate():
    from napari_unet.core.predict import predict

    img, _ = sized_nuclei(45, seed=3, shape=(200, 240), n=12)
    stack = np.stack([img, img[::-1]])
    res = predict(_bundle(object_diameter=15.0), stack, config=_config())
    assert res.scale.factor < 0.5
    assert res.labels.shape == stack.shape
    assert res.probabilities["foreground"].shape == stack.shape


def test_predict_probabilities_come_back_at_the_images_size():
    from napari_unet.core.predict import predict, predict_probabilities

    img, _ = sized_nuclei(40, seed=6, shape=(150, 170), n=8)
    bundle = _bundle(object_diameter=20.0)
    cfg = _config(diameter=40.0)
    p = predict_probabilities(bundle, img, config=cfg)
    assert p.shape == (2,) + img.shape
    np.testing.assert_allclose(p[0], predict(bundle, img, config=cfg).probabilities["foreground"])


def test_pixel_settings_are_scaled_to_the_images_pixels():
    from napari_unet.core.predict import labels_from_output

    lab = _discs((120, 120), [(30, 30), (80, 80)], 9)  # discs of ~250 px
    prob = np.stack([(lab > 0).astype(np.float32), np.zeros(lab.shape, np.float32)])
    cfg = _config(min_size=40)  # at the model's scale
    assert labels_from_output(prob, ["foreground", "boundary"], cfg).max() == 2
    # the image was shrunk 3x for the network: 40 model pixels are 360 image pixels
    scaled = labels_from_output(prob, ["foreground", "boundary"], cfg, pixel_scale=3.0)
    assert scaled.max() == 0


@pytest.mark.parametrize("bad", ["big", 0, -3.0, float("nan"), True])
def test_predict_config_refuses_a_bad_diameter(bad):
    with pytest.raises(NapariUnetError, match="diameter"):
        _config(diameter=bad).validate()
    _config(diameter=12).validate()
    _config(diameter=None).validate()


def test_dask_prediction_resizes_like_whole_image_prediction(tmp_path):
    import zarr

    from napari_unet.core.dask_predict import predict_to_zarr
    from napari_unet.core.predict import predict

    bundle = _bundle(object_diameter=20.0)
    img, _ = sized_nuclei(45, seed=0, shape=(300, 420), n=20)
    cfg = _config(diameter=30.0)
    cfg.tile_size = 64
    whole = predict(bundle, img, config=cfg)
    summary = predict_to_zarr(
        bundle, img, tmp_path / "o.zarr", config=cfg, block_size=128, scheduler="synchronous"
    )
    assert summary.scale.factor == pytest.approx(20 / 30)
    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    probs = np.asarray(group["probabilities"])
    assert probs.shape == (2,) + img.shape
    np.testing.assert_allclose(probs[0], whole.probabilities["foreground"], atol=1e-5)


# ---------------------------------------------------------------- command line


def test_cli_predict_resizes_and_says_so(tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main
    from napari_unet.core.checkpoint import save_checkpoint

    sized = save_checkpoint(_bundle(object_diameter=20.0), tmp_path / "sized.pt")
    plain = save_checkpoint(_bundle(), tmp_path / "plain.pt")
    img, lab = sized_nuclei(60, seed=1, shape=(300, 280), n=16)
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", (img * 1000).astype(np.uint16))

    def run(model, out, *extra):
        argv = ["predict", "--model", model, "--images", tmp_path / "images", "--out", out]
        argv += ["--device", "cpu", "--tile-size", "128", *extra]
        capsys.readouterr()
        assert main([str(a) for a in argv]) == 0
        assert tifffile.imread(out / "a.tif").shape == img.shape  # the image's own size
        return capsys.readouterr().err.splitlines()[-1]  # the summary line

    line = run(sized, tmp_path / "auto")
    assert "object diameter estimated" in line and "to the model's 20 px" in line
    d = float(line.split("estimated ")[1].split(" px")[0])
    assert median_diameter(lab) / TOLERANCE < d < median_diameter(lab) * TOLERANCE
    line = run(sized, tmp_path / "given", "--diameter", "30")
    assert "object diameter given 30 px, resized x0.67" in line
    assert "object diameter" not in run(sized, tmp_path / "off", "--diameter", "OFF")
    assert "the model records no object size" in run(plain, tmp_path / "plain")


def test_cli_split_settings_follow_the_nucleus_diameter(tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main
    from napari_unet.core.metrics import evaluate

    _, lab = sized_nuclei(80, seed=2, shape=(500, 500), n=20)
    # ragged outlines, as a thresholded prediction has
    noise = ndi.gaussian_filter(np.random.default_rng(0).normal(size=lab.shape), 4)
    sd = np.where(
        lab > 0, ndi.distance_transform_edt(lab > 0), -ndi.distance_transform_edt(lab == 0)
    )
    mask = (sd + 6 * noise / noise.std() > 0).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "m.tif", mask)
    scores = {}
    for name, extra in (("default", []), ("auto", ["--diameter", "auto"])):
        out = tmp_path / name
        assert main(["split", "--input", str(tmp_path / "in"), "--out", str(out), *extra]) == 0
        scores[name] = evaluate([lab], [tifffile.imread(out / "m.tif")])["f1"]
    assert "nuclei about" in capsys.readouterr().err
    assert scores["auto"] > scores["default"] and scores["auto"] > 0.9, scores
