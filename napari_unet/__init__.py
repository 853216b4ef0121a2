"""napari-unet: train a UNet on your own microscopy images, in napari or headless.

Importing this package is cheap: it imports neither torch, Qt nor napari. The
computational core lives in :mod:`napari_unet.core` (numpy and torch only), the
command line in :mod:`napari_unet.cli` and the napari widgets in
:mod:`napari_unet._widgets`.
"""

__version__ = "0.1.0"

#: The distribution's name (``pip install``, wheel file names) and the plugin's name in
#: napari's plugin manager (npe2 requires the manifest's ``name`` to equal it; menus show
#: the display name "napari-unet"). The name ``napari-unet`` on PyPI belongs to another
#: project.
PLUGIN_NAME = "napari-unet-trainer"

__all__ = ["PLUGIN_NAME", "__version__"]
