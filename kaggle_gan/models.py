"""Generators and critics.

The DCGAN pair is the course's sample code (HW6.md) generalised to other
resolutions and widths; at resolution 64 and width 64 it is layer for layer
the sample's network (tests check the parameter counts).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

RESOLUTIONS = (32, 64, 96, 128)


def _plan(resolution: int) -> Tuple[int, int]:
    """(base side, number of 2x up/down-samplings): 64 -> (4, 4), 96 -> (3, 5)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"model.resolution must be one of {RESOLUTIONS}, got {resolution}")
    base, steps = resolution, 0
    while base > 4:
        base //= 2
        steps += 1
    return base, steps


def _widths(width: int, steps: int) -> List[int]:
    """Channel count at each of the ``steps`` coarse-to-fine levels, capped at 8x ``width``."""
    return [width * min(8, 2 ** (steps - 1 - i)) for i in range(steps)]


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":  # per-image statistics keep the gradient penalty per image
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use batch, instance, layer or none")


class DCGANGenerator(nn.Module):
    """z (B, z_dim) -> images (B, 3, R, R) in [-1, 1].

    Linear + BN1d + ReLU to a (8w, 4, 4) map, then stride-2 5x5 transposed
    convolutions with BN + ReLU, halving channels, and a final one to RGB + Tanh.
    """

    def __init__(self, z_dim: int = 100, width: int = 64, resolution: int = 64):
        super().__init__()
        base, steps = _plan(resolution)
        ch = _widths(width, steps)
        self.z_dim, self.base, self.top = z_dim, base, ch[0]
        self.project = nn.Sequential(
            nn.Linear(z_dim, ch[0] * base * base, bias=False),
            nn.BatchNorm1d(ch[0] * base * base),
            nn.ReLU(),
        )
        blocks = []
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 5, 2, padding=2, output_padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        blocks += [nn.ConvTranspose2d(ch[-1], 3, 5, 2, padding=2, output_padding=1, bias=False), nn.Tanh()]
        self.body = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self.top, self.base, self.base)
        return self.body(x)


class DCGANDiscriminator(nn.Module):
    """images (B, 3, R, R) in [-1, 1] -> logits (B,).

    The sample's network without its final Sigmoid: the BCE loss applies the
    sigmoid itself (same value, stable under mixed precision), and WGAN
    critics need the raw score anyway. ``norm`` replaces the batch norms
    (``instance`` for WGAN-GP, as the sample's comments advise).
    """

    def __init__(self, width: int = 64, resolution: int = 64, norm: str = "batch"):
        super().__init__()
        base, steps = _plan(resolution)
        ch = _widths(width, steps)[::-1]  # fine to coarse
        layers: List[nn.Module] = [nn.Conv2d(3, ch[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), _norm2d(norm, c_out), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ch[-1], 1, base))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten()


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


def build_models(model_cfg) -> Tuple[nn.Module, nn.Module]:
    """(generator, critic) for a :class:`kaggle_gan.config.ModelConfig`, initialised."""
    if model_cfg.arch != "dcgan":
        raise ValueError(f"unknown model.arch {model_cfg.arch!r}; available: dcgan")
    G = DCGANGenerator(model_cfg.z_dim, model_cfg.g_width, model_cfg.resolution)
    D = DCGANDiscriminator(model_cfg.d_width, model_cfg.resolution, model_cfg.d_norm)
    G.apply(init_weights)
    D.apply(init_weights)
    return G, D
