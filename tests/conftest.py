"""Shared fixtures.

Real data lives outside the repository (read-only): ``$NAPARI_UNET_DATA`` or
``<repo>/../shared/data`` (see that folder's README.md). Tests that need it
skip with a message when it is absent; nothing is ever copied into the repo.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _no_builtin_models(tmp_path_factory):
    """Run every test with no built-in model installed, whatever the package ships.

    The widgets and the demo pick a built-in model by default when one is installed;
    the tests stay the same whether or not ``napari_unet/models`` holds one.
    ``NAPARI_UNET_MODELS_DIR`` points at an empty folder (child processes inherit it);
    tests/test_builtin_models.py installs tiny real models in folders of their own, and
    checks the package's real index directly.
    """
    from napari_unet.core.builtin import ENV_VAR

    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(tmp_path_factory.mktemp("no_builtin_models"))
    yield
    if old is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = old


#: napari_unet.core.device.PRECISION_ENV (not imported here: that would import torch)
PRECISION_ENV = "NAPARI_UNET_PRECISION"


@pytest.fixture(scope="session", autouse=True)
def _float32_on_the_cpu():
    """Compute in float32 on the CPU unless a test asks otherwise.

    On a CPU with native bfloat16 (AMX, AVX-512 BF16) precision "auto" would compute in
    bfloat16; the tests' tolerances were set in float32, so ``NAPARI_UNET_PRECISION``
    makes "auto" mean float32 everywhere (child processes inherit it).
    tests/test_precision.py covers bfloat16 and the "auto" choice itself.
    """
    old = os.environ.get(PRECISION_ENV)
    os.environ[PRECISION_ENV] = "fp32"
    yield
    if old is None:
        os.environ.pop(PRECISION_ENV, None)
    else:
        os.environ[PRECISION_ENV] = old


def _shared_data_dir() -> Path:
    env = os.environ.get("NAPARI_UNET_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (DSB2018, ISBI 2012); skips the test if missing."""
    path = _shared_data_dir()
    if not (path / "dsb2018_stage1_train").is_dir():
        pytest.skip(
            f"real data not found at {path}: set NAPARI_UNET_DATA to the folder holding "
            "dsb2018_stage1_train/ (see the project README)"
        )
    return path


@pytest.fixture(scope="session")
def dsb_small(shared_data: Path) -> list[tuple[Path, Path]]:
    """Four small DSB2018 (image, mask) pairs, always the same ones.

    Two greyscale fluorescence images (256 x 256) and two colour images
    (256 x 320, tissue / brightfield), each with 15 to 40 nuclei: the first
    such ids in sorted order, per ``per_image_stats.json``.
    """
    root = shared_data / "dsb2018_stage1_train"
    stats = json.loads((root / "per_image_stats.json").read_text())
    stats.sort(key=lambda s: s["id"])

    def pick(rgb_equal: bool, shape: list[int]) -> list[dict]:
        chosen = [
            s
            for s in stats
            if s["rgb_equal"] is rgb_equal
            and s["shape"][:2] == shape
            and 15 <= s["n_objects"] <= 40
            and s["overlap_px"] == 0
        ]
        if len(chosen) < 2:
            pytest.skip(f"per_image_stats.json in {root} lacks the expected small images")
        return chosen[:2]

    picked = pick(True, [256, 256]) + pick(False, [256, 320])
    pairs = [
        (root / "images" / f"{s['id']}.png", root / "masks" / f"{s['id']}.tif") for s in picked
    ]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        pytest.skip(f"DSB2018 files missing: {missing[:2]}")
    return pairs
