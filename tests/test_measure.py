"""Measurements per object: core values by hand, against regionprops on real masks, CLI."""

import csv
import math

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import read_image, read_labels, write_labels_tiff
from napari_unet.core.measure import measure_labels, table_rows, write_measurements_csv
from tests._gui_helpers import tiny_model_file


def _rows(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _rectangle():
    labels = np.zeros((8, 10), np.uint16)
    labels[1:5, 2:4] = 7  # 4 rows x 2 columns
    image = np.zeros((8, 10), np.float32)
    image[1:5, 2:4] = np.arange(8, dtype=np.float32).reshape(4, 2)
    return labels, image


def test_values_by_hand_on_a_rectangle():
    labels, image = _rectangle()
    t = measure_labels(labels, image)
    assert table_rows(t) == 1
    assert t["label"].tolist() == [7]
    assert t["area"].tolist() == [8]
    assert (t["centroid_y"][0], t["centroid_x"][0]) == (2.5, 2.5)
    box = [t[k][0] for k in ("bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x")]
    assert box == [1, 2, 5, 4]
    assert t["equivalent_diameter"][0] == pytest.approx(math.sqrt(4 * 8 / math.pi))
    # variances of the pixel coordinates: rows (4^2 - 1) / 12, columns (2^2 - 1) / 12
    assert t["eccentricity"][0] == pytest.approx(math.sqrt(1 - 0.25 / 1.25))
    assert t["solidity"][0] == pytest.approx(1.0)
    assert t["perimeter"][0] == pytest.approx(8.0)  # skimage's 4-connected contour length
    assert (t["mean_intensity"][0], t["max_intensity"][0], t["min_intensity"][0]) == (3.5, 7, 0)
    assert not any(k.endswith("um2") for k in t)  # no pixel size: pixels only


def test_calibrated_columns_follow_the_pixel_size_and_unit():
    labels, _ = _rectangle()
    t = measure_labels(labels, scale=(0.5, 0.25), unit="micrometer")
    assert t["area_um2"][0] == pytest.approx(8 * 0.5 * 0.25)
    assert (t["centroid_y_um"][0], t["centroid_x_um"][0]) == (1.25, 0.625)
    assert t["equivalent_diameter_um"][0] == pytest.approx(math.sqrt(4 * 1.0 / math.pi))
    assert "perimeter_um" not in t  # not square pixels: no calibrated perimeter
    square = measure_labels(labels, scale=(0.5, 0.5), unit="um")
    assert square["perimeter_um"][0] == pytest.approx(square["perimeter"][0] * 0.5)
    # "pixel" is no calibration (napari's default unit)
    assert "area_pixel2" not in measure_labels(labels, scale=(2, 2), unit="pixel")


def test_lobed_object_has_solidity_below_one_and_rgb_gives_a_column_per_channel():
    labels = np.zeros((12, 12), np.uint8)
    labels[1:10, 1:4] = 1
    labels[7:10, 1:10] = 1  # an L
    rgb = np.zeros((12, 12, 3), np.uint8)
    rgb[..., 1] = 100
    t = measure_labels(labels, rgb)
    area = 27 + 18
    assert t["area"][0] == area
    assert 0.5 < t["solidity"][0] < 0.9
    assert t["mean_intensity_c1"][0] == 100 and t["mean_intensity_c0"][0] == 0
    first = measure_labels(labels, np.moveaxis(rgb, -1, 0))  # channels first: same
    assert first["mean_intensity_c1"][0] == 100


def test_stacks_in_3d_and_time_series_per_frame():
    labels = np.zeros((4, 10, 10), np.uint16)
    labels[1:3, 2:4, 2:4] = 1  # a 2x2x2 cube
    labels[3, 6:8, 6:9] = 2
    t = measure_labels(labels, scale=(2.0, 0.5, 0.5), unit="um")
    assert t["label"].tolist() == [1, 2]
    assert t["volume"].tolist() == [8, 6]
    assert t["centroid_z"][0] == 1.5 and t["volume_um3"][0] == pytest.approx(8 * 0.5)
    assert t["equivalent_diameter"][0] == pytest.approx((6 * 8 / math.pi) ** (1 / 3))
    assert math.isnan(t["solidity"][1])  # one slice thick: no 3D hull
    series = measure_labels(labels, axes="TYX")
    assert series["frame"].tolist() == [1, 2, 3]  # per frame: the cube is 2 objects
    assert series["label"].tolist() == [1, 1, 2]
    assert series["area"].tolist() == [4, 4, 6]


def test_empty_labels_give_an_empty_table():
    t = measure_labels(np.zeros((5, 5), np.uint8), np.ones((5, 5)))
    assert table_rows(t) == 0 and "area" in t and "mean_intensity" in t


@pytest.mark.parametrize(
    "labels,image,kwargs,needle",
    [
        (np.full((4, 4), 0.5), None, {}, "whole numbers"),
        (np.full((4, 4), -1, np.int16), None, {}, "negative"),
        (np.ones((4, 4), np.uint8), np.ones((5, 4)), {}, "does not fit"),
        (np.ones((4, 4), np.uint8), None, {"axes": "ZYX"}, "axes"),
        (np.ones((4, 4), np.uint8), None, {"scale": (0, 1), "unit": "um"}, "positive"),
        (np.ones((2, 3, 4, 4, 4), np.uint8), None, {}, "cannot be measured"),
    ],
)
def test_bad_input_is_refused_with_a_message(labels, image, kwargs, needle):
    with pytest.raises(NapariUnetError, match=needle):
        measure_labels(labels, image, **kwargs)


def test_csv_has_one_row_per_object_and_an_image_column(tmp_path):
    labels, image = _rectangle()
    one = measure_labels(labels, image)
    calibrated = measure_labels(labels, scale=(1, 1), unit="um")
    path, rows = write_measurements_csv(tmp_path / "t.csv", [("a", one), ("b", calibrated)])
    assert rows == 2
    back = _rows(path)
    assert [r["image"] for r in back] == ["a", "b"]
    assert back[0]["area_um2"] == "" and back[1]["area_um2"] == "8"
    assert back[1]["mean_intensity"] == ""
    with pytest.raises(NapariUnetError, match="exists"):
        write_measurements_csv(path, [("a", one)])
    with pytest.raises(NapariUnetError, match="folder"):
        write_measurements_csv(tmp_path, [("a", one)], overwrite=True)


def test_matches_regionprops_on_real_dsb_masks(dsb_small):
    from skimage.measure import regionprops

    for image_path, mask_path in dsb_small:
        labels = read_labels(mask_path)
        image = read_image(image_path)
        t = measure_labels(labels, image)
        props = regionprops(labels, intensity_image=image)
        assert table_rows(t) == len(props) == len(np.unique(labels)) - 1
        for i, p in enumerate(props):
            assert t["label"][i] == p.label and t["area"][i] == p.area
            assert t["centroid_y"][i] == pytest.approx(p.centroid[0])
            assert t["solidity"][i] == pytest.approx(p.solidity)
            assert t["eccentricity"][i] == pytest.approx(p.eccentricity, abs=1e-9)
            assert t["equivalent_diameter"][i] == pytest.approx(p.equivalent_diameter_area)
            assert t["perimeter"][i] == pytest.approx(p.perimeter)
            mean = p.intensity_mean
            if image.ndim == 3:
                assert t["mean_intensity_c0"][i] == pytest.approx(mean[0])
            else:
                assert t["mean_intensity"][i] == pytest.approx(mean)


# ------------------------------------------------------------------ command line
def test_cli_measure_pairs_labels_with_images_and_reads_the_pixel_size(tmp_path, capsys):
    labels, image = _rectangle()
    (tmp_path / "img").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", image)
    tifffile.imwrite(tmp_path / "img" / "b.tif", image * 2)
    write_labels_tiff(tmp_path / "lab" / "a_labels.tif", labels, pixel_size=0.5, unit="um")
    write_labels_tiff(tmp_path / "lab" / "b_labels.tif", np.zeros_like(labels))
    out = tmp_path / "out" / "table.csv"
    args = ["measure", "--labels", tmp_path / "lab", "--images", tmp_path / "img", "--out", out]
    assert main([str(a) for a in args]) == 0
    err = capsys.readouterr().err
    assert "measured 1 object(s) in 2 image(s)" in err and "hold no objects" in err
    (row,) = _rows(out)
    assert row["image"] == "a" and row["area"] == "8" and row["mean_intensity"] == "3.5"
    assert row["area_um2"] == "2"  # the label TIFF's pixel size
    # an existing table is kept unless --overwrite
    assert main([str(a) for a in args]) == 2
    assert "exists" in capsys.readouterr().err
    assert main([str(a) for a in args] + ["--pixel-size", "2", "--overwrite"]) == 0
    assert _rows(out)[0]["area_um2"] == "32"
    # labels without their image
    (tmp_path / "lab" / "c.tif").write_bytes((tmp_path / "lab" / "a_labels.tif").read_bytes())
    assert main([str(a) for a in args] + ["--overwrite"]) == 2
    assert "have no image" in capsys.readouterr().err
    # not a CSV name; bad pixel size
    bad_out = ["measure", "--labels", str(tmp_path / "lab"), "--out", str(tmp_path / "t.txt")]
    assert main(bad_out) == 2
    assert main(["measure", "--labels", str(tmp_path / "lab"), "--out", str(tmp_path / "t.csv"),
                 "--pixel-size", "-1"]) == 2  # fmt: skip
    assert "positive" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_cli_predict_measure_writes_one_table(tmp_path, capsys):
    from napari_unet.samples import load_samples

    model = tiny_model_file(tmp_path / "m.pt")
    (tmp_path / "img").mkdir()
    for name, image, _ in load_samples()[:2]:
        if image.ndim == 2:
            tifffile.imwrite(tmp_path / "img" / f"{name}.tif", image)
    out = tmp_path / "pred"
    args = ["predict", "--model", model, "--images", tmp_path / "img", "--out", out]
    args += ["--measure", "--threshold", "0.05", "--tile-size", "128"]  # untrained: objects
    assert main([str(a) for a in args]) == 0
    rows = _rows(out / "measurements.csv")
    for f in sorted((tmp_path / "img").glob("*.tif")):
        ids = set(np.unique(tifffile.imread(out / f.name))) - {0}
        assert {int(r["label"]) for r in rows if r["image"] == f.stem} == ids
    assert rows and rows[0]["mean_intensity"] != ""
    # the table is an output like the label images: never overwritten silently
    assert main([str(a) for a in args]) == 2
    assert "exist" in capsys.readouterr().err
    assert main([str(a) for a in ["predict", "--model", model, "--images", tmp_path / "img",
                                  "--out", tmp_path / "p2", "--pixel-size", "1"]]) == 2  # fmt: skip


def test_huge_label_ids_are_measured_without_huge_memory():
    labels = np.zeros((64, 64), np.uint32)
    labels[2:5, 2:5] = 50_000_000
    labels[10:20, 10:15] = 7
    labels[30:40, 30:40] = 4_000_000_000
    t = measure_labels(labels, labels.astype(np.float64))
    assert t["label"].tolist() == [7, 50_000_000, 4_000_000_000]
    assert t["area"].tolist() == [50, 9, 100]
    assert t["mean_intensity"].tolist() == [7, 50_000_000, 4_000_000_000]


def test_cli_calibrates_a_z_stack_only_with_its_z_spacing(tmp_path, capsys):
    labels = np.zeros((5, 20, 20), np.uint16)
    labels[1:4, 5:15, 5:15] = 1  # 300 voxels
    tifffile.imwrite(
        tmp_path / "stack.tif",
        labels,
        imagej=True,
        resolution=(2.0, 2.0),  # 0.5 um pixels
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "\\u00B5m"},  # as Fiji writes it
    )
    out = tmp_path / "t.csv"
    assert main(["measure", "--labels", str(tmp_path / "stack.tif"), "--out", str(out)]) == 0
    (row,) = _rows(out)
    assert row["volume"] == "300"
    assert float(row["volume_um3"]) == pytest.approx(300 * 2.0 * 0.5 * 0.5)
    assert float(row["centroid_z_um"]) == pytest.approx(2.0 * 2.0)
    # a y/x size alone does not calibrate a z-stack: voxels only, and a note says why
    args = ["measure", "--labels", str(tmp_path / "stack.tif"), "--out", str(out), "--overwrite"]
    assert main(args + ["--pixel-size", "0.5", "0.5"]) == 0
    assert "z spacing is not known" in capsys.readouterr().err
    assert "volume_um3" not in _rows(out)[0]
    assert main(args + ["--pixel-size", "3", "0.5", "0.5"]) == 0
    assert float(_rows(out)[0]["volume_um3"]) == pytest.approx(300 * 3 * 0.25)


def test_cli_measure_in_a_predict_output_folder_and_a_shared_folder(tmp_path):
    labels, image = _rectangle()
    folder = tmp_path / "data"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image)
    write_labels_tiff(folder / "a_labels.tif", labels)
    tifffile.imwrite(folder / "a_labels_probabilities.tif", np.zeros((2, 8, 10), np.float32))
    out = tmp_path / "t.csv"
    args = ["measure", "--labels", str(folder), "--images", str(folder), "--out", str(out)]
    assert main(args) == 0  # the image is not a label file, the probabilities are skipped
    assert [r["image"] for r in _rows(out)] == ["a"]
