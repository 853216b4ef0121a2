"""bench/prepare_dsb2018.py turns the Kaggle layout into the one the tests read."""

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]


def test_kaggle_layout_becomes_the_shared_layout(dsb_small, shared_data, tmp_path):
    stats = {s["id"]: s for s in json.loads(
        (shared_data / "dsb2018_stage1_train" / "per_image_stats.json").read_text()
    )}  # fmt: skip
    kaggle = tmp_path / "stage1_train"
    ids = []
    for image_path, mask_path in dsb_small[1:3]:  # one greyscale, one colour image
        image_id = image_path.stem
        ids.append(image_id)
        (kaggle / image_id / "images").mkdir(parents=True)
        (kaggle / image_id / "masks").mkdir()
        (kaggle / image_id / "images" / f"{image_id}.png").write_bytes(image_path.read_bytes())
        labels = tifffile.imread(mask_path)
        for k in range(1, int(labels.max()) + 1):  # one PNG per nucleus, as Kaggle has them
            mask = ((labels == k) * 255).astype(np.uint8)
            iio.imwrite(kaggle / image_id / "masks" / f"m{k:04d}.png", mask)
    out = tmp_path / "data"
    script = ROOT / "bench" / "prepare_dsb2018.py"
    r = subprocess.run([sys.executable, script, kaggle, out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root = out / "dsb2018_stage1_train"
    written = {s["id"]: s for s in json.loads((root / "per_image_stats.json").read_text())}
    assert sorted(written) == sorted(ids)
    for (image_path, mask_path), image_id in zip(dsb_small[1:3], ids, strict=True):
        np.testing.assert_array_equal(
            tifffile.imread(root / "masks" / f"{image_id}.tif"), tifffile.imread(mask_path)
        )
        assert (root / "images" / f"{image_id}.png").read_bytes() == image_path.read_bytes()
        for key in ("shape", "n_objects", "rgb_equal", "overlap_px"):
            assert written[image_id][key] == stats[image_id][key], key
    # a prepared folder is never overwritten
    r = subprocess.run([sys.executable, script, kaggle, out], capture_output=True, text=True)
    assert r.returncode == 2 and "already prepared" in r.stderr
