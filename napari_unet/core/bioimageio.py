"""Export a napari-unet model as a bioimage.io model package (Fiji/deepImageJ, ilastik, ...).

:func:`export_bioimageio` writes one zip in the bioimage.io model format 0.5 (as
``bioimageio.spec`` builds and validates it), holding:

``rdf.yaml``
    The model description: inputs, outputs, preprocessing, weights, authors,
    licence, citations, tags.
``README.md``
    Generated documentation: what goes in and comes out, the normalisation, and
    the watershed post-processing napari-unet applies (with this model's fitted
    threshold and split depth), which the package itself does not run.
``napari_unet_architecture.py``
    The UNet, generated from :mod:`napari_unet.core.model` (the one source of the
    architecture) plus a small wrapper: needs only PyTorch, not napari-unet.
``weights.pt`` / ``weights_torchscript.pt``
    The same weights as a plain state dict and as TorchScript (for Java tools).
``test_input.npy`` / ``test_output.npy``
    An example image and what the package computes for it (``sample_input.tif`` /
    ``sample_output.tif``: the same as images to look at).
``cover.png``
    The example image next to its foreground probability map.

What napari-unet does to an image before and after the network is expressed in
the package as follows: the per-image, per-channel percentile normalisation is
the spec's own ``scale_range`` preprocessing; the bright-background inversion
(``polarity="auto"``), which the spec cannot express, is done inside the exported
model, as is the sigmoid, so the outputs are probability maps in [0, 1]. On an image
predicted in one piece they equal napari-unet's to within floating-point rounding (the
tests check 1e-4); tools that tile or pad differently, and napari-unet's subsampled
percentiles on very large images, make them differ a little (up to 0.02 was seen at
tile borders with bioimageio.core). A retrain of a built-in model is exported as it is:
napari-unet predicts the images that are more like the built-in model's data with the
built-in model's normalisation statistics and the weights pulled half-way back
(:mod:`napari_unet.core.norm_sets`), the package does not.

``bioimageio.spec`` (a dependency of napari-unet; see :func:`bioimageio_problem` for
the pydantic versions that work with it) is imported only when exporting; torch too.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import atomic_write, check_writable_folder

if TYPE_CHECKING:
    from napari_unet.core.checkpoint import ModelBundle

__all__ = [
    "ARCHITECTURE_FILE",
    "DSB2018_CITATION",
    "UNET_CITATION",
    "WRAPPER_NAME",
    "architecture_source",
    "bioimageio_problem",
    "export_bioimageio",
    "scale_range",
]

INPUT_ID = "image"
OUTPUT_ID = "probabilities"
ARCHITECTURE_FILE = "napari_unet_architecture.py"
"""Name of the architecture source file inside the package."""
WRAPPER_NAME = "NapariUNetProbabilities"
"""The callable (a ``torch.nn.Module`` class) the package's architecture file provides."""
WEIGHTS_FILE = "weights.pt"
TORCHSCRIPT_FILE = "weights_torchscript.pt"
TEST_INPUT_FILE = "test_input.npy"
TEST_OUTPUT_FILE = "test_output.npy"
SAMPLE_INPUT_FILE = "sample_input.tif"
SAMPLE_OUTPUT_FILE = "sample_output.tif"
COVER_FILE = "cover.png"
DOC_FILE = "README.md"
DEFAULT_AUTHOR = "napari-unet user"
DEFAULT_LICENSE = "BSD-3-Clause"
MAX_TEST_SIZE = 256
"""Largest edge of the test image stored in the package (pixels); larger images are cropped."""
SCALE_RANGE_EPS = 1e-6
"""``eps`` of the ``scale_range`` preprocessing: ``(x - low) / (high - low + eps)``."""

UNET_CITATION: dict[str, str] = {
    "text": (
        "Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical "
        "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241."
    ),
    "doi": "10.1007/978-3-319-24574-4_28",
}
"""The UNet paper; every exported package cites it."""

DSB2018_CITATION: dict[str, str] = {
    "text": (
        "Caicedo JC et al. Nucleus segmentation across imaging experiments: the 2018 Data "
        "Science Bowl. Nature Methods 16, 1247-1253 (2019). Data: BBBC038v1, Broad Bioimage "
        "Benchmark Collection."
    ),
    "doi": "10.1038/s41592-019-0612-7",
}
"""Citation for the DSB2018 / BBBC038v1 images (the sample data napari-unet ships).

Model files do not record which images they were trained on, so this is never added
automatically: pass it in ``cite`` when the model was trained on these images."""

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
# What the generated architecture file may import: the standard library and torch.
_ALLOWED_IMPORTS = frozenset(sys.stdlib_module_names) | {"__future__", "torch"}
_ERROR_STANDIN = '''
class NapariUnetError(ValueError):
    """Invalid architecture settings or input shape.

    napari-unet's own error type (``napari_unet.core.errors``), defined here so that this
    file needs only PyTorch.
    """

'''

_HEADER = '''"""The UNet of a napari-unet model, for bioimage.io tools (ilastik, bioimageio.core).

Generated by napari-unet {version} from ``napari_unet/core/model.py``, the code napari-unet
trains and predicts with. The entry point named in the package's ``rdf.yaml`` is the
class at the end of this file, ``{wrapper}``. Needs only PyTorch. Do not edit: the
package's weights were exported for exactly this code.
"""
'''

