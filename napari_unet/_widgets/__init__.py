r"""napari widgets of napari-unet: Train, Predict (with Correct & retrain) and Split nuclei.

Thin Qt adapters over :mod:`napari_unet.core`: they read arrays from layers on the main
thread, run the core generators in napari ``thread_worker``\\ s (see :mod:`._jobs`) and turn
what the workers yield into progress, plots and layers. The state shared by the widgets of
one viewer (current model, training set) lives in a :class:`~._session.Session`.

Importing this package is cheap: no torch, and the Qt modules are imported by the
widget modules only.

Three modules here import no Qt: :mod:`._jobs` (the generators the workers run),
:mod:`._session` (the state the widgets of a viewer share, with psygnal signals) and
:mod:`._process` (running a job in a child process so the viewer never imports torch).
They stay beside the widgets because they exist for them alone: they speak the widgets'
terms (config dicts read from widgets, layer metadata, what napari's worker threads
need) and nothing outside the widgets uses them; the rules they apply are the core's
(:mod:`napari_unet.core`), which the command line calls too. Being Qt-free, they are
tested without a viewer (``tests/test_widgets_session.py``, ``tests/test_process.py``).
"""
