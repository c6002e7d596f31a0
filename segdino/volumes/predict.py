"""Segmenting whole volumes with a 2D SegDINO model, slice by slice, back on the source grid.

:func:`predict_volume` labels one :class:`~segdino.volumes.io.Volume` in memory;
:func:`predict_volume_files` reads NIfTI, MetaImage and NRRD files, DICOM series and nnU-Net
``imagesTs`` folders and writes one label volume per case, in the source geometry (same voxel
grid, same affine) and the source's file format, so a viewer overlays it on the image and world
coordinates agree.

Output layout, as for 2D images (``segdino predict``)::

    masks/CASE.nii.gz                 uint8 labels on the source grid, with the source affine
    probabilities/CASE.nii.gz         with probabilities, binary model: foreground probability
    probabilities/CASE_class<k>.nii.gz  multi-class model: one float32 volume per foreground class k
    overlays/CASE/slice_SSS.png       with overlays: each slice SSS holding a prediction, tinted
    overlays/CASE.png                 with overlays: a montage of those slices, titled and with a legend

``CASE`` is the case name: ``CASE_0000.nii.gz`` (an nnU-Net channel file) gives ``CASE``, as
nnU-Net itself names predictions; any other ``NAME.nii[.gz]`` gives ``NAME``; a DICOM series
folder gives the folder's name. The suffix is the source's (``.nii.gz``, ``.nii``, ``.mha``,
``.nrrd``; a detached ``.mhd``/``.nhdr`` header gives ``.mha``/``.nrrd``, a DICOM series
``.nii.gz``). ``masks/`` is what ``segdino evaluate --predictions`` reads.

The model may be a SegDINO model, its fast wrapper, or any object with a ``.config`` (a
:class:`~segdino.config.ModelConfig` with volume settings) that maps a normalised
(B, 3, H, W) float tensor to (B, K, H, W) logits; a ``.device`` attribute, where present,
says where inputs go (the fast wrapper, an ONNX model).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, SegDINOError
from ..progress import track
from ..inference import check_input_kind
from ..ops import logits_to_labels, logits_to_probabilities, normalize, resize_image
from ..prediction_writer import PredictionWriter
from ..predictor import Predictor
from ..run_files import OVERLAYS
from ..resample import check_spacing
from ..sliding_window import logits_at_spacing
from .intensity import normalize_intensity, read_volume_settings
from .io import Volume, is_volume_path, prediction_ending, read_volume, strip_volume_suffix
from .postprocess import largest_component_classes, postprocess_labels, resolve_min_size
from .slicing import context_slice, reassemble, resolve_axis

log = logging.getLogger("segdino.volumes")

_CHANNEL_RE = re.compile(r"^(.+)_(\d{4})$")


# ---------------------------------------------------------------------------------------------
# One volume in memory


def slice_logits(predictor: Predictor, volume: Volume, settings: dict,
                 tile_overlap: float | None = None) -> tuple[int, Iterator[torch.Tensor]]:
    """The slicing axis, and each slice's (K, H, W) float logits at the slice's own size.

    Slices of ``predictor.batch_size`` at a time, in the model's intensity window and 2.5D
    context, go through ``predictor``. A model trained on patches at a target spacing (``spacing``
    in its volume settings), or any model given ``tile_overlap``, runs by sliding window
    (:func:`segdino.sliding_window.logits_at_spacing`) on slices resampled to that spacing; the
    others see each slice resized to their input size, the logits resized back.
    """
    norm = normalize_intensity(volume.array, settings["intensity"])
    axis = resolve_axis(settings["axis"], volume.affine)
    n, step, dev = norm.shape[axis], predictor.batch_size, predictor.device
    config = predictor.config
    target = settings.get("spacing")

    def slices(start: int) -> torch.Tensor:
        """(m, 3, H, W) float slices in [0, 1] from ``start``, ``context`` neighbours as channels."""
        return torch.stack([torch.from_numpy(np.ascontiguousarray(context_slice(norm, axis, i, settings["context"])))
                            .permute(2, 0, 1) for i in range(start, min(start + step, n))])

    if target is not None or tile_overlap is not None:
        rest = [a for a in range(3) if a != axis]
        src = [float(volume.spacing[a]) for a in rest]
        check_spacing(src, str(volume.path or "volume"))
        overlap = 0.5 if tile_overlap is None else tile_overlap

        def tiled() -> Iterator[torch.Tensor]:
            for start in range(0, n, step):
                yield from logits_at_spacing(predictor, normalize(slices(start), config), src, target, overlap,
                                             step, dev)

        return axis, tiled()

    def resized() -> Iterator[torch.Tensor]:
        for start in range(0, n, step):
            x = slices(start)
            size = tuple(x.shape[-2:])
            if dev.type == "cuda":  # resizing a batch of large slices is faster on the GPU
                x = x.to(dev, non_blocking=True)
            x = normalize(resize_image(x, config.image_size).clamp_(0.0, 1.0), config)
            yield from predictor.logits_at_sizes(x, [size] * x.shape[0])

    return axis, resized()


@torch.inference_mode()
def predict_volume(model: torch.nn.Module, volume: Volume, batch_size: int = 8,
                   device: str | torch.device | None = None, tile_overlap: float | None = None) -> np.ndarray:
    """Label every voxel of ``volume`` with a model trained on its slices.

    The model's ``config.volume`` gives the intensity spec, slice axis and 2.5D context used in
    training. Each slice is resized to the model's input size, its logits resized back to the
    slice's own size (bilinear) and thresholded/argmaxed, as for 2D images. ``batch_size``
    slices go through the model at once.

    Args:
        model: a SegDINO model (or a stand-in, see the module docstring) whose config has
            volume settings.
        volume: the source volume (any orientation; the axis name is resolved through its affine).
        device: where to run a plain module (moved there); default where it already is.
        tile_overlap: share of a tile its neighbours overlap in sliding-window prediction
            (default 0.5 for models trained on patches; given, any model runs by tiles).

    Returns:
        (I, J, K) uint8 labels on the source grid: write them with ``volume.affine``.
    """
    labels, _ = _predict(model, volume, batch_size, device, probabilities=False, tile_overlap=tile_overlap)
    return labels


@torch.inference_mode()
def predict_volume_with_probabilities(model: torch.nn.Module, volume: Volume, batch_size: int = 8,
                                      device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_volume` that also returns the probabilities.

    Returns:
        ``labels`` (I, J, K) uint8 and ``probabilities`` (C, I, J, K) float32: C = 1 (the
        foreground probability, sigmoid) for a binary model, C = K (softmax over all classes,
        background included) for a multi-class one.
    """
    labels, prob = _predict(model, volume, batch_size, device, probabilities=True)
    return labels, prob