# The entry point appended to the architecture file. The same class (imported from the
# generated file) computes the test output and is traced to TorchScript, so both weight
# formats and the test tensors come from this code.
_WRAPPER_SOURCE = '''

# ------------------------------------------------------------------------------------------
# bioimage.io entry point (added by napari-unet's exporter)

# its own imports, whatever names the code above uses
import torch as _torch  # noqa: E402
import torch.nn.functional as _functional  # noqa: E402
from torch import nn as _nn  # noqa: E402


class {wrapper}(_nn.Module):
    """A napari-unet UNet that returns probability maps, as the package describes.

    The input must already be normalised per image and channel (the package's
    ``scale_range`` preprocessing). With ``invert_bright_background`` an image with a
    channel whose median is above 0.5 (a bright background: brightfield, H&E) is
    inverted, ``1 - x`` on all channels together, as napari-unet does. The image is
    mirror-padded at the bottom and right to a multiple of ``2**depth`` and the output is
    cropped back, so any size of at least ``2**depth`` works. Returns ``sigmoid(logits)``.

    Parameters
    ----------
    in_channels, out_channels, depth, base_channels, batch_norm, upsampling
        The architecture, see ``UNetSpec``.
    invert_bright_background : bool
        napari-unet's ``polarity="auto"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int,
        base_channels: int,
        batch_norm: bool = True,
        upsampling: str = "bilinear",
        invert_bright_background: bool = False,
    ) -> None:
        super().__init__()
        spec = UNetSpec(
            in_channels=in_channels,
            out_channels=out_channels,
            depth=depth,
            base_channels=base_channels,
            batch_norm=batch_norm,
            upsampling=upsampling,
        )
        self.unet = UNet(spec)
        self.multiple = spec.multiple
        self.invert_bright_background = bool(invert_bright_background)

    def forward(self, x: _torch.Tensor) -> _torch.Tensor:
        """Return probabilities ``(N, out_channels, H, W)`` for ``x`` of ``(N, C, H, W)``."""
        if self.invert_bright_background:
            flat = x.flatten(2)
            n = flat.shape[-1]
            # the median as numpy computes it (mean of the two middle values)
            lower = flat.kthvalue((n + 1) // 2, dim=-1).values
            upper = flat.kthvalue(n // 2 + 1, dim=-1).values
            bright = (0.5 * (lower + upper)).amax(dim=1) > 0.5
            x = _torch.where(bright[:, None, None, None], 1.0 - x, x)
        h, w = x.shape[-2], x.shape[-1]
        pad_h = (self.multiple - h % self.multiple) % self.multiple
        pad_w = (self.multiple - w % self.multiple) % self.multiple
        x = _functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return _torch.sigmoid(self.unet(x))[..., :h, :w]
'''


# --------------------------------------------------------------------------- architecture


def architecture_source() -> str:
    """Return the text of the self-contained architecture file shipped in a package.

    It is :mod:`napari_unet.core.model` as it stands (the one definition of the UNet),
    with its import of ``NapariUnetError`` replaced by an equivalent stand-in class,
    followed by the wrapper class :data:`WRAPPER_NAME`. It imports nothing but the
    standard library and torch.

    Returns
    -------
    str
        Python source.

    Raises
    ------
    RuntimeError
        If ``model.py`` has come to import something other than the standard library,
        torch and ``NapariUnetError``: this function must then learn to replace it.
    """
    from napari_unet import __version__
    from napari_unet.core import model as model_module

    text = inspect.getsource(model_module)
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    body = tree.body
    start = 0  # index of the first line kept (0-based)
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        start = body[0].end_lineno or 0
    top_level = {id(node) for node in body}
    replacements: dict[int, tuple[int, str]] = {}  # first line -> (end line, new text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            root = module.split(".")[0]
            if root in _ALLOWED_IMPORTS:
                continue
            is_error_import = (
                isinstance(node, ast.ImportFrom)
                and module == "napari_unet.core.errors"
                and [(a.name, a.asname) for a in node.names] == [("NapariUnetError", None)]
                and id(node) in top_level
            )
            if not is_error_import:
                raise RuntimeError(
                    f"napari_unet/core/model.py imports {module!r} (line {node.lineno}); the "
                    "bioimage.io architecture file must need only torch. Update "
                    "napari_unet.core.bioimageio.architecture_source."
                )
            replacements[node.lineno - 1] = (node.end_lineno or node.lineno, _ERROR_STANDIN)
    out = [_HEADER.format(version=__version__, wrapper=WRAPPER_NAME)]
    i = start
    while i < len(lines):
        if i in replacements:
            end, new = replacements[i]
            out.append(new)
            i = end
        else:
            out.append(lines[i])
            i += 1
    out.append(_WRAPPER_SOURCE.format(wrapper=WRAPPER_NAME))
    return "".join(out)


def _import_architecture(path: Path):
    """Import the generated architecture file as a fresh module (never napari_unet's)."""
    name = f"_napari_unet_bioimageio_arch_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py path always loads
        raise RuntimeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


# --------------------------------------------------------------------------- preprocessing


def scale_range(x: np.ndarray, low: float, high: float, eps: float = SCALE_RANGE_EPS) -> np.ndarray:
    """Apply bioimage.io's ``scale_range`` preprocessing per sample and channel.

    As ``bioimageio.core`` does for ``axes: [y, x]``: linear-interpolated percentiles of
    each ``(sample, channel)`` plane, then ``(x - p_low) / (p_high - p_low + eps)``.

    Parameters
    ----------
    x : (N, C, M, P) ndarray
        Raw image batch.
    low, high : float
        Percentiles (0 to 100).
    eps : float
        Added to the range.

    Returns
    -------
    (N, C, M, P) ndarray of float32

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> y = scale_range(x, 0, 100)
    >>> float(y.min()), round(float(y.max()), 4)
    (0.0, 1.0)
    """
    x = np.asarray(x, dtype=np.float32)
    lo, hi = np.percentile(x, [low, high], axis=(-2, -1), keepdims=True)
    lo, hi = lo.astype(np.float32), hi.astype(np.float32)
    return ((x - lo) / (hi - lo + np.float32(eps))).astype(np.float32)


# --------------------------------------------------------------------------- checks


