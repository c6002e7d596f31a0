import os

import pytest
import torch

# Tests run on small CPUs; keep intra-op threads bounded so parallel runs do not thrash.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer random values (SAD gains included, which start at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() <= 1 else 0.05))
    return model


@pytest.fixture
def tiny_model():
    import segdino

    return randomize_(segdino.build_model("vitt16", decoder_dim=32, image_size=(64, 64)))


def tiny(num_classes: int = 1, seed: int = 0) -> torch.nn.Module:
    """A random vitt16 model, decoder width 16, 32x32 input, in eval mode."""
    import segdino

    return randomize_(segdino.build_model("vitt16", num_classes=num_classes, decoder_dim=16, image_size=(32, 32)),
                      seed=seed).eval()