def _predict(model, volume: Volume, batch_size: int, device, probabilities: bool,
             tile_overlap: float | None = None):
    predictor = model if isinstance(model, Predictor) else Predictor(model, device, batch_size=batch_size)
    settings = read_volume_settings(getattr(predictor.config, "volume", None))
    predictor.model.eval()
    axis, logits = slice_logits(predictor, volume, settings, tile_overlap)
    maps: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for li in logits:
        maps.append(logits_to_labels(li[None])[0].cpu().numpy())
        if probabilities:
            probs.append(logits_to_probabilities(li[None])[0].float().cpu().numpy())
    labels = reassemble(maps, axis, volume.shape)
    if not probabilities:
        return labels, None
    # (C, H, W) per slice -> (C, I, J, K): the slice axis sits one place later behind C.
    return labels, np.stack(probs, axis=axis + 1).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# Inputs on disk


def _has_dicom_files(folder: Path) -> bool:
    from .layouts import _is_dicom_folder

    return _is_dicom_folder(folder)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def is_volume_input(path: str | os.PathLike) -> bool:
    """True for what :func:`predict_volume_files` reads: a volume file (``.nii``, ``.nii.gz``,
    ``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``), a folder of DICOM files (one series, or one series
    per sub-folder), or a folder of volume files such as nnU-Net's ``imagesTs``. Files are judged
    by name, so a missing ``x.nii.gz`` still counts (and is then reported as missing by the
    volume pipeline)."""
    p = Path(path)
    if is_volume_path(p) and not p.is_dir():
        return True
    if not p.is_dir():
        return False
    entries = _visible(p)
    if any(e.is_file() and is_volume_path(e) for e in entries):
        return True
    return _has_dicom_files(p)


@dataclass(frozen=True)
class _Job:
    source: Path  # what to read: a volume file or a DICOM folder
    case: str  # output name without suffix
    file_channel: int | None = None  # the _XXXX of an nnU-Net channel file
    error: str | None = None