def _check_out(out: str | Path, overwrite: bool) -> Path:
    path = Path(out).expanduser()
    if path.is_dir():
        raise NapariUnetError(
            f"{path} is a folder; give the file name of the package to write, e.g. "
            f"{path / 'model.zip'}."
        )
    if path.suffix.lower() != ".zip":
        raise NapariUnetError(
            f"A bioimage.io model package is a .zip file; {path.name!r} does not end in .zip "
            f"(e.g. {path.with_suffix('.zip').name!r})."
        )
    if path.exists() and not overwrite:
        raise NapariUnetError(f"{path} exists; choose another name or allow overwriting.")
    check_writable_folder(path.parent)
    return path


_INSTALL_HINT = 'pip install "bioimageio.spec>=0.5.12" (a dependency of napari-unet)'


def bioimageio_problem() -> str | None:
    """Say why bioimage.io packages cannot be written here, or return None when they can.

    Checks that ``bioimageio.spec`` imports and can serialise a model description, which
    bioimageio.spec 0.5.12 (the version bioimageio.core 0.11 requires) cannot do with
    pydantic 2.14 or newer.

    Returns
    -------
    str or None
        A message saying what to install, or None.
    """
    try:
        import bioimageio.spec
        from bioimageio.spec import ValidationContext
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        return (
            "Exporting for bioimage.io (Fiji/deepImageJ, ilastik) needs the bioimageio.spec "
            f"package: {_INSTALL_HINT}, then try again. ({exc})"
        )
    try:
        with ValidationContext(perform_io_checks=False):
            v0_5.ArchitectureFromFileDescr(
                source="https://example.com/architecture.py", callable="Net"
            ).model_dump(mode="json")
    except Exception as exc:  # noqa: BLE001 - any failure here means it cannot write packages
        import pydantic

        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"bioimageio.spec {bioimageio.spec.__version__} cannot write model descriptions "
            f"with the installed pydantic {pydantic.VERSION} ({first[:160]}). Install a "
            'working pair: pip install "pydantic<2.14" (bioimageio.spec 0.5.12, which '
            'bioimageio.core 0.11 requires), or pip install "bioimageio.spec>=0.5.14.3" '
            "(without bioimageio.core)."
        )
    return None


def _spec_package_version() -> str:
    import bioimageio.spec

    return str(bioimageio.spec.__version__)


def _import_spec():
    problem = bioimageio_problem()
    if problem is not None:
        raise NapariUnetError(problem)
    from bioimageio.spec.model import v0_5

    return v0_5


def default_model_name(text: str) -> str:
    """Return a name bioimage.io accepts, made from `text` (e.g. a model file's stem).

    Examples
    --------
    >>> default_model_name("nuc.v1"), default_model_name("Zellkerne_é")
    ('nuc-v1', 'Zellkerne_')
    """
    return _check_name(None, text)


def _check_name(name: str | None, default: str) -> str:
    if name is None:
        cleaned = "".join(c if c in _NAME_CHARS else "-" for c in default).strip(" -")
        cleaned = cleaned[:64] or "napari-unet model"
        return cleaned if len(cleaned) >= 5 else f"napari-unet {cleaned}"
    name = str(name).strip()
    bad = sorted({c for c in name if c not in _NAME_CHARS})
    if bad or not 5 <= len(name) <= 128:
        suggestion = "".join(c if c in _NAME_CHARS else "-" for c in name)[:128]
        raise NapariUnetError(
            f"Model name {name!r} is not allowed by bioimage.io: use 5 to 128 characters among "
            "letters, digits, spaces and _ + - ( )"
            + (f"; {''.join(bad)!r} are not allowed" if bad else "")
            + (f", e.g. {suggestion!r}." if len(suggestion) >= 5 else ".")
        )
    return name


def _check_normalisation(meta: dict):
    from napari_unet.core.data import Normalisation

    raw = meta.get("normalisation", {}) or {}
    mode = raw.get("mode", "percentile")
    if mode != "percentile":
        raise NapariUnetError(
            f"This model normalises images with mode {mode!r}; only napari-unet's percentile "
            "normalisation can be exported for bioimage.io."
        )
    norm = Normalisation.from_dict(raw)
    if not (0.0 <= norm.low < 100.0 and 1.0 < norm.high <= 100.0 and norm.low < norm.high):
        raise NapariUnetError(
            f"This model normalises with percentiles {norm.low:g} and {norm.high:g}; bioimage.io "
            "needs 0 <= low < high, low < 100 and 1 < high <= 100."
        )
    return norm


