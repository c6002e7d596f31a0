"""Volume dataset layouts: nnU-Net raw, Decathlon task folders, plain ``images/`` + ``labels/``.

Recognised layouts (:func:`volume_layout`):

- ``nnunet``: ``imagesTr/{case}_{XXXX}{ending}`` (one file per channel), ``labelsTr/{case}{ending}``,
  ``dataset.json`` with ``channel_names`` (v1: ``modality``), ``labels`` and ``file_ending``;
  optional ``imagesTs/`` + ``labelsTs/`` and ``splits_final.json`` (a list of folds
  ``{"train": [...], "val": [...]}``).
- ``nnunet-2d``: the same with 2D files (``.png``, ``.bmp``, ``.tif``, ``.jpg``); labels are
  index images. Read these with the 2D pipeline: :meth:`VolumeCases.pairs` gives
  ``(case_id, image_path, label_path)`` triples.
- ``decathlon``: ``dataset.json`` whose ``training`` list names ``{"image", "label"}`` files and
  whose ``test`` list names unlabelled images; multi-modal images are 4D files (one channel per
  ``modality`` entry, chosen with ``channel``).
- ``images-labels``: ``images/`` of volume files (``.nii``/``.nii.gz``, ``.mha``, ``.mhd``,
  ``.nrrd``, ``.nhdr``) or one DICOM series per sub-folder, and ``labels/`` (or ``masks/``) of
  label volumes with the same stem (or the stem plus ``_seg``, ``_label``, ``_mask``, ...).

nnU-Net's ``file_ending`` may be any of the volume suffixes (``.nrrd`` and ``.mha`` included).

Splits, first that applies: ``splits.json`` in the folder (``{"train", "val", "test"}`` lists of
case ids); nnU-Net ``splits_final.json`` fold ``fold`` with test = labelled ``imagesTs``
cases; labelled test cases otherwise present: val = 10% of the training cases (seeded), test =
those; otherwise a seeded 80/10/10 split by case. The seeded rules are the 2D pipeline's
(:mod:`segdino.data.splits`); a ``fold`` other than 0 needs a ``splits_final.json``. Test images without labels (Decathlon's
``test`` list, ``imagesTs`` without ``labelsTs``) stay in ``cases`` with ``label=None`` and in
no split: they can be segmented but not scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.cases import Case
from ..data.layouts import NNUNET_CHANNEL_RE
from ..data.splits import resolve_case_splits
from ..data.splits import seeded_split  # noqa: F401  (the one seeded rule, importable here as before)
from ..errors import ConfigError, DataError
from ..fileio import read_json
from .dataset_json import channel_names as _channel_names
from .dataset_json import count_notes as _count_notes
from .dataset_json import label_names as _label_names
from .dataset_json import need_channel_error as _need_channel_error
from .dataset_json import resolve_channel as _resolve_channel
from .io import VOLUME_SUFFIXES, is_volume_path, strip_volume_suffix

IMAGE_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_SUFFIXES = ("", "_seg", "_label", "_labels", "_mask", "_segmentation", "_gt")
_CHANNEL_RE = NNUNET_CHANNEL_RE


@dataclass(frozen=True)
class VolumeCase(Case):
    """One case of a volume dataset: the volume :class:`~segdino.data.cases.Case`.

    ``image`` is what to read (a NIfTI file, a 2D file, or a DICOM folder) and ``channel`` the
    channel to take inside a 4D file (None for 3D files). ``channel_files`` lists every channel
    file of an nnU-Net case (``_0000``, ``_0001``, ...). ``subset`` is ``train`` (imagesTr /
    the ``training`` list / plain layout) or ``test`` (imagesTs / the ``test`` list).
    """

    case_id: str
    image: Path
    label: Path | None
    channel: int | None = None
    subset: str = "train"
    channel_files: tuple[Path, ...] = ()

    @property
    def image_files(self) -> tuple[Path, ...]:
        return self.channel_files or (self.image,)

    @property
    def label_files(self) -> tuple[Path, ...]:
        return (self.label,) if self.label is not None else ()


@dataclass
class VolumeCases:
    """A dataset's cases and splits (see the module docstring for the rules)."""

    root: Path
    layout: str
    cases: list[VolumeCase]
    splits: dict[str, list[str]]
    split_source: str
    labels: dict[int, str] | None = None  # label value -> name, from dataset.json
    channel_names: list[str] | None = None
    channel: int | None = None
    file_ending: str | None = None
    issues: list[str] = field(default_factory=list)  # layout problems, each naming files
    notes: list[str] = field(default_factory=list)  # findings that do not stop reading (counts that disagree)

    @property
    def is_3d(self) -> bool:
        return self.layout != "nnunet-2d"

    def case(self, case_id: str) -> VolumeCase:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise DataError(f"{self.root}: no case {case_id!r}")

    def split_cases(self, split: str) -> list[VolumeCase]:
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(self.splits)}")
        by_id = {c.case_id: c for c in self.cases}
        return [by_id[i] for i in self.splits[split]]

    @property
    def unlabelled(self) -> list[VolumeCase]:
        return [c for c in self.cases if c.label is None]

    def pairs(self, split: str | None = None) -> list[tuple[str, Path, Path | None]]:
        """``(case_id, image_path, label_path)`` per case of ``split`` (all cases when None)."""
        cases = self.cases if split is None else self.split_cases(split)
        return [(c.case_id, c.image, c.label) for c in cases]


