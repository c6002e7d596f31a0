"""The error classes share one base, so a caller can catch every user-facing error at once."""

import segdino
from segdino import ConfigError, DataError


def test_errors_share_a_base():
    for cls in (DataError, ConfigError, segdino.CheckpointError):
        assert issubclass(cls, segdino.SegDINOError)
