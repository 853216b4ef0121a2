"""The small nuclei images shipped with napari-unet, with their ground truth.

Qt-free: the command line (``napari-unet demo``), the tests and the napari sample-data
menu (:mod:`napari_unet._sample_data`) all load them from here. See
``napari_unet/sample_data/SOURCE.md`` for their origin (DSB2018 / BBBC038v1, CC0).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

#: Names of the shipped samples, in menu order: four greyscale fluorescence images
#: (256 x 256) and two RGB stained-tissue images (256 x 320 x 3).
SAMPLE_NAMES: tuple[str, ...] = (
    "fluo_dense",
    "fluo_crowded",
    "fluo_mixed",
    "fluo_small",
    "he_tissue",
    "he_cells",
)


def load_sample(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one shipped sample image and its instance labels.

    Parameters
    ----------
    name : str
        One of :data:`SAMPLE_NAMES`.

    Returns
    -------
    image : (Y, X) or (Y, X, 3) ndarray of uint8
        Greyscale fluorescence or RGB stained image.
    labels : (Y, X) ndarray of uint16
        Ground truth: 0 = background, 1..N = one nucleus each.

    Raises
    ------
    ValueError
        If `name` is not a shipped sample.

    Examples
    --------
    >>> image, labels = load_sample("fluo_dense")
    >>> image.shape, labels.dtype
    ((256, 256), dtype('uint16'))
    """
    import tifffile

    if name not in SAMPLE_NAMES:
        raise ValueError(f"Unknown sample {name!r}; choose one of: {', '.join(SAMPLE_NAMES)}.")
    folder = resources.files("napari_unet") / "sample_data"
    with (folder / f"{name}.tif").open("rb") as fh:
        image = tifffile.imread(fh)
    with (folder / f"{name}_labels.tif").open("rb") as fh:
        labels = tifffile.imread(fh)
    return image, labels


