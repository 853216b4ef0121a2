"""``python -m napari_unet`` runs the command line (same as ``napari-unet``)."""

import sys

from napari_unet.cli import main

if __name__ == "__main__":
    sys.exit(main())
