"""Writing predictions: one folder layout for images and volumes (docs/FORMATS.md).

Under an output folder ``OUT`` (names from :mod:`segdino.run_files`)::

    masks/NAME.png               an image's labels at its own size: binary 0/255 (viewable), or 0/1
                                 with label values ``index`` (nnU-Net's 2D labels); multi-class the
                                 class index 0..K-1
    masks/CASE.nii.gz            a volume's uint8 labels on the source grid, in the source's format
    probabilities/NAME.png       images: the foreground probability as 8-bit grey (round(255 p));
                                 multi-class models one NAME_class<k>.png per foreground class k
    probabilities/NAME.npy       images, format ``npy``: float32, (H, W) foreground probability of a
                                 binary model, (K, H, W) softmax otherwise
    probabilities/CASE.nii.gz    volumes: the float32 foreground probability; multi-class models one
                                 CASE_class<k>.nii.gz per foreground class k
    overlays/NAME.png            images: the image with each predicted class tinted and outlined

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .fileio import atomic_write_bytes
from .inference import Prediction
from .report import overlay_prediction
from .run_files import MASKS, OVERLAYS, PROBABILITIES
from .volumes.io import write_volume

#: ``--label-values`` choices: how a binary model's foreground is stored in a mask file.
LABEL_VALUES = ("255", "index")
#: ``--probability-format`` choices for images.
PROBABILITY_FORMATS = ("png", "npy")


def mask_for_file(mask: np.ndarray, num_classes: int, label_values: str = "255") -> np.ndarray:
    """Labels -> the values written: a binary model's foreground as 255 (viewable; ``label_values``
    ``"255"``) or 1 (``"index"``, nnU-Net's 2D labels); class indices for multi-class models."""
    if label_values not in LABEL_VALUES:
        raise ConfigError(f"--label-values must be one of {', '.join(LABEL_VALUES)}, got {label_values!r}")
    if num_classes != 1:
        return mask.astype(np.uint8)
    return (mask > 0).astype(np.uint8) * np.uint8(255 if label_values == "255" else 1)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _to_u8(p: np.ndarray) -> np.ndarray:
    return np.round(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


class PredictionWriter:
    """Writes the masks, probabilities and overlays of images and volumes under one folder.

    Args:
        out: the output folder (sub-folders made as needed).
        num_classes: the model's output count (1 = binary).
        probability_format: images: ``png`` (8-bit grey) or ``npy`` (float32).
        label_values: images of a binary model: ``255`` or ``index``.
    """

    def __init__(self, out: str | Path, num_classes: int, probability_format: str = "png",
                 label_values: str = "255"):
        if probability_format not in PROBABILITY_FORMATS:
            raise ConfigError(f"--probability-format must be one of {', '.join(PROBABILITY_FORMATS)}, "
                              f"got {probability_format!r}")
        if label_values not in LABEL_VALUES:
            raise ConfigError(f"--label-values must be one of {', '.join(LABEL_VALUES)}, got {label_values!r}")
        self.out = Path(out)
        self.num_classes = int(num_classes)
        self.probability_format = probability_format
        self.label_values = label_values

    def image_mask_path(self, name: str) -> Path:
        return self.out / MASKS / f"{name}.png"

    def write_image(self, name: str, image: np.ndarray, prediction, overlays: bool = False) -> Path:
        """One image's mask (and its probabilities when ``prediction`` is a
        :class:`~segdino.inference.Prediction` that holds them, and its overlay); returns the mask path.

        Args:
            name: the output name (a relative path without suffix).
            image: (H, W, 3) uint8, drawn under the overlay.
            prediction: (H, W) uint8 labels, or a :class:`~segdino.inference.Prediction`.
        """
        mask = prediction.mask if isinstance(prediction, Prediction) else prediction
        prob = prediction.probabilities if isinstance(prediction, Prediction) else None
        mask_path = self.image_mask_path(name)
        try:
            atomic_write_bytes(mask_path, _png(mask_for_file(mask, self.num_classes, self.label_values)))
            if prob is not None:
                self._image_probabilities(name, prob)
            if overlays:
                atomic_write_bytes(self.out / OVERLAYS / f"{name}.png", _png(overlay_prediction(image, mask)))
        except OSError as e:
            raise DataError(f"{self.out}: cannot write the outputs of {name} ({e})") from None
        return mask_path

    def _image_probabilities(self, name: str, prob: np.ndarray) -> None:
        base = self.out / PROBABILITIES / name
        if self.probability_format == "npy":
            atomic_write_bytes(base.with_name(base.name + ".npy"), _npy(prob[0] if self.num_classes == 1 else prob))
        elif self.num_classes == 1:
            atomic_write_bytes(base.with_name(base.name + ".png"), _png(_to_u8(prob[0])))
        else:
            for k in range(1, prob.shape[0]):
                atomic_write_bytes(base.with_name(f"{base.name}_class{k}.png"), _png(_to_u8(prob[k])))

    def volume_mask_path(self, case: str, ending: str = ".nii.gz") -> Path:
        return self.out / MASKS / f"{case}{ending}"

    def write_volume(self, case: str, labels: np.ndarray, affine: np.ndarray, probabilities: np.ndarray | None = None,
                     ending: str = ".nii.gz") -> Path:
        """One volume's labels (and probabilities) with the source affine; returns the mask path.

        Args:
            labels: (I, J, K) labels on the source grid.
            affine: the source's 4x4 voxel-to-world (RAS) matrix.
            probabilities: (C, I, J, K) float32 (C = 1 for a binary model, else K), or None.
            ending: the file suffix, the source's format (:func:`segdino.volumes.io.prediction_ending`).
        """
        target = self.volume_mask_path(case, ending)
        write_volume(target, labels.astype(np.uint8, copy=False), affine)
        if probabilities is not None:
            folder = self.out / PROBABILITIES
            if probabilities.shape[0] == 1:
                write_volume(folder / f"{case}{ending}", probabilities[0], affine)
            else:
                for k in range(1, probabilities.shape[0]):
                    write_volume(folder / f"{case}_class{k}{ending}", probabilities[k], affine)
        return target


__all__ = ["LABEL_VALUES", "PROBABILITY_FORMATS", "PredictionWriter", "mask_for_file"]