def _channel_by_name(name: str, inputs: list[Path]) -> int:
    """A channel name (e.g. ``T2``) -> its number, from the ``dataset.json`` of an nnU-Net folder
    holding the inputs (``imagesTs/`` sits beside it)."""
    from .layouts import _channel_names, _load_json

    for p in inputs:
        for folder in (p if p.is_dir() else p.parent, (p if p.is_dir() else p.parent).parent):
            meta_path = folder / "dataset.json"
            if meta_path.is_file():
                meta = _load_json(meta_path)
                names = _channel_names(meta) if isinstance(meta, dict) else None
                low = [n.lower() for n in names or []]
                if name.strip().lower() in low:
                    return low.index(name.strip().lower())
                raise ConfigError(f"{meta_path}: no channel named {name!r}"
                                  + (f"; channels: {', '.join(f'{i} {n}' for i, n in enumerate(names))}" if names else ""))
    raise ConfigError(f"--channel {name!r}: channel names are read from an nnU-Net dataset.json beside the "
                      "inputs, and none was found; give the channel number instead")


def _channel_index(channel: int | str | None, inputs: list[Path] = ()) -> int | None:
    if channel is None:
        return None
    if isinstance(channel, str):
        if not channel.strip().isdigit():
            return _channel_by_name(channel, list(inputs))
        return int(channel)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or channel < 0:
        raise ConfigError(f"--channel must be a channel number 0, 1, ..., got {channel!r}")
    return int(channel)


def _file_job(path: Path) -> _Job:
    stem = strip_volume_suffix(path.name)
    m = _CHANNEL_RE.match(stem)
    if m:
        return _Job(path, m.group(1), int(m.group(2)))
    return _Job(path, stem)


def _folder_jobs(folder: Path, channel: int | None) -> list[_Job]:
    entries = _visible(folder)
    niftis = [e for e in entries if e.is_file() and is_volume_path(e)]
    files = [e for e in entries if e.is_file()]
    jobs: list[_Job] = []
    if niftis:
        matches = [_CHANNEL_RE.match(strip_volume_suffix(p.name)) for p in niftis]
        if all(matches):
            # nnU-Net naming: CASE_XXXX, one file per channel; the channel is chosen by file name.
            groups: dict[str, dict[int, Path]] = {}
            for p, m in zip(niftis, matches):
                groups.setdefault(m.group(1), {})[int(m.group(2))] = p
            for case, chans in sorted(groups.items()):
                want = channel if channel is not None else (0 if set(chans) == {0} else None)
                if want is None:
                    listed = ", ".join(f"_{c:04d}" for c in sorted(chans))
                    jobs.append(_Job(chans[min(chans)], case, None,
                                     f"case {case} has channel files {listed}; pick one with --channel"))
                elif want not in chans:
                    listed = ", ".join(f"_{c:04d}" for c in sorted(chans))
                    jobs.append(_Job(chans[min(chans)], case, None,
                                     f"case {case} has no channel file _{want:04d} (found {listed})"))
                else:
                    jobs.append(_Job(chans[want], case, want))
        else:
            jobs += [_Job(p, strip_volume_suffix(p.name)) for p in niftis]
    elif files and _has_dicom_files(folder):
        return [_Job(folder, folder.name)]
    for sub in (e for e in entries if e.is_dir()):
        if _has_dicom_files(sub) and any(f.is_file() for f in _visible(sub)):
            jobs.append(_Job(sub, sub.name))
    return jobs


def _expand(inputs, channel: int | None) -> list[_Job]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    jobs: list[_Job] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _folder_jobs(p, channel)
            if not found:
                jobs.append(_Job(p, p.name, None, f"{p}: no volumes found (expected .nii/.nii.gz, "
                                                    ".mha, .mhd or .nrrd files or DICOM series)"))
            jobs += found
        elif not p.exists():
            jobs.append(_Job(p, p.name, None, f"{p}: no such file or folder"))
        elif is_volume_path(p):
            jobs.append(_file_job(p))
        else:
            jobs.append(_Job(p, p.name, None, f"{p}: not a volume; expected .nii, .nii.gz, .mha, .mhd, .nrrd, "
                                                ".nhdr or a folder with one DICOM series"))
    return jobs


def _read(job: _Job, channel: int | None) -> Volume:
    if job.file_channel is not None and channel in (None, job.file_channel):
        # An nnU-Net channel file holds one channel: its number is in the name.
        return read_volume(job.source, None)
    return read_volume(job.source, channel)


