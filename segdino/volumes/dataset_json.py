"""What a dataset's ``dataset.json`` (nnU-Net, Decathlon) says: label names, channel names, counts.

docs/FORMATS.md describes the file; :mod:`segdino.volumes.layouts` reads the folders it sits in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError


def label_names(meta: dict, path: Path) -> dict[int, str] | None:
    labels = meta.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, dict):
        raise DataError(f"{path}: 'labels' must be an object, found {type(labels).__name__}")
    out: dict[int, str] = {}
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels):  # Decathlon / nnU-Net v1: {"0": "background"}
            for k, v in labels.items():
                out[int(k)] = str(v)
        else:  # nnU-Net v2: {"background": 0, "pancreas": 1}
            regions = {str(name): v for name, v in labels.items() if isinstance(v, (list, tuple))}
            if regions:
                raise regions_error(path, regions)
            for name, v in labels.items():
                out[int(v)] = str(name)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' must map names to integer values, found {labels!r}") from None
    return dict(sorted(out.items()))


def regions_error(path: Path, regions: dict[str, Any]) -> DataError:
    """nnU-Net's region-based labels (overlapping unions of label values, e.g. BraTS) are refused:
    collapsing a region to one of its values would silently train another task."""
    listed = "; ".join(f"{name} = {list(v)}" for name, v in regions.items())
    return DataError(
        f"{path}: 'labels' defines {len(regions)} region(s), nnU-Net's region-based labels ({listed}); "
        "SegDINO trains one class per label value (binary, or classes 0..K-1 with a softmax), not "
        "overlapping regions: list each label value once under its own name "
        '(e.g. {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}) and drop regions_class_order'
    )


def channel_names(meta: dict) -> list[str] | None:
    names = meta.get("channel_names", meta.get("modality"))
    if not isinstance(names, dict):
        return None
    try:
        return [str(v) for _, v in sorted(names.items(), key=lambda kv: int(kv[0]))]
    except ValueError:
        return [str(v) for v in names.values()]


def resolve_channel(channel: int | str | None, names: list[str] | None, where: Path) -> int | None:
    if channel is None:
        return None
    if isinstance(channel, str) and not channel.strip().lstrip("-").isdigit():
        low = [n.lower() for n in (names or [])]
        if channel.lower() not in low:
            raise ConfigError(
                f"{where}: --channel {channel!r} is not a channel name"
                + (f"; channels: {', '.join(f'{i} {n}' for i, n in enumerate(names))}" if names else "")
            )
        return low.index(channel.lower())
    c = int(channel)
    if c < 0 or (names is not None and c >= len(names)):
        raise ConfigError(f"{where}: --channel {c} is out of range" + (f" 0..{len(names) - 1}" if names else ""))
    return c


def need_channel_error(where: Path, names: list[str]) -> DataError:
    listed = ", ".join(f"{i} {n}" for i, n in enumerate(names))
    return DataError(f"{where}: {len(names)} channels (modalities: {listed}); pick one with --channel")


def count_notes(root: Path, meta: dict, cases: list, layout: str) -> list[str]:
    """dataset.json's numTraining against the training cases found (nnU-Net refuses a mismatch;
    reading here takes the files that are there, so it is a note, not a problem)."""
    declared = meta.get("numTraining") if meta else None
    if layout == "images-labels" or declared is None:
        return []
    n = sum(c.subset == "train" for c in cases)
    folder = "imagesTr/" if layout.startswith("nnunet") else "the training list"
    if not isinstance(declared, int) or isinstance(declared, bool):
        return [f"{root / 'dataset.json'}: numTraining is {declared!r}, not a number of cases"]
    if declared != n:
        return [f"{root / 'dataset.json'}: numTraining is {declared} but {folder} holds {n} training case(s); "
                "nnU-Net refuses such a folder (set numTraining to the number of training cases)"]
    return []
