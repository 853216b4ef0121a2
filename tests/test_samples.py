"""The shipped sample data: loader, files and their provenance."""

from importlib import resources

import numpy as np
import pytest

from napari_unet.samples import SAMPLE_NAMES, load_sample, load_samples


def test_load_samples_returns_every_image_with_matching_instance_labels():
    samples = load_samples()
    assert [name for name, _, _ in samples] == list(SAMPLE_NAMES)
    kinds = set()
    for name, image, labels in samples:
        assert image.dtype == np.uint8
        assert labels.dtype == np.uint16
        assert labels.shape == image.shape[:2]
        assert image.ndim in (2, 3)
        kinds.add("rgb" if image.ndim == 3 else "grey")
        if image.ndim == 3:
            assert image.shape[-1] == 3
            assert not np.array_equal(image[..., 0], image[..., 2]), name  # really colour
        ids = np.unique(labels)
        assert ids[0] == 0 and len(ids) > 20, name  # background plus many nuclei
        assert ids[-1] == len(ids) - 1, name  # consecutive 1..N
        assert image.std() > 1, name  # not blank
    assert kinds == {"grey", "rgb"}


def test_load_sample_by_name_and_unknown_name():
    image, labels = load_sample("fluo_dense")
    assert image.shape == (256, 256) and labels.max() == 57
    with pytest.raises(ValueError, match="fluo_dense"):
        load_sample("nope")


def test_sample_folder_is_small_and_documented():
    folder = resources.files("napari_unet") / "sample_data"
    files = [f for f in folder.iterdir() if f.is_file()]
    total = sum(len(f.read_bytes()) for f in files)
    assert total < 1.5e6
    source = (folder / "SOURCE.md").read_text()
    assert "CC0" in source
    for name in SAMPLE_NAMES:
        assert f"`{name}`" in source
        assert (folder / f"{name}.tif").is_file()
        assert (folder / f"{name}_labels.tif").is_file()


def test_sample_data_contributions_return_image_and_labels_layers():
    from napari_unet import _sample_data

    for name in SAMPLE_NAMES:
        (image, image_kw, image_type), (labels, labels_kw, labels_type) = getattr(
            _sample_data, name
        )()
        assert (image_type, labels_type) == ("image", "labels")
        assert image_kw["name"] == name
        assert labels_kw["name"] == f"{name}_ground_truth"
        assert image_kw["rgb"] == (image.ndim == 3)
        assert labels.shape == image.shape[:2]