def predict_volume_files(model, inputs: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, *,
                         probabilities: bool = False, largest_component: bool | Iterable[int] = False,
                         batch_size: int = 8, device: str | torch.device | None = None,
                         channel: int | str | None = None, overlays: bool = False,
                         tile_overlap: float | None = None, min_size_mm3: float | None = None,
                         progress: bool | str = False) -> list[tuple[str, str | None, str | None]]:
    """Segment volume files and write each label volume in its source geometry and format.

    Args:
        model: see the module docstring; its ``config.volume`` gives intensity, axis and context.
        inputs: NIfTI files, DICOM series folders, or folders of NIfTI files (nnU-Net ``imagesTs``:
            ``CASE_XXXX`` channel files are grouped by case), one or several.
        out: the output folder (created); layout and names as in the module docstring.
        probabilities: also write float32 probability volumes under ``out/probabilities/``.
        largest_component: keep only the largest connected component (26-connected) of every
            foreground class (True) or of the listed class ids; probabilities are left as the
            model gave them.
        batch_size: slices per forward pass.
        device: where to run a plain module; a model with ``.device`` stays on it.
        channel: the channel to segment in multi-channel data: the ``_XXXX`` file of an nnU-Net
            case or the channel of a 4D NIfTI file; a name (``T2``) is looked up in the
            ``dataset.json`` of the nnU-Net folder holding the inputs. Cases with several channels
            need it.
        overlays: also write ``out/overlays/CASE/slice_SSS.png`` for every slice holding a
            prediction (radiological view, the model's intensity window, the 2D overlays' class
            colours) and a montage ``out/overlays/CASE.png``
            (:func:`segdino.volumes.figures.write_volume_overlays`).
        tile_overlap: see :func:`predict_volume`.
        min_size_mm3: remove predicted components smaller than this volume (mm^3) from every
            foreground class (:func:`segdino.volumes.postprocess.remove_small_components`); None:
            the size the model's training chose, if any; 0: remove nothing.
        progress: show progress per volume: True a bar on a terminal (plain lines elsewhere),
            ``"quiet"`` plain lines only.

    Returns:
        one ``(input, written label path or None, error message or None)`` per volume, in input
        order. A volume that cannot be read (or written) is reported there and the others go on.

    Raises:
        ConfigError when the model has no volume settings or an option is invalid: nothing
        could be segmented.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    check_input_kind(model, "volume", inputs[0] if inputs else None)
    settings = read_volume_settings(getattr(model.config, "volume", None))  # fail before any file is read
    inputs = [Path(p) for p in inputs]
    ch = _channel_index(channel, inputs)
    num_classes = int(model.config.num_classes)
    largest_component_classes(largest_component, num_classes)
    min_size_mm3, size_source = resolve_min_size(min_size_mm3, settings)
    if min_size_mm3 and size_source != "--min-size":
        log.info("removing predicted components under %g mm^3 (%s; --min-size 0 keeps them)", min_size_mm3,
                 size_source)
    predictor = Predictor(model, device, batch_size=batch_size)
    out = Path(out)
    writer = PredictionWriter(out, num_classes)
    jobs = _expand(inputs, ch)
    results: list[tuple[str, str | None, str | None]] = []
    written: dict[Path, Path] = {}
    for job in track(jobs, len(jobs), "predict", "volume", show=progress):
        source = str(job.source)
        target = writer.volume_mask_path(job.case, prediction_ending(job.source))
        error = job.error
        if error is None and target in written:
            error = f"{target.name} was already written from {written[target]}; rename one of the inputs"
        if error is None:
            try:
                volume = _read(job, ch)
                with torch.inference_mode():
                    labels, prob = _predict(predictor, volume, batch_size, None, probabilities, tile_overlap)
                labels = postprocess_labels(labels, largest_component, num_classes, min_size_mm3, volume.spacing)
                writer.write_volume(job.case, labels, volume.affine, prob, prediction_ending(job.source))
                if overlays:
                    _write_overlays(out / OVERLAYS, job.case, model, volume, labels)
            except SegDINOError as e:  # unreadable, wrong channel, unwritable: this volume only
                error = str(e)
        if error is not None:
            results.append((source, None, error))
            log.warning("skipped %s: %s", source, error)
            continue
        written[target] = job.source
        results.append((source, str(target), None))
        log.info("%s -> %s", source, target)
    return results


def class_names_of(model) -> dict[int, str]:
    """Foreground class id -> name, from the model's config (``class k`` where it names none)."""
    k = int(model.config.num_classes)
    names = getattr(model.config, "class_names", None) or ()
    ids = [1] if k == 1 else list(range(1, k))
    # A binary model's names are (background, foreground) when given.
    return {c: str(names[c]) if c < len(names) else ("foreground" if k == 1 else f"class {c}") for c in ids}


def _write_overlays(folder: Path, case: str, model, volume: Volume, labels: np.ndarray) -> list[Path]:
    from .figures import display_image, write_volume_overlays

    settings = read_volume_settings(getattr(model.config, "volume", None))
    axis = resolve_axis(settings["axis"], volume.affine)
    return write_volume_overlays(folder, case, display_image(volume, settings["intensity"], None), labels,
                                 volume.affine, axis, volume.spacing, class_names_of(model))
