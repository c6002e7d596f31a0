"""Error types. Every error raised on purpose derives from :class:`SegDINOError`.

The command line prints such errors as one line and exits non-zero; anything
else is a bug and shows its traceback.
"""


class SegDINOError(Exception):
    """Base class of every error SegDINO raises on purpose."""


class DataError(SegDINOError):
    """An input (image, mask, volume, dataset folder, tensor) is not what was expected."""


class CheckpointError(SegDINOError):
    """A weights file is missing, unreadable, unsafe, or does not fit the model."""


class ConfigError(SegDINOError):
    """An option or a combination of options is invalid."""
