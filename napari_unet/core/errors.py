"""Exceptions raised by the core for problems a user can fix."""


class NapariUnetError(ValueError):
    """A problem with the user's input: the message says what is wrong and what to do.

    The command line prints it as one line and exits non-zero; the widgets show
    it as a napari notification. Nothing the user had is changed when it is raised.
    """


class CheckpointError(NapariUnetError):
    """A model file that cannot be loaded (truncated, foreign, incompatible or unsafe)."""
