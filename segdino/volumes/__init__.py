"""CT and MRI volumes: NIfTI, MetaImage, NRRD and DICOM reading with geometry, dataset layouts, intensity,
2.5D slicing and reassembly, dataset checks, and a streaming slice dataset.

World coordinates are RAS+ millimetres throughout (see :mod:`segdino.volumes.io`).
nibabel, SimpleITK and pydicom are optional: ``pip install "segdino[volumes]"``.
"""

from .check import VolumeCheckReport, check_volume_dataset, format_report
from .intensity import (
    CT_WINDOWS,
    ct_window,
    normalize_intensity,
    parse_intensity,
    percentile_window,
    read_volume_settings,
    validate_intensity,
    volume_settings,
)
from .io import Volume, read_dicom_series, read_itk, read_nifti, read_volume, write_itk, write_nifti, write_volume
from .layouts import VolumeCase, VolumeCases, find_volume_cases, is_volume_dataset, seeded_split, volume_layout
from .slicing import context_slice, iter_label_slices, iter_slices, label_slice, reassemble, resolve_axis


def __getattr__(name):
    # The slice dataset and volume prediction pull in torch; import them only when asked for.
    if name == "VolumeSliceDataset":
        from .dataset import VolumeSliceDataset

        return VolumeSliceDataset
    if name == "predict_volume":
        from .predict import predict_volume

        return predict_volume
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Volume",
    "read_volume",
    "read_nifti",
    "read_dicom_series",
    "write_nifti",
    "read_itk",
    "write_itk",
    "write_volume",
    "VolumeCase",
    "VolumeCases",
    "find_volume_cases",
    "is_volume_dataset",
    "volume_layout",
    "seeded_split",
    "CT_WINDOWS",
    "ct_window",
    "percentile_window",
    "parse_intensity",
    "validate_intensity",
    "normalize_intensity",
    "volume_settings",
    "read_volume_settings",
    "resolve_axis",
    "context_slice",
    "label_slice",
    "iter_slices",
    "iter_label_slices",
    "reassemble",
    "check_volume_dataset",
    "format_report",
    "VolumeCheckReport",
    "VolumeSliceDataset",
    "predict_volume",
]