# --- detection ----------------------------------------------------------------------------


def _visible(folder: Path) -> list[Path]:
    # Decathlon archives carry macOS "._name" companions: never data. The voxel files of
    # detached headers (CASE.mhd + CASE.raw) are read through their header, not listed.
    if not folder.is_dir():
        return []
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    headers = {strip_volume_suffix(p.name) for p in entries if p.name.lower().endswith((".mhd", ".nhdr"))}
    return [p for p in entries
            if not (headers and p.suffix.lower() in DETACHED_DATA_SUFFIXES and _data_stem(p.name) in headers)]


DETACHED_DATA_SUFFIXES = (".raw", ".zraw", ".gz", ".bz2", ".img")


def _data_stem(name: str) -> str:
    low = name.lower()
    for suf in (".raw.gz", ".raw.bz2", ".raw", ".zraw", ".img"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def _load_json(path: Path) -> Any:
    return read_json(path, DataError)


def _ending_of(name: str) -> str:
    low = name.lower()
    for suf in VOLUME_SUFFIXES + IMAGE_2D_ENDINGS:
        if low.endswith(suf):
            return suf
    return Path(name).suffix.lower()


def _labels_folder(root: Path) -> Path | None:
    for name in ("labels", "masks"):
        if (root / name).is_dir():
            return root / name
    return None


def volume_layout(root: str | os.PathLike) -> str | None:
    """``nnunet``, ``nnunet-2d``, ``decathlon``, ``images-labels`` or None (not a layout of ours)."""
    root = Path(root)
    ds = root / "dataset.json"
    if not ds.is_file() and (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        # nnU-Net raw without its dataset.json: recognised, so that reading it says what is missing.
        return "nnunet-2d" if _nnunet_ending(root, {}) in IMAGE_2D_ENDINGS else "nnunet"
    if ds.is_file() and (root / "imagesTr").is_dir():
        try:
            meta = _load_json(ds)
        except DataError:
            meta = {}
        if isinstance(meta, dict) and _is_decathlon(root, meta):
            return "decathlon"
        ending = _nnunet_ending(root, meta if isinstance(meta, dict) else {})
        return "nnunet-2d" if ending in IMAGE_2D_ENDINGS else "nnunet"
    labels = _labels_folder(root)
    if (root / "images").is_dir() and labels is not None:
        entries = _visible(root / "images")
        if any(is_volume_path(p) for p in entries) or any(_is_dicom_folder(p) for p in entries if p.is_dir()):
            return "images-labels"
    return None


def _is_dicom_folder(folder: Path, probe: int = 8) -> bool:
    """A folder whose first files (here or one level down) carry the DICOM 'DICM' marker."""
    files = [p for p in _visible(folder) if p.is_file()][:probe]
    if not files:
        files = [q for d in _visible(folder) if d.is_dir() for q in _visible(d) if q.is_file()][:probe]
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def is_volume_dataset(root: str | os.PathLike) -> bool:
    """True when ``root`` is a dataset of 3D volumes in one of the layouts above."""
    layout = volume_layout(root)
    return layout is not None and layout != "nnunet-2d"


def _is_decathlon(root: Path, meta: dict) -> bool:
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        return False
    first = training[0]
    image = first.get("image") if isinstance(first, dict) else None
    # nnU-Net v1 copies the Decathlon list but renames files to {case}_0000: the listed path
    # exists only in a true Decathlon folder.
    return isinstance(image, str) and (root / image).exists()


def _nnunet_ending(root: Path, meta: dict) -> str:
    ending = meta.get("file_ending")
    if isinstance(ending, str) and ending:
        return ending.lower()
    for p in _visible(root / "imagesTr"):
        if p.is_file():
            return _ending_of(p.name)
    return ".nii.gz"


# --- splits -------------------------------------------------------------------------------


def _id_aliases(case: VolumeCase) -> set[str]:
    names = {case.case_id, strip_volume_suffix(case.image.name)}
    for f in case.channel_files:
        names.add(strip_volume_suffix(f.name))
    return names


def _resolve_splits(root: Path, cases: list[VolumeCase], fold: int, seed: int,
                    issues: list[str], nnunet: bool) -> tuple[dict[str, list[str]], str]:
    # The rules live in segdino.data.splits, shared with the 2D pipeline; here only what a volume
    # case may be called in a split file (its id, or a file name with or without the suffix).
    alias = {a: c.case_id for c in cases for a in _id_aliases(c)}
    splits = resolve_case_splits(
        root, [c.case_id for c in cases if c.subset == "train" and c.label is not None],
        [c.case_id for c in cases if c.subset == "test" and c.label is not None],
        lambda e: alias.get(e) or alias.get(strip_volume_suffix(e)), fold, seed, nnunet, issues)
    return splits, splits.source


# --- layouts ------------------------------------------------------------------------------


def _nnunet_cases(root: Path, meta: dict, channel: int | None, ending: str,
                  names: list[str] | None, issues: list[str]) -> list[VolumeCase]:
    cases: list[VolumeCase] = []
    for subset, img_dir, lab_dir in (("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        groups: dict[str, dict[int, Path]] = {}
        for p in _visible(root / img_dir):
            if not p.name.lower().endswith(ending):
                issues.append(f"{p}: not a {ending} file; nnU-Net images are named CASE_XXXX{ending}")
                continue
            m = _CHANNEL_RE.match(p.name[: -len(ending)])
            if not m:
                issues.append(f"{p}: no _XXXX channel suffix; nnU-Net images are named CASE_0000{ending}")
                continue
            groups.setdefault(m.group(1), {})[int(m.group(2))] = p
        labels = {p.name[: -len(ending)]: p for p in _visible(root / lab_dir) if p.name.lower().endswith(ending)}
        n_expected = len(names) if names else None
        for cid, chans in sorted(groups.items()):
            files = tuple(chans[k] for k in sorted(chans))
            # A 2D natural image keeps R, G, B in one _0000 file while channel_names lists three.
            single_file = set(chans) == {0}
            if not single_file and n_expected is not None and sorted(chans) != list(range(n_expected)):
                issues.append(f"{root / img_dir}: case {cid} has channel files {sorted(chans)}, "
                              f"dataset.json lists {n_expected} channels")
            if single_file:
                image = chans[0]
            elif channel is None:
                raise _need_channel_error(root / "dataset.json", names or [f"channel {k}" for k in sorted(chans)])
            elif channel not in chans:
                issues.append(f"{root / img_dir}: case {cid} has no channel file _{channel:04d}{ending}")
                continue
            else:
                image = chans[channel]
            label = labels.pop(cid, None)
            if label is None and subset == "train":
                issues.append(f"{root / lab_dir / (cid + ending)}: label missing for {files[0].name}")
            cases.append(VolumeCase(cid, image, label, None, subset, files))
        for cid, p in sorted(labels.items()):
            issues.append(f"{p}: label without an image in {img_dir}")
    return cases


def _decathlon_cases(root: Path, meta: dict, channel: int | None, names: list[str] | None,
                     issues: list[str]) -> list[VolumeCase]:
    ds = root / "dataset.json"
    if names and len(names) > 1 and channel is None:
        raise _need_channel_error(ds, names)
    cases: list[VolumeCase] = []
    seen: set[str] = set()
    for entry in meta.get("training", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            issues.append(f"{ds}: training entry {entry!r} lacks an 'image' path")
            continue
        image = root / entry["image"]
        label = root / entry["label"] if isinstance(entry.get("label"), str) else None
        cid = strip_volume_suffix(image.name)
        if not image.exists():
            issues.append(f"{image}: listed in dataset.json 'training' but missing")
            continue
        if label is None or not label.exists():
            issues.append(f"{label or ds}: label of {image.name} missing")
            label = None
        seen.add(cid)
        cases.append(VolumeCase(cid, image, label, channel, "train", (image,)))
    for entry in meta.get("test", []):
        rel = entry.get("image") if isinstance(entry, dict) else entry
        if not isinstance(rel, str):
            continue
        image = root / rel
        if not image.exists():
            issues.append(f"{image}: listed in dataset.json 'test' but missing")
            continue
        cid = strip_volume_suffix(image.name)
        label = root / "labelsTs" / image.name
        cases.append(VolumeCase(cid, image, label if label.exists() else None, channel, "test", (image,)))
    listed = {c.image.name for c in cases}
    for p in _visible(root / "imagesTr"):
        if p.name not in listed and is_volume_path(p):
            issues.append(f"{p}: in imagesTr but not listed in dataset.json 'training'")
    return cases


def _plain_cases(root: Path, channel: int | None, issues: list[str]) -> list[VolumeCase]:
    lab_dir = _labels_folder(root)
    labels = {strip_volume_suffix(p.name): p for p in _visible(lab_dir) if is_volume_path(p)}
    used: set[str] = set()
    cases = []
    for p in _visible(root / "images"):
        if not (is_volume_path(p) or (p.is_dir() and _is_dicom_folder(p))):
            issues.append(f"{p}: not a volume (.nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr or a folder of DICOM files); "
                          "ignored")
            continue
        cid = strip_volume_suffix(p.name) if p.is_file() else p.name
        label = None
        for suf in LABEL_SUFFIXES:
            if cid + suf in labels:
                label = labels[cid + suf]
                used.add(cid + suf)
                break
        if label is None:
            issues.append(f"{p}: no label volume in {lab_dir} (looked for {cid}{{,{','.join(LABEL_SUFFIXES[1:])}}} "
                          "with a volume suffix)")
        cases.append(VolumeCase(cid, p, label, channel, "train", (p,)))
    for stem, p in sorted(labels.items()):
        if stem not in used:
            issues.append(f"{p}: label without an image in {root / 'images'}")
    return cases


def scan_volume_cases(root: str | os.PathLike, channel: int | str | None = None) -> VolumeCases:
    """The cases of a dataset folder, without splits (``splits`` empty); see :func:`find_volume_cases`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    layout = volume_layout(root)
    if layout is None:
        raise DataError(
            f"{root}: not a volume dataset; expected nnU-Net raw (imagesTr/, labelsTr/, dataset.json), "
            "a Decathlon task folder, or images/ + labels/ of .nii/.nii.gz, .mha, .mhd or .nrrd files"
        )
    issues: list[str] = []
    meta: dict = {}
    if layout != "images-labels":
        if not (root / "dataset.json").is_file():
            raise DataError(f"{root / 'dataset.json'}: missing; an nnU-Net raw folder (imagesTr/, labelsTr/) needs "
                            "a dataset.json naming channel_names, labels, numTraining and file_ending")
        loaded = _load_json(root / "dataset.json")
        if not isinstance(loaded, dict):
            raise DataError(f"{root / 'dataset.json'}: expected a JSON object")
        meta = loaded
    names = _channel_names(meta) if meta else None
    label_names = _label_names(meta, root / "dataset.json") if meta else None
    ch = _resolve_channel(channel, names, root / "dataset.json" if meta else root)
    ending = None
    if layout in ("nnunet", "nnunet-2d"):
        ending = _nnunet_ending(root, meta)
        cases = _nnunet_cases(root, meta, ch, ending, names, issues)
    elif layout == "decathlon":
        cases = _decathlon_cases(root, meta, ch, names, issues)
    else:
        cases = _plain_cases(root, ch, issues)
    found = VolumeCases(root, layout, cases, {}, "", label_names, names, ch, ending, issues)
    found.notes.extend(_count_notes(root, meta, cases, layout))
    return found


def resolve_volume_splits(found: VolumeCases, fold: int = 0, seed: int = 0) -> VolumeCases:
    """Fill ``found.splits`` and ``found.split_source`` by the rules of the module docstring."""
    found.splits, found.split_source = _resolve_splits(
        found.root, found.cases, fold, seed, found.issues, nnunet=found.layout.startswith("nnunet"))
    return found


def find_volume_cases(root: str | os.PathLike, fold: int = 0, channel: int | str | None = None,
                      seed: int = 0) -> VolumeCases:
    """Find the cases and splits of a volume dataset (or an nnU-Net 2D dataset).

    Args:
        root: the dataset folder.
        fold: the nnU-Net fold of ``splits_final.json``.
        channel: the channel (index, or name from dataset.json) for multi-modal data; required
            when cases have several channels.
        seed: the seed of the by-case split when no split file applies.

    Returns:
        :class:`VolumeCases`; layout problems that do not stop reading (missing labels, stray
        files) are in its ``issues``.

    Raises:
        DataError: not a recognised layout, unreadable dataset.json, several channels and no
            ``channel``. ConfigError: a bad ``fold`` or ``channel``.
    """
    return resolve_volume_splits(scan_volume_cases(root, channel), fold, seed)
