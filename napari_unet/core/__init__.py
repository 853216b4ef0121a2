"""The computational core: numpy and torch only, never Qt, napari or magicgui.

torch itself is imported lazily by the modules that need it (``model``,
``train``, ``predict``, ``checkpoint``), so ``import napari_unet.core`` stays fast.
"""

from napari_unet.core.errors import CheckpointError, NapariUnetError

__all__ = ["CheckpointError", "NapariUnetError"]
