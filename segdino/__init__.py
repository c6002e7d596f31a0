"""SegDINO: medical image segmentation with DINOv3 and a multi-scale decoder (TPA + SAD)."""

from .checkpoint import load_model, save_model
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, DataError, SegDINOError
from .model import SegDINO, build_model

__version__ = "0.1.0"


def predict(model, images, **kwargs):
    """Segment raw images (paths, PIL images or HxWxC uint8 arrays) at their own sizes.

    See :func:`segdino.inference.predict`.
    """
    from .inference import predict as _predict

    return _predict(model, images, **kwargs)


__all__ = [
    "SegDINO",
    "ModelConfig",
    "build_model",
    "load_model",
    "save_model",
    "predict",
    "SegDINOError",
    "DataError",
    "CheckpointError",
    "ConfigError",
    "__version__",
]
