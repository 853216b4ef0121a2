"""Export to a bioimage.io model package (napari_unet.core.bioimageio).

The packages are checked with the bioimage.io tools themselves: bioimageio.spec (format
validation with every file check) and bioimageio.core (its own test: both weight formats
reproduce the test output and run on other sizes and batch sizes). Nothing here touches
the network: sockets are disabled while packages are written and read.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.core.bioimageio import (
    ARCHITECTURE_FILE,
    DSB2018_CITATION,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    WRAPPER_NAME,
    architecture_source,
    bioimageio_problem,
    export_bioimageio,
    scale_range,
)
from napari_unet.core.checkpoint import new_bundle, save_checkpoint
from napari_unet.core.data import Normalisation
from napari_unet.core.errors import CheckpointError, NapariUnetError
from napari_unet.core.model import UNetSpec
from napari_unet.core.predict import PredictConfig, predict_probabilities

EXPECTED_FILES = {
    "rdf.yaml",
    "README.md",
    "cover.png",
    ARCHITECTURE_FILE,
    WEIGHTS_FILE,
    TORCHSCRIPT_FILE,
    "test_input.npy",
    "test_output.npy",
    "sample_input.tif",
    "sample_output.tif",
}


def _meta(polarity: str) -> dict:
    """What training stores in a model file (see napari_unet.core.train)."""
    return {
        "outputs": ["foreground", "boundary"],
        "normalisation": {"mode": "percentile", "low": 1.0, "high": 99.8, "polarity": polarity},
        "train_config": {"batch_size": 8, "lr": 1e-3, "loss": "bce_dice", "polarity": polarity},
        "n_train_images": 12,
        "n_val_images": 2,
        "postprocess": {
            "threshold": 0.6,
            "h": 1.5,
            "f1": 0.81,
            "dsb_score": 0.62,
            "n_images": 2,
            "weights": {"weights": "best"},
        },
        "history": [{"step": 10, "f1": 0.8}],
        "version": "0.1.0",
    }


def _bundle(in_channels: int, polarity: str, seed: int):
    torch.manual_seed(seed)
    bundle = new_bundle(
        UNetSpec(in_channels=in_channels, out_channels=2, depth=2, base_channels=4),
        _meta(polarity),
    )
    # trained-looking BatchNorm statistics, so that every buffer has to travel with the weights
    with torch.no_grad():
        for m in bundle.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    bundle.model.eval()
    return bundle


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def offline():
    """No socket may connect while packages are written, validated and tested (none tries)."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield
    assert attempts == [], f"network access attempted: {attempts[:3]}"


@pytest.fixture(scope="module")
def spec_ok():
    """bioimageio.spec is a dependency and the testing extra pins a pydantic it works with:
    a broken pair is a failure here, never a skip."""
    problem = bioimageio_problem()
    assert problem is None, problem


@pytest.fixture(scope="module")
def grey_package(tmp_path_factory, spec_ok, offline):
    """A 1-channel model (polarity keep), exported from its model file."""
    folder = tmp_path_factory.mktemp("grey")
    bundle = _bundle(1, "keep", seed=0)
    model_file = save_checkpoint(bundle, folder / "nuclei_grey.pt")
    messages: list[str] = []
    out = export_bioimageio(model_file, folder / "grey.zip", progress=messages.append)
    return bundle, out, messages


@pytest.fixture(scope="module")
def rgb_package(tmp_path_factory, spec_ok, offline):
    """A 3-channel model (polarity auto) with the default test image (H&E: inverted)."""
    folder = tmp_path_factory.mktemp("rgb")
    bundle = _bundle(3, "auto", seed=1)
    out = export_bioimageio(
        bundle,
        folder / "rgb.zip",
        name="H and E nuclei (test)",
        authors=["Ada Lovelace", "Alan Turing"],
        cite=[DSB2018_CITATION],
        tags=["nuclei"],
    )
    return bundle, out, []


@pytest.fixture(params=["grey_package", "rgb_package"])
def package(request):
    return request.getfixturevalue(request.param)


def _load(path: Path):
    import warnings

    from bioimageio.spec import load_description

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_description(path, perform_io_checks=True)


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(path) as z:
        x = np.load(io.BytesIO(z.read("test_input.npy")))
        y = np.load(io.BytesIO(z.read("test_output.npy")))
    return x, y


def _napari_probabilities(bundle, image_chw: np.ndarray) -> np.ndarray:
    """napari-unet's own prediction, one tile covering the image (no mirror context)."""
    config = PredictConfig(tile_size=512, overlap=0, device="cpu")
    return predict_probabilities(bundle, image_chw, channel_axis=0, config=config)


# --------------------------------------------------------------------------- the package


