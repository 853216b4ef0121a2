"""A process killed with SIGKILL while writing never leaves a broken file behind.

A real child process rewrites a checkpoint (``save_checkpoint``) and a label
TIFF (``write_labels_tiff(..., overwrite=True)``) in a loop, cycling through
versions 0, 1, 2 of known content. The parent kills it at random moments and
checks that both files still load and equal one complete version. What a kill
can leave behind is the temporary file being written at that moment, named
``.<file name>.<8 hex digits>.tmp`` in the target's folder (see
:func:`napari_unet.core.io.atomic_write`): at most one per target, never under
the real name, and safe to delete.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.core.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

REPO = Path(__file__).resolve().parents[1]
N_VERSIONS = 3

# Shared by parent and child: version k of each file, from k alone.
CONTENT = textwrap.dedent(
    """
    import numpy as np
    import torch

    from napari_unet.core.checkpoint import new_bundle
    from napari_unet.core.model import UNetSpec

    def bundle(k):
        b = new_bundle(UNetSpec(1, 2, 3, 16), {"outputs": ["foreground", "boundary"], "k": k})
        with torch.no_grad():
            for i, p in enumerate(b.model.parameters()):
                p.fill_(k + i / 1000)
        return b

    def labels(k):
        rng = np.random.default_rng(k)
        return rng.integers(0, 70_000, (4, 256, 256)).astype(np.uint32)
    """
)

CHILD = CONTENT + textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from napari_unet.core.checkpoint import save_checkpoint
    from napari_unet.core.io import write_labels_tiff

    folder = Path(sys.argv[1])
    versions = [(bundle(k), labels(k)) for k in range(3)]
    i = 0
    while True:
        b, lab = versions[i % 3]
        save_checkpoint(b, folder / "model.pt")
        write_labels_tiff(folder / "labels.tif", lab, overwrite=True)
        if i == 0:
            (folder / "ready").write_text("")
        i += 1
    """
)


@pytest.fixture(scope="module")
def versions():
    namespace: dict = {}
    exec(CONTENT, namespace)  # the same definitions the child uses
    return [(namespace["bundle"](k), namespace["labels"](k)) for k in range(N_VERSIONS)]


def _start_child(folder: Path) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], env=env)


def _which_version(folder: Path, versions) -> tuple[int, int]:
    bundle = load_checkpoint(folder / "model.pt")
    k_model = bundle.meta["k"]
    expected = versions[k_model][0].model.state_dict()
    got = bundle.model.state_dict()
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    lab = tifffile.imread(folder / "labels.tif")
    matches = [k for k, (_, v) in enumerate(versions) if np.array_equal(lab, v)]
    assert len(matches) == 1, "the TIFF equals no complete version"
    return k_model, matches[0]


def test_sigkill_during_writes_keeps_complete_files(tmp_path, versions):
    rng = random.Random(6)
    seen = set()
    for _ in range(4):
        (tmp_path / "ready").unlink(missing_ok=True)
        child = _start_child(tmp_path)
        try:
            deadline = time.monotonic() + 120
            while not (tmp_path / "ready").exists():
                assert child.poll() is None, "the writer died on its own"
                assert time.monotonic() < deadline, "the writer never finished a first write"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.0))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        seen.add(_which_version(tmp_path, versions))
        leftovers = sorted(p.name for p in tmp_path.glob(".*.tmp"))
        assert sum(n.startswith(".model.pt.") for n in leftovers) <= 1, leftovers
        assert sum(n.startswith(".labels.tif.") for n in leftovers) <= 1, leftovers
        assert set(os.listdir(tmp_path)) - set(leftovers) == {"model.pt", "labels.tif", "ready"}
        for name in leftovers:  # what a user may delete after a crash
            (tmp_path / name).unlink()
    assert seen  # at least one check ran against real versions
