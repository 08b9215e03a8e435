"""Layer helpers shared by every network: the resolution plan, channel widths, normalisation, initialisation."""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple

from torch import nn

RESOLUTIONS = (32, 64, 96, 128)


def plan(resolution: int) -> Tuple[int, int]:
    """(base side, number of 2x up/down-samplings): 64 -> (4, 4), 96 -> (3, 5)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"model.resolution must be one of {RESOLUTIONS}, got {resolution}")
    base, steps = resolution, 0
    while base > 4:
        base //= 2
        steps += 1
    return base, steps


def widths(width: int, steps: int) -> List[int]:
    """Channel count at each of the ``steps`` coarse-to-fine levels, capped at 8x ``width``."""
    return [width * min(8, 2 ** (steps - 1 - i)) for i in range(steps)]


def norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":  # per-image statistics keep the gradient penalty per image
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use batch, instance, layer or none")


def init_weights(module: nn.Module) -> None:
    """The sample's init: conv weights N(0, 0.02); norm weights N(1, 0.02), bias 0.

    Linear layers keep PyTorch's default, as in the sample.
    """
    name = type(module).__name__
    if "Conv" in name:
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif "Norm" in name and getattr(module, "weight", None) is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def init_resnet(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for convolutions and linear layers (as SN-GAN)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def add_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) on every convolution and linear layer, in place.

    Each weight is divided by its largest singular value, estimated by one
    power iteration per training forward pass: the critic becomes about
    1-Lipschitz layer by layer, with no penalty term and no extra backward pass.
    """
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.utils.parametrizations.spectral_norm(m)
    return module


@contextlib.contextmanager
def evaluating(*nets: nn.Module) -> Iterator[Tuple[nn.Module, ...]]:
    """``nets`` in eval mode for the block, each back in its own mode afterwards."""
    modes = [n.training for n in nets]
    for n in nets:
        n.eval()
    try:
        yield nets
    finally:
        for n, mode in zip(nets, modes):
            n.train(mode)