def _sizes(multiple: int, halo: int) -> tuple[int, int]:
    """Smallest valid input edge (a multiple of ``multiple`` above ``2 * halo``), and step."""
    minimum = multiple * (-(-(2 * halo + 1) // multiple))
    return minimum, multiple


def _valid_edge(n: int, minimum: int, step: int) -> int:
    """Largest ``minimum + k * step`` that is at most ``min(n, MAX_TEST_SIZE)``."""
    top = min(n, max(MAX_TEST_SIZE, minimum))
    return minimum + (top - minimum) // step * step


def _default_test_image(in_channels: int) -> tuple[np.ndarray, str]:
    """Return a shipped sample image with the model's channel count, ``(C, Y, X)``."""
    from napari_unet.samples import load_sample

    if in_channels == 3:
        image, _ = load_sample("he_tissue")
        return np.moveaxis(image, -1, 0), "napari-unet sample image he_tissue (DSB2018, CC0)"
    image, _ = load_sample("fluo_dense")
    what = "napari-unet sample image fluo_dense (DSB2018, CC0)"
    if in_channels > 1:
        what += f", repeated on all {in_channels} channels"
    return np.repeat(image[None], in_channels, axis=0), what


def _prepare_test_image(
    test_image: np.ndarray | None, in_channels: int, minimum: int, step: int
) -> tuple[np.ndarray, str]:
    """Return the test image ``(C, Y, X)`` (its own dtype), centre-cropped to a valid size."""
    if test_image is None:
        image, what = _default_test_image(in_channels)
    else:
        raw = np.asarray(test_image)
        what = "image given at export"
        if raw.dtype.kind not in "buif":
            raise NapariUnetError(
                f"The test image has dtype {raw.dtype}; give a numeric image (e.g. uint8, "
                "uint16 or float32)."
            )
        if raw.ndim == 2:
            image = raw[None]
        elif raw.ndim == 3 and raw.shape[-1] == in_channels and raw.shape[0] != in_channels:
            image = np.moveaxis(raw, -1, 0)  # napari / RGB layout (Y, X, C)
        elif raw.ndim == 3 and raw.shape[0] == in_channels:
            image = raw
        else:
            image = None
        if image is None or image.shape[0] != in_channels:
            raise NapariUnetError(
                f"The model expects {in_channels} channel(s) but the test image has shape "
                f"{raw.shape}: give (Y, X) for a 1-channel model, or (Y, X, C) or (C, Y, X) "
                f"with C = {in_channels}, like the images the model was trained on."
            )
        if not np.all(np.isfinite(image)):
            raise NapariUnetError(
                "The test image contains NaN or infinite values; replace them (e.g. with 0)."
            )
    _, h, w = image.shape
    if h < minimum or w < minimum:
        raise NapariUnetError(
            f"The test image ({h} x {w} pixels) is too small: the package needs at least "
            f"{minimum} x {minimum} pixels for this model."
        )
    th, tw = _valid_edge(h, minimum, step), _valid_edge(w, minimum, step)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    crop = np.ascontiguousarray(image[:, y0 : y0 + th, x0 : x0 + tw])
    if crop.dtype == bool:
        crop = crop.astype(np.uint8)
    if (th, tw) != (h, w):
        what += f", centre {th} x {tw} crop"
    return crop, what


# --------------------------------------------------------------------------- cover


def _display_channel(plane: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(plane, [1.0, 99.8])
    return np.clip((plane - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def _cover(test_input: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(H, 2 W, 3)``: the input (left) next to the foreground probability (right)."""
    channels = [_display_channel(c) for c in test_input]
    if len(channels) == 1:
        left = np.stack([channels[0]] * 3, axis=-1)
    elif len(channels) == 2:
        left = np.stack([channels[0], channels[1], np.zeros_like(channels[0])], axis=-1)
    else:
        left = np.stack(channels[:3], axis=-1)
    fg = np.clip(probabilities[0], 0.0, 1.0)
    right = np.stack([fg, fg, fg], axis=-1)
    return (np.concatenate([left, right], axis=1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- documentation


def _documentation(
    *,
    name: str,
    description: str,
    bundle: ModelBundle,
    norm,
    minimum: int,
    step: int,
    halo: int,
    test_what: str,
    license_id: str,
    spec_version: str,
    spec_package_version: str,
) -> str:
    from napari_unet import __version__
    from napari_unet.core.predict import PredictConfig
    from napari_unet.core.tune import tuned_settings

    spec = bundle.spec
    outputs = bundle.outputs
    meta = bundle.meta
    settings = PredictConfig.for_model(bundle)  # what napari-unet predicts with
    fitted = tuned_settings(meta)  # the part of it fitted at the end of training
    tuned = meta.get("postprocess") if isinstance(meta.get("postprocess"), dict) else {}
    out_rows = {
        "foreground": "probability that the pixel belongs to an object (nucleus or cell)",
        "boundary": "probability that the pixel lies on an object's outline or between "
        "touching objects",
    }
    lines = [
        f"# {name}",
        "",
        description,
        "",
        f"A 2D UNet (Ronneberger et al. 2015) trained with napari-unet "
        f"{meta.get('version', '(version unknown)')}, exported by "
        f"napari-unet {__version__} as a bioimage.io model (format {spec_version}).",
        "",
        "## Network",
        "",
        "| setting | value |",
        "|---|---|",
        f"| input channels | {spec.in_channels} |",
        f"| outputs | {', '.join(outputs)} |",
        f"| depth (down-sampling steps) | {spec.depth} |",
        f"| feature maps at the first level | {spec.base_channels} |",
        f"| BatchNorm | {'yes' if spec.batch_norm else 'no'} |",
        f"| up-sampling | {spec.upsampling} |",
    ]
    for key, label in (
        ("n_train_images", "training images"),
        ("n_val_images", "held-back validation images"),
        ("steps", "training steps"),
    ):
        if isinstance(meta.get(key), int):
            lines.append(f"| {label} | {meta[key]} |")
    lines += [
        "",
        "## Input",
        "",
        f"One tensor `{INPUT_ID}` with axes batch, channel ({spec.in_channels}), y, x, any "
        "number type (it is converted to float32). A 2D image of any size works: the model "
        f"pads it internally to a multiple of {spec.multiple}; the description declares sizes "
        f"{minimum} + n x {step} pixels (n = 0, 1, 2, ...) so that tools that cut the image "
        "into tiles pick tiles the network handles without padding.",
        "",
        "**Preprocessing** (`scale_range`, applied by the tool that runs the model): each "
        "channel of each image is scaled so that its "
        f"percentile {norm.low:g} maps to 0 and its percentile {norm.high:g} to 1, "
        f"`(x - p{norm.low:g}) / (p{norm.high:g} - p{norm.low:g} + 1e-6)`, without clipping. "
        "This is napari-unet's normalisation. napari-unet estimates the percentiles of an "
        "image larger than 4 megapixels on a regular subsample; bioimage.io tools use every "
        "pixel, which changes the values negligibly. A tool that pads the image by the "
        "output halo (below) before this step computes the percentiles on the padded image, "
        "which can shift the probabilities by a few hundredths.",
        "",
    ]
    if norm.polarity == "auto":
        lines += [
            "**Bright backgrounds** (napari-unet's `polarity: auto`): after the scaling, the "
            "model computes the median of each channel; if one is above 0.5 (a bright "
            "background, as in brightfield or H&E images) the image is inverted, `1 - x` on all "
            "channels together, so that objects are bright on a dark background, as the "
            "network was trained. The bioimage.io format has no preprocessing step for this, "
            "so it is done inside the exported model (both weight formats). The decision is "
            "taken on what the model is given: the whole image, or each tile when a tool "
            "predicts tile by tile; use large tiles so that each tile shows enough background.",
            "",
        ]
    else:
        lines += [
            "Images are used as they are (napari-unet's `polarity: keep`): objects are "
            "expected as the training images showed them.",
            "",
        ]
    lines += [
        "## Output",
        "",
        f"One tensor `{OUTPUT_ID}` with axes batch, channel ({len(outputs)}), y, x, the same "
        "size as the input, float32 in [0, 1] (the sigmoid of the network's logits):",
        "",
        "| channel | meaning |",
        "|---|---|",
    ]
    for i, out_name in enumerate(outputs):
        lines.append(f"| {i}: {out_name} | {out_rows.get(out_name, out_name)} |")
    lines += [
        "",
        f"A halo of {halo} pixels is declared on the output: the outermost {halo} pixels of a "
        "tile see less of the image, so tools that predict tile by tile should overlap the "
        "tiles and discard that border, and pad a whole image by it (mirroring, as declared "
        "on the input) before predicting. napari-unet does the same.",
        "",
        "## From probabilities to objects",
        "",
        "The package stops at probability maps. napari-unet turns them into instance labels "
        "(one number per nucleus) with these steps, which bioimage.io tools do not run:",
        "",
        f"1. foreground = `foreground` probability > **{settings.threshold:g}**"
        + (
            " (fitted on the held-back images at the end of training)"
            if "threshold" in fitted
            else ""
        )
        + ";",
    ]
    if settings.fill_holes:
        lines.append("2. holes inside objects are filled;")
    else:
        lines.append("2. holes are left as they are;")
    if settings.split and settings.split_method == "distance":
        if settings.h is not None:
            split = (
                "touching objects are split by a watershed of the distance transform of the "
                "foreground, from markers at its h-maxima with h = "
                f"**{settings.h:g} pixel{'' if settings.h == 1 else 's'}**"
                + (" (fitted)" if "h" in fitted else "")
                + " (two objects are cut apart where the waist between them is at least that "
                "much narrower than the objects)"
            )
        else:
            split = (
                "touching objects are split by a watershed of the distance transform, from "
                f"maxima at least {settings.min_distance} pixels apart"
            )
    elif settings.split:
        split = (
            "touching objects are split by a watershed grown from seeds where the boundary "
            f"probability is below {settings.boundary_threshold:g}"
        )
    else:
        split = "touching objects are not split"
    lines += [
        f"3. {split};",
        f"4. objects smaller than {settings.min_size} pixels are removed.",
        "",
        "In Fiji: threshold the `foreground` channel at the value above (Image > Adjust > "
        "Threshold), fill holes (Process > Binary > Fill Holes), split touching objects, e.g. "
        "with MorphoLibJ's Distance Transform Watershed, and remove small particles (Analyze > "
        "Analyze Particles with a minimum size). The result approximates napari-unet's "
        "labels; for exactly napari-unet's result, predict in napari-unet "
        "(`napari-unet predict`).",
        "",
        "## Validation",
        "",
        "The package's test input (" + test_what + ") and test output let any bioimage.io tool "
        "check that it reproduces this model's output. napari-unet validated the package "
        f"with bioimageio.spec {spec_package_version} when writing it; its test suite also "
        "runs bioimageio.core's test on exported packages (both weight formats) and checks "
        "that they reproduce napari-unet's own probabilities.",
        "",
    ]
    if "threshold" in fitted:
        scores = []
        for key, label in (
            ("f1", "object F1 at IoU 0.5"),
            ("dsb_score", "DSB2018 score (mean over IoU 0.5 to 0.95)"),
        ):
            if isinstance(tuned.get(key), (int, float)):
                scores.append(f"{label} {tuned[key]:.3f}")
        n_images = tuned.get("n_images")
        lines += [
            "At the end of training napari-unet scored the model's labels on "
            + (f"{n_images} " if isinstance(n_images, int) else "")
            + "held-back validation image(s)"
            + (": " + ", ".join(scores) if scores else "")
            + ". These images come from the same set as the training images: check the model "
            "on annotated images of your own before relying on it.",
            "",
        ]
    else:
        lines += [
            "No validation scores are stored with this model: check it on annotated images of "
            "your own before relying on it.",
            "",
        ]
    lines += [
        "## Weights",
        "",
        f"- `pytorch_state_dict`: `{WEIGHTS_FILE}` with the architecture in "
        f"`{ARCHITECTURE_FILE}` (class `{WRAPPER_NAME}`), which needs only PyTorch.",
        f"- `torchscript`: `{TORCHSCRIPT_FILE}`, the same model traced with PyTorch "
        "(for Java tools such as deepImageJ).",
        "",
        "## Licence",
        "",
        f"The weights and this description: {license_id}. The licence of the training images "
        "is not recorded in napari-unet model files; see the citations for the data where given.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- export


def _emit(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _cite_entries(v0_5, cite: Sequence[Mapping[str, str]] | None) -> tuple[list, list[str]]:
    """Return the ``CiteEntry`` list and the URLs in it (never fetched: known files)."""
    from bioimageio.spec import ValidationContext

    entries = [UNET_CITATION, *(cite or [])]
    out, urls = [], []
    for entry in entries:
        if not isinstance(entry, Mapping) or not entry.get("text"):
            raise NapariUnetError(
                f"Each citation needs a 'text' and a 'doi' or 'url'; got {entry!r}."
            )
        doi, url = entry.get("doi"), entry.get("url")
        if not doi and not url:
            raise NapariUnetError(f"Citation {entry['text']!r} needs a 'doi' or a 'url'.")
        if url:
            urls.append(str(url))
        fields: dict[str, Any] = {"text": str(entry["text"])}
        if doi:
            fields["doi"] = str(doi)
        if url:
            fields["url"] = str(url)
        try:
            with ValidationContext(perform_io_checks=False):  # offline: URLs are not fetched
                entry_descr = v0_5.CiteEntry(**fields)
        except ValueError as exc:
            raise NapariUnetError(f"Invalid citation {entry!r}: {exc}") from exc
        if entry_descr.url is not None:
            urls.append(str(entry_descr.url))  # as written to rdf.yaml
        out.append(entry_descr)
    return out, urls


def _summary_text(summary) -> str:
    try:
        return summary.format()
    except Exception:  # noqa: BLE001 - formatting is best effort; the errors below are not
        return "\n".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.errors)


def export_bioimageio(
    bundle_or_path: ModelBundle | str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] | None = None,
    test_image: np.ndarray | None = None,
    cite: Sequence[Mapping[str, str]] | None = None,
    tags: Sequence[str] | None = None,
    license: str = DEFAULT_LICENSE,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a napari-unet model as a bioimage.io model package (zip), validated.

    Parameters
    ----------
    bundle_or_path : ModelBundle or str or Path
        A model, or a napari-unet model file (loaded safely: no code in it runs).
    out : str or Path
        The package to write, ending in ``.zip``.
    name : str, optional
        Model name (5 to 128 letters, digits, spaces, ``_+-()``); default from the
        file name.
    description : str, optional
        One or two sentences; default generated.
    authors : sequence of str, optional
        Author names; default ``["napari-unet user"]``.
    test_image : (Y, X) or (Y, X, C) or (C, Y, X) ndarray, optional
        Example image with the model's channel count (at least the minimum size; the
        centre is cropped to at most 256 x 256). Default: a shipped sample image.
    cite : sequence of dict, optional
        Extra citations, each ``{"text": ..., "doi": ...}`` or with ``"url"``, e.g.
        :data:`DSB2018_CITATION` for a model trained on DSB2018 images. The UNet paper
        is always cited.
    tags : sequence of str, optional
        Extra tags, e.g. ``["nuclei", "fluorescence-light-microscopy"]``.
    license : str
        SPDX identifier for the weights and description.
    overwrite : bool
        Replace an existing ``out``.
    progress : callable, optional
        Called with a short message at each step.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    NapariUnetError
        ``out`` is a folder, exists (without ``overwrite``) or does not end in
        ``.zip``; the model file is not a napari-unet model; the test image does not
        fit the model; bioimageio.spec is missing; the package fails validation.
        Nothing is written in these cases.
    """
    out_path = _check_out(out, overwrite)
    from napari_unet.core.checkpoint import ModelBundle, load_checkpoint
    from napari_unet.core.predict import PredictConfig

    if isinstance(bundle_or_path, ModelBundle):
        bundle = bundle_or_path
        default_name = "napari-unet model"
    else:
        _emit(progress, f"loading {bundle_or_path}")
        bundle = load_checkpoint(bundle_or_path, device="cpu")  # never runs code from the file
        default_name = f"napari-unet {Path(bundle_or_path).stem}"
    spec = bundle.spec
    outputs = [str(o) for o in bundle.meta.get("outputs", [])]
    if len(outputs) != spec.out_channels:
        raise NapariUnetError(
            f"The model has {spec.out_channels} output(s) but its metadata names "
            f"{len(outputs)} ({outputs}); the model file is damaged."
        )
    norm = _check_normalisation(bundle.meta)
    name = _check_name(name, default_name)
    if description is None:
        description = (
            f"UNet trained with napari-unet to segment nuclei or cells in 2D "
            f"{spec.in_channels}-channel images. Outputs {' and '.join(outputs)} probability "
            "maps; napari-unet's watershed turns them into labels (see the documentation)."
        )
    description = str(description).strip()
    if len(description) > 1024:
        raise NapariUnetError(
            f"The description has {len(description)} characters; bioimage.io allows 1024."
        )
    author_names = [str(a).strip() for a in (authors or []) if str(a).strip()]
    author_names = author_names or [DEFAULT_AUTHOR]
    for author in author_names:
        if "/" in author or "\\" in author:
            raise NapariUnetError(f"Author name {author!r} may not contain / or \\.")
    halo = max(1, PredictConfig().overlap // 2)
    minimum, step = _sizes(spec.multiple, halo)
    _emit(progress, "preparing the test image")
    test_raw, test_what = _prepare_test_image(test_image, spec.in_channels, minimum, step)
    test_input = test_raw.astype(np.float32)[None]
    preprocessed = scale_range(test_input, norm.low, norm.high)
    if norm.polarity == "auto" and _inversion_margin(preprocessed) < 1e-3:
        raise NapariUnetError(
            "The test image lies on the edge of napari-unet's bright-background decision (largest "
            "channel median 0.5 after normalisation), so tools could disagree on it; give "
            "another test image."
        )

    v0_5 = _import_spec()
    import torch

    from napari_unet import __version__

    cite_entries, cite_urls = _cite_entries(v0_5, cite)
    try:
        license_id = v0_5.LicenseId(license)
    except ValueError as exc:
        raise NapariUnetError(
            f"Licence {license!r} is not an SPDX identifier that bioimage.io accepts (e.g. "
            "BSD-3-Clause, MIT, CC-BY-4.0)."
        ) from exc
    known_files: dict[str, None] = {url: None for url in cite_urls}
    spec_version = v0_5.ModelDescr.implemented_format_version

    with tempfile.TemporaryDirectory(prefix="napari-unet-bioimageio-") as tmp:
        work = Path(tmp)
        _emit(progress, "writing the architecture and weights")
        arch_path = work / ARCHITECTURE_FILE
        arch_path.write_text(architecture_source(), encoding="utf-8")
        module = _import_architecture(arch_path)
        kwargs = {
            "in_channels": spec.in_channels,
            "out_channels": spec.out_channels,
            "depth": spec.depth,
            "base_channels": spec.base_channels,
            "batch_norm": spec.batch_norm,
            "upsampling": spec.upsampling,
            "invert_bright_background": norm.polarity == "auto",
        }
        wrapper = getattr(module, WRAPPER_NAME)(**kwargs)
        # a copy of the weights on the CPU: the caller's model stays where it is
        state = {k: v.detach().to("cpu").clone() for k, v in bundle.model.state_dict().items()}
        wrapper.unet.load_state_dict(state, strict=True)
        wrapper.eval()
        torch.save(wrapper.state_dict(), work / WEIGHTS_FILE)

        _emit(progress, "computing the test output")
        with torch.no_grad():
            expected = wrapper(torch.from_numpy(preprocessed)).numpy().astype(np.float32)
        _emit(progress, "tracing the TorchScript weights")
        _save_torchscript(torch, wrapper, preprocessed, minimum, step, work / TORCHSCRIPT_FILE)
        _write_examples(work, test_raw, test_input, expected)
        (work / DOC_FILE).write_text(
            _documentation(
                name=name,
                description=description,
                bundle=bundle,
                norm=norm,
                minimum=minimum,
                step=step,
                halo=halo,
                test_what=test_what,
                license_id=str(license_id),
                spec_version=spec_version,
                spec_package_version=_spec_package_version(),
            ),
            encoding="utf-8",
        )

        _emit(progress, "describing and packaging the model")
        descr = _describe(
            v0_5,
            torch=torch,
            work=work,
            name=name,
            description=description,
            authors=author_names,
            cite=cite_entries,
            tags=tags,
            license_id=license_id,
            bundle=bundle,
            norm=norm,
            kwargs=kwargs,
            minimum=minimum,
            step=step,
            halo=halo,
            outputs=outputs,
            napari_unet_version=__version__,
            known_files=known_files,
        )
        package = work / "package.zip"
        _write_package(descr, package, known_files)
        _emit(progress, "validating the package")
        summary = _validate_package(package, known_files)
        if summary.status == "failed":
            raise NapariUnetError(
                "The bioimage.io package failed validation, so it was not written:\n"
                + _summary_text(summary)
            )
        if out_path.exists() and not overwrite:  # appeared while we worked
            raise NapariUnetError(f"{out_path} exists; choose another name or allow overwriting.")
        with atomic_write(out_path) as tmp_out:
            shutil.copyfile(package, tmp_out)
    warned = [str(w.msg) for w in summary.warnings]
    _emit(
        progress,
        f"wrote {out_path} (bioimage.io model format {spec_version}, validation "
        f"{summary.status}"
        + (f"; {len(warned)} warning(s): " + " | ".join(warned[:3]) if warned else "")
        + ")",
    )
    return out_path


def _write_examples(
    work: Path, test_raw: np.ndarray, test_input: np.ndarray, expected: np.ndarray
) -> None:
    """Write the test tensors (.npy), the sample images (.tif) and the cover (.png)."""
    import imageio.v3 as iio
    import tifffile

    np.save(work / TEST_INPUT_FILE, test_input)
    np.save(work / TEST_OUTPUT_FILE, expected)
    if test_raw.shape[0] == 1:
        tifffile.imwrite(work / SAMPLE_INPUT_FILE, test_raw[0])
    elif test_raw.shape[0] == 3 and test_raw.dtype == np.uint8:  # an RGB image, as Fiji shows it
        tifffile.imwrite(work / SAMPLE_INPUT_FILE, np.moveaxis(test_raw, 0, -1), photometric="rgb")
    else:
        tifffile.imwrite(work / SAMPLE_INPUT_FILE, test_raw, photometric="minisblack")
    tifffile.imwrite(work / SAMPLE_OUTPUT_FILE, expected[0], photometric="minisblack")
    iio.imwrite(work / COVER_FILE, _cover(test_input[0], expected[0]))


def _write_package(descr, package: Path, known_files: dict) -> None:
    """Zip the description and its files with bioimageio.spec (validated afterwards)."""
    from bioimageio.spec import ValidationContext, save_bioimageio_package_to_stream

    # save_bioimageio_package would validate the zip again, with URLs fetched (it forgets
    # the known files): this writes only, and _validate_package checks the result offline
    with (
        ValidationContext(perform_io_checks=True, known_files=dict(known_files)),
        package.open("wb") as stream,
    ):
        try:
            save_bioimageio_package_to_stream(descr, output_stream=stream)
        except ValueError as exc:
            raise NapariUnetError(f"bioimageio.spec refused to write the package: {exc}") from exc


def _validate_package(package: Path, known_files: dict):
    """Load ``package`` back with every file check, offline; return its validation summary."""
    from bioimageio.spec import InvalidDescr, ValidationContext, load_description

    with (
        warnings.catch_warnings(),
        ValidationContext(perform_io_checks=True, known_files=dict(known_files)),
    ):
        warnings.filterwarnings("ignore", message="Found mapping with 'source'")
        loaded = load_description(package, perform_io_checks=True, known_files=dict(known_files))
    summary = loaded.validation_summary
    if isinstance(loaded, InvalidDescr) and summary.status != "failed":
        summary.status = "failed"
    return summary


def _inversion_margin(preprocessed: np.ndarray) -> float:
    """Distance of the largest channel median from 0.5 (the bright-background decision)."""
    medians = np.median(preprocessed.reshape(*preprocessed.shape[:2], -1), axis=-1)
    return float(np.min(np.abs(medians.max(axis=1) - 0.5)))


def _save_torchscript(
    torch, wrapper, preprocessed: np.ndarray, minimum: int, step: int, path: Path
) -> None:
    """Trace ``wrapper`` and check the trace on other sizes and a batch of 2 before saving."""
    example = torch.from_numpy(preprocessed)
    rng = np.random.default_rng(0)
    c = preprocessed.shape[1]
    checks = [
        example,
        torch.from_numpy(rng.random((2, c, minimum + step, minimum), dtype=np.float32)),
        torch.from_numpy(rng.random((1, c, minimum + 3, minimum + step + 5), dtype=np.float32)),
    ]
    with warnings.catch_warnings(), torch.no_grad():
        # tracing warns that Python branches on shapes become constants: they are (the
        # wrapper pads every input to a multiple first, and the checks below cover other
        # sizes); torch.jit also warns that it is deprecated in favour of torch.export, but
        # TorchScript is the format that bioimage.io and Java tools such as deepImageJ load
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        for x in checks:
            a, b = traced(x), wrapper(x)
            if a.shape != b.shape or not torch.allclose(a, b, atol=1e-5, rtol=1e-5):
                raise RuntimeError(
                    f"the TorchScript trace differs from the model on input {tuple(x.shape)}; "
                    "please report this napari-unet bug"
                )
        torch.jit.save(traced, str(path))


def _describe(
    v0_5,
    *,
    torch,
    work: Path,
    name: str,
    description: str,
    authors: list[str],
    cite: list,
    tags: Sequence[str] | None,
    license_id,
    bundle: ModelBundle,
    norm,
    kwargs: dict,
    minimum: int,
    step: int,
    halo: int,
    outputs: list[str],
    napari_unet_version: str,
    known_files: dict,
):
    """Build the ``ModelDescr`` for the files in ``work``."""
    from bioimageio.spec import ValidationContext

    spec = bundle.spec
    in_id, out_id = v0_5.TensorId(INPUT_ID), v0_5.TensorId(OUTPUT_ID)
    channel_names = (
        ["channel"] if spec.in_channels == 1 else [f"channel{i}" for i in range(spec.in_channels)]
    )
    space_in = [
        v0_5.SpaceInputAxis(
            id=v0_5.AxisId(axis), size=v0_5.ParameterizedSize(min=minimum, step=step)
        )
        for axis in ("y", "x")
    ]
    space_out = [
        v0_5.SpaceOutputAxisWithHalo(
            id=v0_5.AxisId(axis),
            size=v0_5.SizeReference(tensor_id=in_id, axis_id=v0_5.AxisId(axis)),
            halo=halo,
        )
        for axis in ("y", "x")
    ]
    preprocessing = [
        v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
        v0_5.ScaleRangeDescr(
            kwargs=v0_5.ScaleRangeKwargs(
                axes=[v0_5.AxisId("y"), v0_5.AxisId("x")],
                min_percentile=float(norm.low),
                max_percentile=float(norm.high),
                eps=SCALE_RANGE_EPS,
            )
        ),
        v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
    ]
    inputs = [
        v0_5.InputTensorDescr(
            id=in_id,
            description=(
                f"2D image, {spec.in_channels} channel(s), any number type; normalised per "
                "channel by the preprocessing"
            ),
            axes=[
                v0_5.BatchAxis(),
                v0_5.ChannelAxis(channel_names=channel_names),
                *space_in,
            ],
            test_tensor=v0_5.FileDescr(source=work / TEST_INPUT_FILE),
            sample_tensor=v0_5.FileDescr(source=work / SAMPLE_INPUT_FILE),
            data=v0_5.IntervalOrRatioDataDescr(type="float32"),
            pad=v0_5.ReflectPadding(mode="reflect"),  # set explicitly, so it is written
            preprocessing=preprocessing,
        )
    ]
    output_descr = [
        v0_5.OutputTensorDescr(
            id=out_id,
            description=f"probability maps: {', '.join(outputs)}",
            axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=outputs), *space_out],
            test_tensor=v0_5.FileDescr(source=work / TEST_OUTPUT_FILE),
            sample_tensor=v0_5.FileDescr(source=work / SAMPLE_OUTPUT_FILE),
            data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        )
    ]
    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    weights = v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=work / WEIGHTS_FILE,
            architecture=v0_5.ArchitectureFromFileDescr(
                source=work / ARCHITECTURE_FILE, callable=WRAPPER_NAME, kwargs=kwargs
            ),
            pytorch_version=torch_version,
            comment=f"trained with napari-unet {bundle.meta.get('version', '(unknown)')}",
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=work / TORCHSCRIPT_FILE,
            pytorch_version=torch_version,
            parent="pytorch_state_dict",
            comment=f"traced with torch.jit.trace by napari-unet {napari_unet_version}",
        ),
    )
    meta = bundle.meta
    tag_list = ["napari-unet", "unet", "unet2d", "pytorch", "2d", "semantic-segmentation"]
    tag_list += [str(t) for t in (tags or []) if str(t) not in tag_list]
    train_config = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    napari_config = {
        "version": napari_unet_version,
        "trained_with_version": str(meta.get("version", "unknown")),
        "spec": spec.to_dict(),
        "outputs": outputs,
        "normalisation": norm.to_dict(),
        "postprocess": {
            k: v
            for k, v in (meta.get("postprocess") or {}).items()
            if isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)
        },
    }
    n_params = sum(p.numel() for p in bundle.model.parameters())
    with ValidationContext(perform_io_checks=True, known_files=dict(known_files)):
        try:
            return v0_5.ModelDescr(
                name=name,
                description=description,
                authors=[v0_5.Author(name=a) for a in authors],
                cite=cite,
                license=license_id,
                tags=tag_list,
                documentation=v0_5.FileDescr(source=work / DOC_FILE),
                covers=[v0_5.FileDescr(source=work / COVER_FILE)],
                inputs=inputs,
                outputs=output_descr,
                weights=weights,
                config=v0_5.Config(
                    bioimageio=v0_5.BioimageioConfig(
                        architecture_type="UNet",
                        model_parameter_count=int(n_params),
                        training=v0_5.TrainingDetails(
                            training_batch_size=train_config.get("batch_size"),
                            initial_learning_rate=train_config.get("lr"),
                            loss_function=train_config.get("loss"),
                            optimizer="AdamW" if train_config else None,
                        ),
                    ),
                    napari_unet=napari_config,
                ),
            )
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise NapariUnetError(f"The bioimage.io description is invalid: {exc}") from exc
