"""Generators and critics.

The DCGAN pair is the course's sample code (HW6.md) generalised to other
resolutions and widths; at resolution 64 and width 64 it is layer for layer
the sample's network (tests check the parameter counts). The conditional
pair (a class or a set of objects per image) is in :mod:`kaggle_gan.nets.conditional`.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from .layers import add_spectral_norm, init_resnet, init_weights, norm2d, plan, widths


class DCGANGenerator(nn.Module):
    """z (B, z_dim) -> images (B, 3, R, R) in [-1, 1].

    Linear + BN1d + ReLU to a (8w, 4, 4) map, then stride-2 5x5 transposed
    convolutions with BN + ReLU, halving channels, and a final one to RGB + Tanh.
    """

    def __init__(self, z_dim: int = 100, width: int = 64, resolution: int = 64):
        super().__init__()
        base, steps = plan(resolution)
        ch = widths(width, steps)
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
        base, steps = plan(resolution)
        ch = widths(width, steps)[::-1]  # fine to coarse
        layers: List[nn.Module] = [nn.Conv2d(3, ch[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), norm2d(norm, c_out), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ch[-1], 1, base))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten()


class _UpBlock(nn.Module):
    """Pre-activation residual block that doubles the side: (B, c_in, s, s) -> (B, c_out, 2s, 2s)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
            # no bias: the batch norm after it subtracts any per-channel constant, so Adam would only
            # move a bias that changes nothing (the race at 32px, README)
            nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1),
        )
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 1))
        self.register_load_state_dict_pre_hook(_fold_legacy_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


LEGACY_BIAS = "main.3.bias"  # _UpBlock's first convolution had a bias in checkpoints before 2026-12


def _fold_legacy_bias(module: nn.Module, state: Dict[str, torch.Tensor], prefix: str, *_args) -> None:
    """Load an older checkpoint's block: fold its first convolution's bias into the next batch norm.

    In training mode the batch norm removes the bias exactly; in eval mode
    ``(x + b - mean) / s`` equals ``(x - (mean - b)) / s``, so subtracting the
    bias from the running mean gives the same outputs without it.
    """
    bias = state.pop(prefix + LEGACY_BIAS, None)
    mean = prefix + "main.4.running_mean"
    if bias is not None and mean in state:
        state[mean] = state[mean] - bias


def legacy_bias_keys(G: nn.Module, state: Dict[str, torch.Tensor]) -> List[str]:
    """The biases in an older checkpoint of ``G`` (a state dict) that ``G`` no longer has."""
    own = G.state_dict()
    return [k for k in state if k.endswith("." + LEGACY_BIAS) and k not in own]


class _DownBlock(nn.Module):
    """Residual critic block that halves the side; ``first`` skips the leading ReLU (the input is an image)."""

    def __init__(self, c_in: int, c_out: int, norm: str, first: bool = False):
        super().__init__()
        layers: List[nn.Module] = [] if first else [nn.ReLU()]
        layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), norm2d(norm, c_out), nn.ReLU(),
                   nn.Conv2d(c_out, c_out, 3, 1, 1), nn.AvgPool2d(2)]
        self.main = nn.Sequential(*layers)
        # the first block pools before its 1x1 (cheaper, same function); later ones as in SN-GAN
        self.skip = (nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1)) if first
                     else nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.AvgPool2d(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


class ResNetGenerator(nn.Module):
    """z (B, z_dim) -> images (B, 3, R, R) in [-1, 1]; the SN-GAN / BigGAN-style residual generator.

    Linear to a (w0, base, base) map, one upsampling residual block per 2x
    (channels as in DCGAN: 8w at 4x4 halving to w), then BN + ReLU + 3x3 conv to RGB + Tanh.
    """

    def __init__(self, z_dim: int = 100, width: int = 64, resolution: int = 64):
        super().__init__()
        base, steps = plan(resolution)
        ch = widths(width, steps)
        self.z_dim, self.base, self.top = z_dim, base, ch[0]
        self.project = nn.Linear(z_dim, ch[0] * base * base)
        self.blocks = nn.Sequential(*[_UpBlock(a, b) for a, b in zip([ch[0], *ch[:-1]], ch)])
        self.to_rgb = nn.Sequential(nn.BatchNorm2d(ch[-1]), nn.ReLU(), nn.Conv2d(ch[-1], 3, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], self.top, self.base, self.base)
        return self.to_rgb(self.blocks(x))


class ResNetDiscriminator(nn.Module):
    """images (B, 3, R, R) in [-1, 1] -> scores (B,); the SN-GAN-style residual critic.

    One downsampling residual block per 2x (w at full size doubling to 8w),
    ReLU, a sum over positions and a linear layer. ``norm`` as in DCGAN;
    ``none`` with spectral normalisation is the usual choice.
    """

    def __init__(self, width: int = 64, resolution: int = 64, norm: str = "none"):
        super().__init__()
        _base, steps = plan(resolution)
        ch = widths(width, steps)[::-1]
        self.blocks = nn.Sequential(*[_DownBlock(a, b, norm, first=i == 0)
                                      for i, (a, b) in enumerate(zip([3, *ch[:-1]], ch))])
        self.head = nn.Linear(ch[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.blocks(x)).sum(dim=(2, 3))).flatten()


# --- 2-D points (kaggle_gan.experiments.toy) ---------------------------------------------------

POINT_DIM = 2


def _mlp(n_in: int, width: int, n_out: int, hidden: int = 3) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i in range(hidden):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


class MLPGenerator(nn.Module):
    """z (B, z_dim) -> points (B, 2): three ReLU layers, as in the WGAN-GP and unrolled-GAN toy experiments."""

    def __init__(self, z_dim: int = 8, width: int = 256):
        super().__init__()
        self.z_dim = z_dim
        self.body = _mlp(z_dim, width, POINT_DIM)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class MLPCritic(nn.Module):
    """points (B, 2) -> scores (B,)."""

    def __init__(self, width: int = 256):
        super().__init__()
        self.body = _mlp(POINT_DIM, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten()


ARCHS = ("dcgan", "resnet", "mlp")


def build_models(model_cfg, aux_classifier: bool = False) -> Tuple[nn.Module, nn.Module]:
    """(generator, critic) for a :class:`kaggle_gan.config.ModelConfig`, initialised.

    ``model.classes`` > 0 gives the class-conditional pair (``G(z, y)``, ``D(x, y)``);
    ``aux_classifier`` gives its critic a class-prediction head.
    """
    c = model_cfg
    classes = getattr(c, "classes", 0)
    if c.arch == "dcgan" and classes:
        from .conditional import ConditionalGenerator, ProjectionCritic

        G = ConditionalGenerator(c.z_dim, c.g_width, c.resolution, classes, c.cond_input)
        D = ProjectionCritic(c.d_width, c.resolution, c.d_norm, classes, aux_classifier)
        init = init_weights
    elif c.arch == "dcgan":
        G = DCGANGenerator(c.z_dim, c.g_width, c.resolution)
        D = DCGANDiscriminator(c.d_width, c.resolution, c.d_norm)
        init = init_weights
    elif c.arch == "resnet":
        G = ResNetGenerator(c.z_dim, c.g_width, c.resolution)
        D = ResNetDiscriminator(c.d_width, c.resolution, c.d_norm)
        init = init_resnet
    elif c.arch == "mlp":
        G, D = MLPGenerator(c.z_dim, c.g_width), MLPCritic(c.d_width)
        init = None  # PyTorch's default initialisation, as the toy experiments use
    else:
        raise ValueError(f"unknown model.arch {c.arch!r}; available: {', '.join(ARCHS)}")
    if init is not None:
        G.apply(init)
        D.apply(init)
    if getattr(c, "spectral_norm", False):  # after the init: the parametrisation wraps the initialised weight
        add_spectral_norm(D)
    return G, D
