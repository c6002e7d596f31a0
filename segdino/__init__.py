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


def predict(model, images, out=None, **options):
    """Segment images or volumes; see :func:`segdino.api.predict`.

    ``segdino.predict(model, images)`` returns one (H, W) uint8 mask per image at its own size
    (paths, PIL images or HxWxC uint8 arrays) and a label volume per volume path; with
    ``out=DIR`` it writes what ``segdino predict`` writes and returns the paths.
    """
    from .api import predict as _predict

    return _predict(model, images, out=out, **options)


def train(data=None, out=None, **options):
    """Train as ``segdino train`` does; see :func:`segdino.api.train`."""
    from .api import train as _train

    return _train(data, out, **options)


def evaluate(model=None, data=None, out=None, **options):
    """Score a model or prediction masks as ``segdino evaluate`` does; see :func:`segdino.api.evaluate`."""
    from .api import evaluate as _evaluate

    return _evaluate(model, data, out, **options)


__all__ = [
    "SegDINO",
    "ModelConfig",
    "build_model",
    "load_model",
    "save_model",
    "load_inference_model",
    "predict",
    "train",
    "evaluate",
    "SegDINOError",
    "DataError",
    "CheckpointError",
    "ConfigError",
    "__version__",
]
