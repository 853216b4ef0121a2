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
