r"""napari widgets of napari-unet: Train, Predict (with Correct & retrain) and Split nuclei.

Thin Qt adapters over :mod:`napari_unet.core`: they read arrays from layers on the main
thread, run the core generators in napari ``thread_worker``\\ s (see :mod:`._jobs`) and turn
what the workers yield into progress, plots and layers. The state shared by the widgets of
one viewer (current model, training set) lives in a :class:`~._session.Session`.

Importing this package is cheap: no torch, and the Qt modules are imported by the
widget modules only.
"""
