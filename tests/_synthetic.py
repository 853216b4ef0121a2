"""Synthetic nuclei images for fast tests (touching discs on a noisy background)."""

import numpy as np


def nuclei_image(shape=(96, 96), n=12, radius=7, seed=0, touching=True):
    """Return (image float32, instance labels int32) with bright discs, some touching."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    img = rng.normal(0.1, 0.03, shape).astype(np.float32)
    k = 0
    tries = 0
    while k < n and tries < 500:
        tries += 1
        cy = rng.uniform(radius, shape[0] - radius)
        cx = rng.uniform(radius, shape[1] - radius)
        r = radius * rng.uniform(0.8, 1.2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        disc = d2 < r**2
        overlap = (lab[disc] > 0).mean()
        if overlap > (0.15 if touching else 0.0):
            continue
        k += 1
        lab[disc & (lab == 0)] = k
        img += (0.8 * np.exp(-d2 / (2 * (1.2 * r) ** 2)) * disc).astype(np.float32)
    return img, lab


def sized_nuclei(diameter, *, shape=None, n=None, seed=0, background="uneven", noise=0.05):
    """Return (image float32, labels int32) of textured nuclei of about ``diameter`` pixels.

    Nuclei are ellipses (aspect 1 to 1.5, any orientation, diameters within 20 % of
    ``diameter``) of varied brightness with a grainy texture, about a third of them in
    touching pairs, blurred, on a background that is flat (``"flat"``) or has a gradient
    and a broad bright patch (``"uneven"``), with Gaussian noise of sd ``noise``. The image
    is large enough for about ``n`` nuclei (default: 40, fewer for large ones).
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    d = float(diameter)
    if n is None:
        n = 40 if d <= 60 else 24
    if shape is None:
        side = int(max(96, np.sqrt(n / 0.25) * d))
        shape = (side, side)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    lab = np.zeros(shape, np.int32)
    img = np.zeros(shape, np.float32)
    texture = ndi.gaussian_filter(rng.normal(0, 1, shape), max(1.0, d / 12)).astype(np.float32)
    texture /= texture.std() + 1e-6
    k, tries, pending = 0, 0, None
    while k < n and tries < 50 * n:
        tries += 1
        size = d * rng.uniform(0.8, 1.2)
        aspect = rng.uniform(1.0, 1.5)
        a, b = size / 2 * np.sqrt(aspect), size / 2 / np.sqrt(aspect)
        if pending is not None:  # the partner of a touching pair
            cy, cx, angle = pending
            pending = None
        else:
            cy = rng.uniform(0, shape[0])
            cx = rng.uniform(0, shape[1])
            angle = rng.uniform(0, np.pi)
            if rng.random() < 0.35:
                dist = 0.9 * size
                pending = (cy + dist * np.sin(angle), cx + dist * np.cos(angle), angle)
        theta = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)
        v = -(yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 < 1
        if not inside.any() or (lab[inside] > 0).mean() > 0.1:
            pending = None
            continue
        k += 1
        new = inside & (lab == 0)
        lab[new] = k
        img[new] = rng.uniform(0.35, 1.0)
    img *= 1 + 0.25 * texture
    img = ndi.gaussian_filter(img, max(0.7, d / 30))
    if background == "uneven":
        ramp = 0.15 * (xx / shape[1]) + 0.1 * (yy / shape[0])
        patch = 0.15 * np.exp(
            -((yy - 0.3 * shape[0]) ** 2 + (xx - 0.6 * shape[1]) ** 2)
            / (2 * (0.25 * shape[0]) ** 2)
        )
        img += ramp + patch
    img += 0.1 + rng.normal(0, noise, shape).astype(np.float32)
    return img.astype(np.float32), lab


def touching_discs(shape=(512, 512), n=60, seed=0, radius=(8, 14)):
    """Clusters of 1-3 overlapping discs, as labels (ground truth for the split)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    k = 0
    while k < n:
        centre = rng.uniform(30, np.array(shape) - 30)
        r = rng.uniform(*radius)
        for _ in range(rng.integers(1, 4)):
            k += 1
            disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < r**2
            labels[disc & (labels == 0)] = k
            r2 = rng.uniform(*radius)
            angle = rng.uniform(0, 2 * np.pi)
            centre = centre + (r + r2) * 0.8 * np.array([np.sin(angle), np.cos(angle)])
            r = r2
    return labels
