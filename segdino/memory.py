"""Memory estimates checked before anything large is allocated.

A model file is small, but the model it describes and the activations of one forward pass are
not: a config asking for a 16384-wide decoder or an input of 2048 x 2048 pixels would take tens
of gigabytes. Such requests are estimated from the config (or from a graph's shapes) and refused
above :func:`memory_limit` with a message saying how to raise the limit: the environment
variable ``SEGDINO_MAX_MEMORY_GB``. The default is half of this machine's physical memory.
"""

from __future__ import annotations

import os

from .backbone import BACKBONES
from .config import ModelConfig
from .ops import PATCH_SIZE, padded_size

GIB = 1024**3
ENV_VAR = "SEGDINO_MAX_MEMORY_GB"
FALLBACK_LIMIT = 16 * GIB  # where the physical memory cannot be read


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit() -> int:
    """The largest estimate accepted, in bytes: ``SEGDINO_MAX_MEMORY_GB`` GiB, else half the RAM."""
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if value > 0 and value == value and value != float("inf"):
            return int(value * GIB)
    ram = physical_memory()
    return ram // 2 if ram else FALLBACK_LIMIT


def _limit_source() -> str:
    if os.environ.get(ENV_VAR, "").strip():
        return f"{ENV_VAR}={os.environ[ENV_VAR].strip()}"
    return "half of this machine's memory" if physical_memory() else "the default"


def check_memory(needed: int, what: str, error: type[Exception]) -> None:
    """Raise ``error`` when ``needed`` bytes exceed :func:`memory_limit`; ``what`` starts the message."""
    limit = memory_limit()
    if needed > limit:
        raise error(f"{what} needs about {needed / GIB:.1f} GiB of memory, more than the limit of "
                    f"{limit / GIB:.1f} GiB ({_limit_source()}); if this is intended and the memory is there, "
                    f"raise the limit with the environment variable {ENV_VAR}")


def parameter_bytes(config: ModelConfig) -> int:
    """Bytes of the fp32 weights the config describes (backbone, TPA, SAD and head), estimated."""
    spec = BACKBONES.get(config.backbone)
    d, c = config.decoder_dim, (spec.width if spec else 0)
    backbone = spec.depth * 12 * c * c if spec else 0  # attention 4C^2 + MLP 8C^2 per block
    decoder = 4 * (c * d + 9 * d * d) + 8 * 9 * d * d + d * config.num_classes
    return 4 * (backbone + decoder)


def forward_bytes(config: ModelConfig, size: tuple[int, int] | None = None, batch: int = 1) -> int:
    """Peak bytes of one inference forward pass at input ``size`` (default: the config's), weights included.

    Measured on CPU, the peak is dominated by about eight decoder maps at stride 2
    (H/2 x W/2 x decoder_dim floats) and, at large inputs, by the attention matrix of one block
    (heads x T^2 floats for T tokens); the estimate counts both with a margin.
    """
    h, w = size or config.image_size
    h, w = padded_size(int(h), int(w))
    spec = BACKBONES.get(config.backbone)
    tokens = (h // PATCH_SIZE) * (w // PATCH_SIZE)
    heads, width = (spec.heads, spec.width) if spec else (1, 1)
    decoder_map = (h // 2) * (w // 2) * config.decoder_dim * 4
    attention = heads * tokens * tokens * 4
    blocks = 16 * tokens * width * 4
    pixels = 4 * h * w * 4 * max(3, config.num_classes)
    return parameter_bytes(config) + batch * (8 * decoder_map + 2 * attention + blocks + pixels)
