"""napari-unet: train a UNet on your own microscopy images, in napari or headless.

Importing this package is cheap: it imports neither torch, Qt nor napari. The
computational core lives in :mod:`napari_unet.core` (numpy and torch only), the
command line in :mod:`napari_unet.cli` and the napari widgets in
:mod:`napari_unet._widgets`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