def load_samples(
    names: tuple[str, ...] | list[str] | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Load shipped sample images with their instance labels.

    Parameters
    ----------
    names : sequence of str, optional
        Which samples (see :data:`SAMPLE_NAMES`); all of them by default.

    Returns
    -------
    list of (name, image, labels)
        `image` is (Y, X) uint8 (fluorescence) or (Y, X, 3) uint8 (RGB); `labels` is
        (Y, X) uint16 with 0 = background and 1..N = nuclei.

    Examples
    --------
    >>> samples = load_samples()
    >>> [name for name, image, labels in samples][:2]
    ['fluo_dense', 'fluo_crowded']
    """
    return [(name, *load_sample(name)) for name in (names or SAMPLE_NAMES)]


def synthetic_nuclei_stack(
    shape: tuple[int, int, int] = (24, 192, 192),
    *,
    z_step: float = 3.0,
    diameter: float = 20.0,
    n: int = 30,
    touching: float = 0.5,
    noise: float = 0.04,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Return a synthetic fluorescence z-stack of nuclei, its 3D labels and its touching pairs.

    Nuclei are ellipsoids (diameters within 25 % of ``diameter`` pixels, z semi-axis 0.7
    to 1 times the y/x ones, any orientation in y/x) of varied brightness with a grainy
    texture; about ``touching`` of them come in pairs pressed together (side by side or
    one above the other). The stack is sampled every ``z_step`` pixels in z (1: isotropic
    voxels), blurred as a widefield-like microscope does (twice as much along z), on a dim
    background with Gaussian noise of sd ``noise``.

    Parameters
    ----------
    shape : (int, int, int)
        (Z, Y, X) of the stack, in voxels.
    z_step : float
        The z-step in y/x pixels (the anisotropy).
    diameter : float
        Typical nucleus diameter in pixels.
    n : int
        Nuclei to place (fewer when the stack is too small).
    touching : float
        Fraction of the nuclei placed in touching pairs.
    noise : float
        Noise sd (the brightest nucleus is about 1).
    seed : int

    Returns
    -------
    image : (Z, Y, X) ndarray of float32
    labels : (Z, Y, X) ndarray of int32
        One id per nucleus, 0 background.
    pairs : list of (int, int)
        The ids of the nuclei placed touching each other.

    Examples
    --------
    >>> image, labels, pairs = synthetic_nuclei_stack((12, 64, 64), n=4, seed=1)
    >>> image.shape, bool(labels.max() > 0)
    ((12, 64, 64), True)
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    Z, Y, X = (int(v) for v in shape)
    depth = Z * float(z_step)
    centres: list[np.ndarray] = []
    radii: list[np.ndarray] = []
    angles: list[float] = []
    pairs: list[tuple[int, int]] = []

    def fits(c: np.ndarray, r: np.ndarray, ignore: int = -1) -> bool:
        if not (r[0] * 0.5 <= c[0] <= depth - r[0] * 0.5):
            return False
        if not (r[1] <= c[1] <= Y - r[1] and r[2] <= c[2] <= X - r[2]):
            return False
        for k, (c2, r2) in enumerate(zip(centres, radii, strict=True)):
            if k == ignore:
                continue
            if np.linalg.norm((c - c2) / ((r + r2) / 2)) < 2.1:
                return False
        return True

    def draw_radius() -> np.ndarray:
        ry = diameter / 2 * rng.uniform(0.8, 1.25)
        rx = ry * rng.uniform(0.8, 1.0)
        return np.array([ry * rng.uniform(0.7, 1.0), ry, rx])

    tries = 0
    while len(centres) < n and tries < 4000:
        tries += 1
        r = draw_radius()
        c = np.array([rng.uniform(0, depth), rng.uniform(0, Y), rng.uniform(0, X)])
        if not fits(c, r):
            continue
        centres.append(c)
        radii.append(r)
        angles.append(rng.uniform(0, np.pi))
        if len(centres) < n and rng.random() < touching / (2 - touching):
            # a partner pressed against it: side by side, or above / below
            r2 = draw_radius()
            for _ in range(30):
                if rng.random() < 0.3:
                    direction = np.array([rng.choice([-1.0, 1.0]), 0.0, 0.0])
                    reach = (r[0] + r2[0]) * 0.85
                else:
                    a = rng.uniform(0, 2 * np.pi)
                    direction = np.array([0.0, np.sin(a), np.cos(a)])
                    reach = (min(r[1:]) + min(r2[1:])) * 0.9
                c2 = c + direction * reach
                if fits(c2, r2, ignore=len(centres) - 1):  # it may touch its partner only
                    centres.append(c2)
                    radii.append(r2)
                    angles.append(rng.uniform(0, np.pi))
                    pairs.append((len(centres) - 1, len(centres)))
                    break
    zz = (np.arange(Z, dtype=np.float32) + 0.5) * float(z_step)
    yy = np.arange(Y, dtype=np.float32)
    xx = np.arange(X, dtype=np.float32)
    labels = np.zeros((Z, Y, X), np.int32)
    best = np.full((Z, Y, X), np.inf, np.float32)  # the closest nucleus wins an overlap
    signal = np.zeros((Z, Y, X), np.float32)
    for k, (c, r, a) in enumerate(zip(centres, radii, angles, strict=True), 1):
        lo = np.maximum(0, np.floor((c - r - 2) / [z_step, 1, 1]).astype(int))
        hi = np.minimum([Z, Y, X], np.ceil((c + r + 2) / [z_step, 1, 1]).astype(int) + 1)
        box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
        dz = zz[box[0], None, None] - c[0]
        dy = yy[None, box[1], None] - c[1]
        dx = xx[None, None, box[2]] - c[2]
        u = dy * np.cos(a) + dx * np.sin(a)
        v = -dy * np.sin(a) + dx * np.cos(a)
        q = (dz / r[0]) ** 2 + (u / r[1]) ** 2 + (v / r[2]) ** 2
        inside = q < 1
        win = inside & (q < best[box])
        labels[box][win] = k
        best[box][win] = q[win]
        brightness = rng.uniform(0.5, 1.0)
        signal[box][inside] = brightness
    texture = ndi.gaussian_filter(rng.normal(1.0, 0.35, (Z, Y, X)).astype(np.float32), 1.0)
    image = signal * np.clip(texture, 0.3, 1.7) + 0.08
    image = ndi.gaussian_filter(image, (2.0 / float(z_step), 1.0, 1.0))
    image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return image.astype(np.float32), labels, pairs
