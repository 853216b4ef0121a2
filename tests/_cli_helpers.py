"""What the command-line tests share: tiny inputs, a folder snapshot, and the refusal check.

A refusal on the command line is one line on stderr, exit code 2, no traceback, and
leaves every file as it was: :func:`expect_error` runs ``napari_unet.cli.main``
in-process and checks all of that.
"""

import hashlib
import os

import numpy as np

from napari_unet.cli import main

SHAPE = (32, 32)


def tiny_labels(shape=SHAPE, dtype=np.uint16):
    """Two rectangular objects, 1 and 2, in every plane of `shape`."""
    lab = np.zeros(shape, dtype)
    lab[..., 4:12, 4:12] = 1
    lab[..., 16:26, 14:28] = 2
    return lab


def tiny_image(shape=SHAPE):
    """A uint8 image of :func:`tiny_labels`' objects, bright on a noisy background."""
    rng = np.random.default_rng(0)
    return (rng.integers(0, 50, shape) + 150 * (tiny_labels(shape) > 0)).astype(np.uint8)


def snapshot(root):
    """Every file and folder under root with a hash of its bytes."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            snap[os.path.join(dirpath, d)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as handle:
                snap[p] = hashlib.sha256(handle.read()).hexdigest()
    return snap


def expect_error(argv, root, capsys, *needles):
    """Run the CLI, check the one-line error names the problem and nothing changed."""
    before = snapshot(root)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, captured
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-unet: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)
    assert snapshot(root) == before
    return err
