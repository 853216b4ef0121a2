import os
import pickle

import numpy as np
import pytest
import torch

from napari_unet.core.checkpoint import load_checkpoint, new_bundle, save_checkpoint
from napari_unet.core.errors import CheckpointError
from napari_unet.core.model import UNetSpec


@pytest.fixture
def bundle():
    torch.manual_seed(0)
    b = new_bundle(
        UNetSpec(3, 2, 2, 4),
        {
            "outputs": ["foreground", "boundary"],
            "normalisation": {"mode": "percentile", "low": 1, "high": 99.8},
            "history": [{"step": 1, "score": 0.5}],
        },
    )
    b.model.eval()
    return b


def test_round_trip_keeps_weights_and_meta(bundle, tmp_path):
    p = save_checkpoint(bundle, tmp_path / "m.pt")
    b2 = load_checkpoint(p)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(bundle.model(x), b2.model(x))
    assert b2.meta["history"] == bundle.meta["history"]
    assert b2.meta["version"]
    assert b2.spec == bundle.spec and not b2.model.training


def test_no_overwrite(bundle, tmp_path):
    p = save_checkpoint(bundle, tmp_path / "m.pt")
    with pytest.raises(CheckpointError.__mro__[1], match="exists"):
        save_checkpoint(bundle, p, overwrite=False)


def test_truncated_file(bundle, tmp_path):
    p = save_checkpoint(bundle, tmp_path / "m.pt")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|not a readable"):
        load_checkpoint(p)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a napari-unet model"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")


def test_newer_format_version(bundle, tmp_path):
    p = save_checkpoint(bundle, tmp_path / "m.pt")
    obj = torch.load(p, weights_only=True)
    obj["format_version"] = 99
    torch.save(obj, p)
    with pytest.raises(CheckpointError, match="newer napari-unet"):
        load_checkpoint(p)


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_is_never_executed(bundle, tmp_path):
    marker = tmp_path / "pwned.txt"
    p = tmp_path / "evil.pt"
    obj = {
        "format": "napari-unet",
        "format_version": 1,
        "meta": "{}",
        "state_dict": {},
        "x": _Payload(str(marker)),
    }
    torch.save(obj, p)
    # the same file would run code with an unrestricted unpickler:
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not loaded"):
        load_checkpoint(p)
    assert not marker.exists()
    # and a plain pickle file too
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_payload_control_would_fire(tmp_path):
    # guards the test above: the payload really creates the file when unpickled unsafely
    marker = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_Payload(str(marker))))
    assert marker.exists()
    os.remove(marker)


def test_mismatched_weights(bundle, tmp_path):
    p = save_checkpoint(bundle, tmp_path / "m.pt")
    obj = torch.load(p, weights_only=True)
    obj["state_dict"] = {k: v for k, v in list(obj["state_dict"].items())[:-1]}
    torch.save(obj, p)
    with pytest.raises(CheckpointError, match="damaged or incompatible"):
        load_checkpoint(p)


def test_spaces_and_non_ascii_paths(bundle, tmp_path):
    d = tmp_path / "mes modèles ñ"
    d.mkdir()
    p = save_checkpoint(bundle, d / "noyau 1.pt")
    assert load_checkpoint(p).spec == bundle.spec
    # no temporary files are left behind
    assert [f.name for f in d.iterdir()] == ["noyau 1.pt"]
    assert np.isfinite(sum(float(v.sum()) for v in load_checkpoint(p).model.state_dict().values()))


@pytest.mark.parametrize(
    "content,kind",
    [(b"II*\x00" + bytes(100), "TIFF image"), (b"\x89PNG\r\n\x1a\n" + bytes(50), "PNG image"),
     (b"", "empty file")],
)  # fmt: skip
def test_images_picked_as_models_are_named(tmp_path, content, kind):
    path = tmp_path / "picked.tif"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"is an? {kind}, not a model file"):
        load_checkpoint(path)
