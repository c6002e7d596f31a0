"""Volume and nnU-Net layouts in the dataset registries of :mod:`segdino.data`.

:func:`register` adds, in front of the 2D layouts:

- ``nnunet-2d``: nnU-Net raw folders of 2D images. Their cases become ordinary 2D
  :class:`segdino.data.layouts.Pair` objects (image ``CASE_0000.png``, mask ``CASE.png``), so
  :class:`segdino.data.dataset.SegmentationDataset` trains on them; the split rule reads
  ``splits_final.json`` folds; the check is the 2D one, with the class count taken from
  ``dataset.json`` so label values it does not name are reported.
- the ``volume`` file format (NIfTI, MetaImage, NRRD, DICOM series) in the reader registry.
- ``volumes`` (kind ``3d``): nnU-Net raw, Decathlon and ``images/`` + ``labels/`` volume
  folders; ``segdino data check`` on them runs :func:`segdino.volumes.check_volume_dataset`
  and fills the common report. Their pairs list is empty: volumes train through
  :class:`segdino.volumes.dataset.VolumeSliceDataset`.

Registering twice is harmless.
"""

from __future__ import annotations

from pathlib import Path

from ..data.check import check_pairs_2d, register_checker
from ..data.layouts import Layout, LayoutScan, Pair, register_layout
from ..data.readers import Format, register_format
from ..data.splits import Splits, register_split_rule
from ..errors import DataError
from .check import LAYOUT_NAMES, check_volume_dataset, shape_text
from .io import VOLUME_SUFFIXES, read_array, read_header, write_array
from .layouts import _resolve_splits, scan_volume_cases, volume_layout

NNUNET_2D_DESCRIPTION = "nnU-Net raw of 2D images (imagesTr/CASE_0000.png, labelsTr/CASE.png, dataset.json)"
VOLUMES_DESCRIPTION = "3D volumes: nnU-Net raw, Decathlon task, or images/ + labels/ of NIfTI, MetaImage, NRRD or DICOM"


def nnunet_2d_pairs(root, channel: int | str | None = None):
    """The labelled cases of an nnU-Net 2D folder as 2D pairs, with unlabelled images and problems.

    Returns:
        ``(pairs, unlabelled_images, problems)``; each pair has ``case_id`` = the nnU-Net case,
        ``masks`` = [its label file], ``subset`` = ``train`` (imagesTr) or ``test`` (imagesTs).
    """
    found = scan_volume_cases(root, channel)
    if found.is_3d:
        raise DataError(f"{root}: holds volumes, not 2D images")
    pairs = [Pair(c.case_id, c.image, [c.label], group=c.case_id, layout="nnunet-2d", subset=c.subset)
             for c in found.cases if c.label is not None]
    return pairs, [c.image for c in found.cases if c.label is None], list(found.issues)


def _scan_nnunet_2d(root: Path):
    pairs, _, problems = nnunet_2d_pairs(root)
    return LayoutScan(root, "nnunet-2d", pairs, problems, kind="nnunet-2d")


def _split_nnunet_2d(root, pairs, seed: int, fold: int):
    if root is None:
        return None
    root = Path(root)
    found = scan_volume_cases(root)
    wanted = {p.case_id for p in pairs}
    cases = [c for c in found.cases if c.case_id in wanted]
    issues: list[str] = []
    splits, source = _resolve_splits(root, cases, fold, seed, issues, nnunet=True)
    if issues:
        raise DataError("; ".join(issues))
    return Splits(splits["train"], splits["val"], splits["test"], source=source)


def _check_nnunet_2d(scan, report, opts):
    found = scan_volume_cases(scan.root)
    unlabelled = [c.case_id for c in found.cases if c.label is None]
    if unlabelled:
        report.notes.append(f"{len(unlabelled)} image(s) without labels (not in any split), e.g. "
                            + ", ".join(unlabelled[:5]))
    if opts.num_classes is None:
        if found.labels:
            values = sorted(found.labels)
            if values == list(range(len(values))) and len(values) > 2:
                opts.num_classes = len(values)
                report.notes.append(f"{len(values)} classes from dataset.json: "
                                    + ", ".join(f"{v} {n}" for v, n in found.labels.items()))
            elif values == [0, 1]:
                # Binary per dataset.json; checking as 2 index classes reports stray values.
                opts.num_classes = 2
                report.notes.append("binary task per dataset.json (labels 0, 1); masks checked as index images")
    return check_pairs_2d(scan, report, opts)


def _scan_volumes(root: Path):
    # Everything is read by the checker, which knows --channel; nothing here for the 2D pipeline.
    return LayoutScan(root, volume_layout(root) or "volumes", [], kind="3d")


def _check_volumes(scan, report, opts):
    vr = check_volume_dataset(scan.root, channel=getattr(opts, "channel", None), fold=opts.fold, seed=opts.seed,
                              progress=getattr(opts, "progress", False))
    s = vr.summary
    report.layout = vr.layout
    report.layout_description = LAYOUT_NAMES.get(vr.layout, VOLUMES_DESCRIPTION)
    report.unit = "volumes"
    report.label_names = dict(vr.label_names) if vr.label_names else None
    report.pairs = s["volumes"]
    report.problems.extend(vr.problems)
    report.notes.extend(vr.notes)
    report.split_source = vr.split_source
    report.split_sizes = dict(vr.splits)
    report.empty_masks = list(vr.empty_labels)
    values = sorted(s["label_voxels"])
    if vr.label_names:
        k = max(vr.label_names) + 1
        report.num_classes = 1 if k == 2 else k
        report.task_inferred = False
    elif values:
        k = max(values) + 1
        report.num_classes = 1 if k <= 2 else k
        report.task_inferred = True
    for v, n in s["label_volumes"].items():
        report.class_counts[v] += n
    if vr.channel_names:
        report.extra["channels"] = ", ".join(f"{i} {n}" for i, n in enumerate(vr.channel_names)) + (
            f"; using {vr.channel}" if vr.channel is not None else "")
    if s["shapes"]:
        report.extra["sizes"] = shape_text(s)
    if s["label_voxels"]:
        names = vr.label_names or {}
        report.extra["voxels"] = ", ".join(f"{v}{' ' + names[v] if v in names else ''} {n}"
                                           for v, n in s["label_voxels"].items())
    if s["read"]:
        report.extra["geometry"] = (f"{len(vr.geometry_mismatches)} label(s) off their image's grid"
                                    if vr.geometry_mismatches else "every label on its image's grid")
    return report


def register() -> None:
    """Add the nnU-Net 2D and volume layouts, their split rule and checkers, and the volume file
    formats (:mod:`segdino.data.readers`) to :mod:`segdino.data`."""
    register_format(Format("volume", VOLUME_SUFFIXES, read_array, read_header, write_array, folders=True))

    register_layout(Layout("nnunet-2d", NNUNET_2D_DESCRIPTION, lambda r: volume_layout(r) == "nnunet-2d",
                           _scan_nnunet_2d, kind="nnunet-2d"), first=True)
    register_layout(Layout("volumes", VOLUMES_DESCRIPTION,
                           lambda r: volume_layout(r) not in (None, "nnunet-2d"), _scan_volumes, kind="3d"),
                    first=True)
    register_split_rule("nnunet-2d", _split_nnunet_2d, folds=True)
    register_checker("nnunet-2d", _check_nnunet_2d)
    register_checker("3d", _check_volumes)


__all__ = ["register", "nnunet_2d_pairs"]
