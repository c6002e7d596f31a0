"""SegDINO: medical image segmentation with DINOv3 and a multi-scale decoder (TPA + SAD)."""

from .errors import CheckpointError, ConfigError, DataError, SegDINOError

__version__ = "0.1.0"

# The model pulls in torch and timm; import it on first use so that the command line starts fast.
_LAZY = {
    "build_model": "model",
    "SegDINO": "model",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "ModelConfig": "config",
    "load_inference_model": "inference",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def predict(model, images, **kwargs):
    """Segment raw images (paths, PIL images or HxWxC uint8 arrays) at their own sizes.

    ``model`` is a loaded model or a model file / run folder; see :func:`segdino.inference.predict`
    for the options (``batch_size``, ``keep_size``, ``device``, ``probabilities``).
    """
    from .inference import predict as _predict

    return _predict(model, images, **kwargs)


__all__ = [
    "SegDINO",
    "ModelConfig",
    "build_model",
    "load_model",
    "save_model",
    "load_inference_model",
    "predict",
    "SegDINOError",
    "DataError",
    "CheckpointError",
    "ConfigError",
    "__version__",
]