def test_package_validates_offline_with_bioimageio_spec(package, offline):
    import bioimageio.spec

    _, path, _ = package
    with zipfile.ZipFile(path) as z:
        assert set(z.namelist()) == EXPECTED_FILES
    descr = _load(path)
    summary = descr.validation_summary
    assert summary.status in ("valid-format", "passed"), summary.format()
    assert summary.errors == []
    assert descr.format_version.startswith("0.5.")
    assert descr.format_version == bioimageio.spec.model.v0_5.ModelDescr.implemented_format_version
    assert descr.weights.pytorch_state_dict is not None
    assert descr.weights.torchscript is not None
    assert str(descr.weights.pytorch_state_dict.architecture.callable) == WRAPPER_NAME
    assert descr.documentation is not None and descr.covers and descr.cite
    assert any(str(c.doi) == "10.1007/978-3-319-24574-4_28" for c in descr.cite)
    [ipt], [out] = descr.inputs, descr.outputs
    assert [str(a.id) for a in ipt.axes] == ["batch", "channel", "y", "x"]
    assert [str(a.id) for a in out.axes] == ["batch", "channel", "y", "x"]
    assert out.axes[1].channel_names == ["foreground", "boundary"]
    scale = [p for p in ipt.preprocessing if p.id == "scale_range"]
    assert len(scale) == 1
    assert scale[0].kwargs.min_percentile == 1.0 and scale[0].kwargs.max_percentile == 99.8
    assert [str(a) for a in scale[0].kwargs.axes] == ["y", "x"]  # per image and channel
    y_axis = ipt.axes[2]
    assert y_axis.size.step == 4 and y_axis.size.min % 4 == 0
    assert y_axis.size.min > 2 * out.axes[2].halo
    assert str(out.axes[2].size.tensor_id) == str(ipt.id)


def test_progress_and_metadata(grey_package, rgb_package):
    _, grey, messages = grey_package
    assert messages[0].startswith("loading") and "validating the package" in messages
    assert messages[-1].startswith(f"wrote {grey}")
    grey_descr, rgb_descr = _load(grey), _load(rgb_package[1])
    assert grey_descr.name == "napari-unet nuclei_grey"  # from the model file's name
    assert [a.name for a in grey_descr.authors] == ["napari-unet user"]
    assert str(grey_descr.license) == "BSD-3-Clause"
    assert rgb_descr.name == "H and E nuclei (test)"
    assert [a.name for a in rgb_descr.authors] == ["Ada Lovelace", "Alan Turing"]
    assert any(str(c.doi) == DSB2018_CITATION["doi"] for c in rgb_descr.cite)
    assert not any(str(c.doi) == DSB2018_CITATION["doi"] for c in grey_descr.cite)
    assert "nuclei" in rgb_descr.tags and "unet" in grey_descr.tags
    kwargs = rgb_descr.weights.pytorch_state_dict.architecture.kwargs
    assert kwargs["invert_bright_background"] is True and kwargs["in_channels"] == 3
    assert (
        grey_descr.weights.pytorch_state_dict.architecture.kwargs["invert_bright_background"]
        is False
    )
    with zipfile.ZipFile(rgb_package[1]) as z:
        readme = z.read("README.md").decode()
    assert "## Validation" in readme and "Bright backgrounds" in readme
    assert "**0.6**" in readme and "**1.5 pixels**" in readme  # the fitted settings


def test_outputs_match_napari_unet(package):
    bundle, path, _ = package
    x, y = _arrays(path)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.ndim == 4 and x.shape[0] == 1 and x.shape[1] == bundle.in_channels
    assert y.shape == (1, 2, *x.shape[2:])
    assert 0.0 <= y.min() and y.max() <= 1.0
    ours = _napari_probabilities(bundle, x[0])
    np.testing.assert_allclose(y[0], ours, atol=1e-4)


