"""Intensity handling of volumes: CT windows and MRI percentiles, mapped to float [0, 1].

A spec is a small JSON-serialisable dict, saved in ``ModelConfig.volume["intensity"]`` so that
prediction normalises exactly as training did:

- CT window: ``{"kind": "ct", "preset": "abdomen" | None, "low": -160.0, "high": 240.0}``;
  Hounsfield units below ``low`` map to 0, above ``high`` to 1, linear in between.
- Percentiles (MRI, or any modality without absolute units):
  ``{"kind": "percentile", "low": 0.5, "high": 99.5, "nonzero": False}``; each volume's own
  ``low``/``high`` percentiles (over all voxels, or over non-zero voxels when ``nonzero``)
  map to 0 and 1, values beyond are clipped.

CT presets are window level / width in HU, as usual on radiology workstations:

=========  =====  =====  ==============
preset     level  width  HU range
=========  =====  =====  ==============
abdomen       40    400  -160 .. 240
liver         30    150   -45 .. 105
lung        -600   1500  -1350 .. 150
bone         400   1800  -500 .. 1300
=========  =====  =====  ==============
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError
from .io import fill_nonfinite
from .slicing import validate_axis

# (level, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
DEFAULT_PERCENTILES = (0.5, 99.5)


def ct_window(preset: str | None = None, hu_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """A CT window spec from a preset name or an explicit (low, high) HU range (exactly one)."""
    if (preset is None) == (hu_range is None):
        raise ConfigError("a CT window needs either a preset or an explicit HU range (low, high), not both")
    if preset is not None:
        key = str(preset).lower()
        if key not in CT_WINDOWS:
            raise ConfigError(f"unknown CT window {preset!r}; presets: {', '.join(CT_WINDOWS)}")
        level, width = CT_WINDOWS[key]
        return {"kind": "ct", "preset": key, "low": level - width / 2, "high": level + width / 2}
    low, high = (float(v) for v in hu_range)
    spec = {"kind": "ct", "preset": None, "low": low, "high": high}
    return validate_intensity(spec)


def percentile_window(low: float = DEFAULT_PERCENTILES[0], high: float = DEFAULT_PERCENTILES[1],
                      nonzero: bool = False) -> dict[str, Any]:
    """A per-volume percentile spec (MRI): percentiles ``low``..``high`` map to 0..1."""
    return validate_intensity({"kind": "percentile", "low": float(low), "high": float(high), "nonzero": bool(nonzero)})


def parse_intensity(text: str) -> dict[str, Any]:
    """Command-line form -> spec.

    ``abdomen`` / ``liver`` / ``lung`` / ``bone`` (or ``ct:abdomen``): a CT preset;
    ``ct:-100,240``: an explicit HU range; ``mri`` / ``percentile``: 0.5..99.5 per volume;
    ``percentile:1,99``: chosen percentiles.
    """
    t = str(text).strip().lower()
    kind, _, arg = t.partition(":")
    if kind in CT_WINDOWS and not arg:
        return ct_window(kind)
    if kind == "ct":
        if arg in CT_WINDOWS:
            return ct_window(arg)
        return ct_window(hu_range=_two_numbers(arg, text))
    if kind in ("mri", "percentile"):
        return percentile_window(*_two_numbers(arg, text)) if arg else percentile_window()
    raise ConfigError(
        f"unknown intensity setting {text!r}; use a CT preset ({', '.join(CT_WINDOWS)}), "
        "ct:LOW,HIGH (HU), mri, or percentile:LOW,HIGH"
    )


def _two_numbers(arg: str, text: str) -> tuple[float, float]:
    parts = arg.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"intensity setting {text!r}: expected two numbers LOW,HIGH after the colon") from None


def validate_intensity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a spec (e.g. read back from a model file) and return it as a plain dict."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"an intensity spec must be a dict, got {type(spec).__name__}")
    kind = spec.get("kind")
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"intensity spec {dict(spec)!r} needs numeric 'low' and 'high'") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"intensity spec {dict(spec)!r}: need finite low < high")
    if kind == "ct":
        preset = spec.get("preset")
        if preset is not None and preset not in CT_WINDOWS:
            raise ConfigError(f"intensity spec: unknown CT preset {preset!r}")
        return {"kind": "ct", "preset": preset, "low": low, "high": high}
    if kind == "percentile":
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(f"intensity spec: percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        return {"kind": "percentile", "low": low, "high": high, "nonzero": bool(spec.get("nonzero", False))}
    raise ConfigError(f"intensity spec: 'kind' must be 'ct' or 'percentile', got {kind!r}")


def intensity_bounds(array: np.ndarray, spec: Mapping[str, Any]) -> tuple[float, float]:
    """The raw values that map to 0 and 1 for this volume under ``spec``."""
    spec = validate_intensity(spec)
    if spec["kind"] == "ct":
        return spec["low"], spec["high"]
    values, _ = fill_nonfinite(array)
    if spec["nonzero"]:
        values = values[values != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [spec["low"], spec["high"]])
    return float(lo), float(hi)


def normalize_intensity(array: np.ndarray, spec: Mapping[str, Any], dtype=np.float32) -> np.ndarray:
    """Map a volume's raw values to [0, 1] under ``spec``: (I, J, K) any dtype -> same shape float.

    A constant volume (percentile bounds equal) maps to 0 everywhere. NaN and infinite voxels
    are replaced first, as :func:`segdino.volumes.io.fill_nonfinite` says, so none reaches the output.
    """
    # Volumes read from files are already finite; arrays handed in directly get the same rule.
    array, _ = fill_nonfinite(array)
    lo, hi = intensity_bounds(array, spec)
    out = np.asarray(array, dtype=np.float32)
    if hi <= lo:
        return np.zeros(out.shape, dtype=dtype)
    out = (out - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(dtype, copy=False)


def volume_settings(intensity: Mapping[str, Any], axis: str | int = "axial", context: int = 0,
                    spacing=None, min_size_mm3: float | None = None, min_size_source: str | None = None
                    ) -> dict[str, Any]:
    """The dict stored in ``ModelConfig.volume``: intensity spec, slice axis, 2.5D context k and,
    for models trained on patches at a target in-plane spacing, that ``spacing`` (rows, columns mm);
    for models whose training chose one, the minimum predicted component size ``min_size_mm3``
    that prediction applies by default, and where it came from (``min_size_source``)."""
    if not isinstance(context, int) or isinstance(context, bool) or context < 0:
        raise ConfigError(f"slice context k must be an integer >= 0, got {context!r}")
    out = {"intensity": validate_intensity(intensity), "axis": validate_axis(axis), "context": int(context)}
    if spacing is not None:
        try:
            sp = [float(s) for s in spacing]
        except (TypeError, ValueError):
            sp = []
        if len(sp) != 2 or not all(np.isfinite(s) and s > 0 for s in sp):
            raise ConfigError(f"volume settings: target spacing must be two positive numbers (mm), got {spacing!r}")
        out["spacing"] = sp
    if min_size_mm3 is not None:
        value = float(min_size_mm3) if isinstance(min_size_mm3, (int, float)) and not isinstance(min_size_mm3, bool) \
            else float("nan")
        if not (np.isfinite(value) and value >= 0):
            raise ConfigError(f"volume settings: min_size_mm3 must be a volume in mm^3 >= 0, got {min_size_mm3!r}")
        out["min_size_mm3"] = value
        out["min_size_source"] = str(min_size_source or "the model file")
    return out


def read_volume_settings(d: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a ``ModelConfig.volume`` dict (e.g. from a model file); ConfigError if malformed."""
    if not isinstance(d, Mapping):
        raise ConfigError("this model has no volume settings (intensity, axis, context): it was trained on 2D images")
    missing = [k for k in ("intensity", "axis", "context") if k not in d]
    if missing:
        raise ConfigError(f"volume settings lack {', '.join(missing)}: {dict(d)!r}")
    return volume_settings(d["intensity"], d["axis"], d["context"], d.get("spacing"), d.get("min_size_mm3"),
                           d.get("min_size_source"))
