"""FP8 matrix products for the backbone's linear layers (inference on GPUs with FP8 tensor cores).

The ViT's linear layers (per block: attention ``qkv`` and ``proj``, MLP ``fc1`` and ``fc2``) hold
most of the model's matrix work. :class:`Fp8Linear` runs one of them as an FP8 (e4m3)
product with one scale per row of the activations (per token) and one per output channel of the
weights, accumulating in float32 and writing bf16 (``torch._scaled_mm``): twice the bf16 tensor
throughput of Hopper, for the cost of quantising each activation once. Weights are quantised once,
when the layer is built. e4m3 keeps 3 mantissa bits, so each factor carries a relative rounding
error of at most 1/16; per-row scales keep outliers of one token from flattening the others.

It is an inference option of the fast path (:func:`segdino.fast.fast_model` ``fp8=True``), used
only where :func:`fp8_supported` says the device runs FP8 products (CUDA, compute capability 8.9
or newer); elsewhere the model keeps its bf16 layers.
"""

from __future__ import annotations

import torch
from torch import nn

E4M3_MAX = 448.0  # the largest finite float8_e4m3fn value


def fp8_supported(device: torch.device) -> bool:
    """Whether ``device`` runs scaled FP8 matrix products (CUDA with compute capability >= 8.9)."""
    device = torch.device(device)
    if device.type != "cuda" or not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return False
    try:
        return torch.cuda.get_device_capability(device) >= (8, 9)
    except (RuntimeError, AssertionError):  # no driver, or CUDA not compiled in
        return False


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (M, K) as e4m3 values and one float32 scale per row (M, 1): ``t ~ q * scale``.

    A row's largest magnitude maps to :data:`E4M3_MAX`; an all-zero row gets a tiny scale (its
    values stay 0)."""
    amax = t.detach().abs().amax(dim=-1, keepdim=True).float().clamp_(min=1e-12)
    scale = amax / E4M3_MAX
    q = (t.float() / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


class Fp8Linear(nn.Module):
    """An ``nn.Linear`` run as a row-scaled FP8 product (inference only: no gradient).

    The weight is kept as e4m3 (``weight_fp8``, out x in) with one scale per output channel
    (``weight_scale``, 1 x out); the bias stays in the layer's dtype. Output: bf16, or the input's
    dtype when that is float16 or float32 (cast after the bf16 product).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"FP8 products need sizes that are multiples of 16, got {self.in_features} -> "
                             f"{self.out_features}")
        with torch.no_grad():
            q, scale = quantize_rows(linear.weight)
        self.register_buffer("weight_fp8", q)
        self.register_buffer("weight_scale", scale.t().contiguous())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def _apply(self, fn, recurse=True):
        # Module casts (``.to(torch.bfloat16)``, ``.half()``) must not turn the e4m3 weight and its
        # float32 scales into another dtype: only moves between devices apply to them.
        fp8, scale = self.weight_fp8, self.weight_scale
        super()._apply(fn, recurse)
        probe = fn(torch.zeros((), dtype=torch.float32, device=fp8.device))
        self.weight_fp8 = fp8.to(probe.device)
        self.weight_scale = scale.to(probe.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        q, scale = quantize_rows(x.reshape(-1, self.in_features))
        y = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                             out_dtype=torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        if x.dtype in (torch.float16, torch.float32):
            y = y.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 row-scaled"


def _call_qkv(parent: nn.Module, name: str) -> None:
    """timm's EVA attention with a q/v bias runs ``qkv`` as ``F.linear(x, qkv.weight, bias)``; it adds
    the bias after calling the layer instead once ``qkv_bias_separate`` is set (the same sum), which
    lets the layer be replaced."""
    if name == "qkv" and getattr(parent, "q_bias", None) is not None and hasattr(parent, "qkv_bias_separate"):
        parent.qkv_bias_separate = True


def fp8_backbone(model: nn.Module) -> int:
    """Replace the linear layers of every block of the model's ViT (``model.backbone.vit.blocks``:
    attention ``qkv``/``proj``, MLP ``fc1``/``fc2``, or whatever linear layers a block holds) by
    :class:`Fp8Linear`, in place. Returns how many were replaced (0 without such blocks)."""
    vit = getattr(getattr(model, "backbone", None), "vit", None)
    blocks = getattr(vit, "blocks", None)
    if blocks is None:
        return 0
    count = 0
    for block in blocks:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    _call_qkv(parent, name)
                    setattr(parent, name, Fp8Linear(child))
                    count += 1
    return count