def test_both_weight_formats_give_the_test_output(package, tmp_path):
    _, path, _ = package
    descr = _load(path)
    x, y = _arrays(path)
    pre = torch.from_numpy(scale_range(x, 1.0, 99.8))
    with zipfile.ZipFile(path) as z:
        scripted = torch.jit.load(io.BytesIO(z.read(TORCHSCRIPT_FILE)))
        (tmp_path / ARCHITECTURE_FILE).write_bytes(z.read(ARCHITECTURE_FILE))
        state = torch.load(io.BytesIO(z.read(WEIGHTS_FILE)), weights_only=True)
    spec = importlib.util.spec_from_file_location("exported_arch", tmp_path / ARCHITECTURE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["exported_arch"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("exported_arch")
    kwargs = dict(descr.weights.pytorch_state_dict.architecture.kwargs)
    net = getattr(module, WRAPPER_NAME)(**kwargs)
    net.load_state_dict(state, strict=True)
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(scripted(pre).numpy(), y, atol=1e-5)
        np.testing.assert_allclose(net(pre).numpy(), y, atol=1e-5)
        # another size (not a multiple of 2**depth) and a batch of two, both formats alike
        other = torch.rand(2, x.shape[1], 77, 90)
        np.testing.assert_allclose(scripted(other).numpy(), net(other).numpy(), atol=1e-5)


def test_bright_background_is_inverted_like_napari_unet(rgb_package):
    bundle, path, _ = rgb_package
    x, _ = _arrays(path)
    lo, hi = Normalisation(1.0, 99.8, "auto").ranges(x[0])
    assert np.all(lo > hi), "the default H&E test image should be one napari-unet inverts"
    # the same image with a dark background is not inverted, by napari-unet nor the package
    dark = (255.0 - x).astype(np.float32)
    lo, hi = Normalisation(1.0, 99.8, "auto").ranges(dark[0])
    assert np.all(lo < hi)
    with zipfile.ZipFile(path) as z:
        scripted = torch.jit.load(io.BytesIO(z.read(TORCHSCRIPT_FILE)))
    with torch.no_grad():
        inverted = scripted(torch.from_numpy(scale_range(dark, 1.0, 99.8))).numpy()
    np.testing.assert_allclose(inverted[0], _napari_probabilities(bundle, dark[0]), atol=1e-4)


@pytest.mark.slow
def test_bioimageio_core_test_passes_for_both_weight_formats(grey_package, rgb_package, offline):
    import bioimageio.core as bioimageio_core  # in the testing extra

    np_state, torch_state = np.random.get_state(), torch.get_rng_state()
    try:
        for _, path, _ in (grey_package, rgb_package):
            summary = bioimageio_core.test_model(path)
            failed = [d.name for d in summary.details if d.status != "passed"]
            assert summary.status == "passed", failed
            names = [d.name for d in summary.details]
            for wf in ("pytorch_state_dict", "torchscript"):
                assert f"Reproduce test outputs from test inputs ({wf})" in names
                assert any(n.startswith(f"Run {wf} inference") for n in names)
    finally:  # bioimageio.core seeds the global generators
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def test_a_url_citation_is_not_fetched(tmp_path, spec_ok, offline):
    bbbc = {"text": "BBBC038v1 image set", "url": "https://bbbc.broadinstitute.org/BBBC038"}
    out = export_bioimageio(_bundle(1, "keep", 4), tmp_path / "m.zip", cite=[bbbc])
    with zipfile.ZipFile(out) as z:
        assert "https://bbbc.broadinstitute.org/BBBC038" in z.read("rdf.yaml").decode()


def test_validation_failure_writes_nothing(tmp_path, monkeypatch, spec_ok, offline):
    from napari_unet.core import bioimageio as exporter

    class Failed:
        status = "failed"
        warnings: list = []
        errors: list = []

        def format(self):
            return "weights: invalid (simulated)"

    out = tmp_path / "model.zip"
    out.write_bytes(b"the previous package")
    monkeypatch.setattr(exporter, "_validate_package", lambda *a, **k: Failed())
    with pytest.raises(NapariUnetError, match="(?s)failed validation.*simulated"):
        export_bioimageio(_bundle(1, "keep", seed=2), out, overwrite=True)
    assert out.read_bytes() == b"the previous package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]


# --------------------------------------------------------------------------- the architecture


def test_architecture_file_needs_only_torch(tmp_path):
    """The shipped architecture runs in a Python that cannot import napari_unet."""
    source = architecture_source()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert roots - {"torch"} <= set(sys.stdlib_module_names), ast.unparse(node)
    assert "import napari_unet" not in source and "from napari_unet" not in source
    (tmp_path / ARCHITECTURE_FILE).write_text(source)

    bundle = _bundle(3, "auto", seed=3)
    state = {f"unet.{k}": v for k, v in bundle.model.state_dict().items()}
    torch.save(state, tmp_path / "weights.pt")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 70, 90)).astype(np.float32)
    np.save(tmp_path / "x.npy", scale_range(image[None], 1.0, 99.8))
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["napari_unet"] = None  # any import of napari_unet fails
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np, torch
        import {Path(ARCHITECTURE_FILE).stem} as arch
        net = arch.{WRAPPER_NAME}(in_channels=3, out_channels=2, depth=2, base_channels=4,
                                  invert_bright_background=True)
        net.load_state_dict(torch.load({str(tmp_path / "weights.pt")!r}, weights_only=True))
        net.eval()
        with torch.no_grad():
            y = net(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r})))
        np.save({str(tmp_path / "y.npy")!r}, y.numpy())
        """
    )
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=tmp_path, timeout=120)
    got = np.load(tmp_path / "y.npy")[0]
    np.testing.assert_allclose(got, _napari_probabilities(bundle, image), atol=1e-4)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", ["model.pt", "model", "model.zip.tmp"])
def test_refuses_a_name_not_ending_in_zip(tmp_path, name):
    with pytest.raises(NapariUnetError, match=r"\.zip"):
        export_bioimageio(_bundle(1, "keep", 0), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_folder(tmp_path):
    (tmp_path / "out.zip").mkdir()
    with pytest.raises(NapariUnetError, match="folder"):
        export_bioimageio(_bundle(1, "keep", 0), tmp_path / "out.zip")
    assert [p.name for p in tmp_path.iterdir()] == ["out.zip"]


def test_refuses_an_existing_file_without_overwrite(tmp_path):
    out = tmp_path / "model.zip"
    out.write_bytes(b"keep me")
    with pytest.raises(NapariUnetError, match="exists"):
        export_bioimageio(_bundle(1, "keep", 0), out)
    assert out.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"]


@pytest.mark.parametrize("content", ["torch", "text"])
def test_refuses_a_file_that_is_not_a_napari_unet_model(tmp_path, content):
    model = tmp_path / "other.pt"
    if content == "torch":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, model)
    else:
        model.write_text("not a model")
    with pytest.raises(CheckpointError):
        export_bioimageio(model, tmp_path / "out.zip")
    assert [p.name for p in tmp_path.iterdir()] == ["other.pt"]


@pytest.mark.parametrize(
    ("in_channels", "shape", "match"),
    [
        (1, (128, 128, 3), "expects 1 channel"),
        (3, (128, 128), "expects 3 channel"),
        (3, (2, 128, 128), "expects 3 channel"),
        (1, (40, 200), "too small"),
    ],
)
def test_refuses_a_test_image_that_does_not_fit(tmp_path, in_channels, shape, match):
    image = np.zeros(shape, np.uint8)
    with pytest.raises(NapariUnetError, match=match):
        export_bioimageio(_bundle(in_channels, "keep", 0), tmp_path / "m.zip", test_image=image)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_name_bioimage_io_does_not_allow(tmp_path):
    with pytest.raises(NapariUnetError, match="not allowed.*'my-model v1-2'"):
        export_bioimageio(_bundle(1, "keep", 0), tmp_path / "m.zip", name="my/model v1.2")
    assert list(tmp_path.iterdir()) == []


def test_missing_bioimageio_spec_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # import fails as if absent
    with pytest.raises(NapariUnetError, match=r'pip install "bioimageio\.spec'):
        export_bioimageio(_bundle(1, "keep", 0), tmp_path / "m.zip")
    assert list(tmp_path.iterdir()) == []


def test_unusable_bioimageio_spec_is_explained(tmp_path, monkeypatch):
    """bioimageio.spec 0.5.12 with pydantic >= 2.14 cannot serialise: a clear message, no file.

    The failure is made here (the serialiser raises as it does with that pair), so the
    message is checked whatever pydantic is installed.
    """
    from bioimageio.spec.model import v0_5

    def broken(self, *args, **kwargs):
        raise TypeError("'index_key' is expected to be an integer or a string")

    monkeypatch.setattr(v0_5.ArchitectureFromFileDescr, "model_dump", broken)
    assert "pydantic" in bioimageio_problem()
    with pytest.raises(NapariUnetError, match="pydantic"):
        export_bioimageio(_bundle(1, "keep", 0), tmp_path / "m.zip")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ command line and widget
def test_cli_export_bioimageio(tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.core.bioimageio import bioimageio_problem
    from tests._gui_helpers import tiny_model_file

    assert bioimageio_problem() is None, bioimageio_problem()
    model = tiny_model_file(tmp_path / "m.pt")
    out = tmp_path / "pkg.zip"
    assert main(["export-bioimageio", str(model), str(out), "--author", "Ada Lovelace"]) == 0
    assert "valid" in capsys.readouterr().err
    with zipfile.ZipFile(out) as z:
        rdf = z.read("rdf.yaml").decode()
    assert "Ada Lovelace" in rdf and "pytorch_state_dict" in rdf and "torchscript" in rdf
    before = out.read_bytes()
    assert main(["export-bioimageio", str(model), str(out)]) == 2  # kept unless --overwrite
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    image = tmp_path / "img.tif"
    image.write_bytes(b"II*\x00" + bytes(64))  # an image picked as the model: named
    assert main(["export-bioimageio", str(image), str(tmp_path / "x.zip")]) == 2
    assert "TIFF image, not a model file" in capsys.readouterr().err
    assert main(["export-bioimageio", str(model), str(tmp_path / "x.txt")]) == 2
    assert not list(tmp_path.glob("x.*"))
