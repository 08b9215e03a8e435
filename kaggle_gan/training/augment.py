"""Differentiable augmentation for the critic, chosen by a policy string.

The idea of Zhao et al. 2020 ("Differentiable Augmentation for Data-Efficient
GAN Training"): the critic sees every image, real or fake, through the same
random transforms, and the transforms are differentiable so the generator
still gets a gradient through them. The critic then cannot win by memorising
the few thousand training images, which is what makes small data sets and
short runs train well. Each transform is a pure function of a batch and a
random generator; a policy like ``"color,translation,cutout"`` applies them
in that order.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import Tensor, nn

from ..config import parse_policy

#: share of the side a translation may shift by, and the side of the cutout square
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _uniform(n: int, x: Tensor, g: Optional[torch.Generator]) -> Tensor:
    """(n, 1, 1, 1) values in [0, 1) on ``x``'s device and dtype."""
    return torch.rand(n, 1, 1, 1, device=x.device, generator=g).to(x.dtype)


def color(x: Tensor, g: Optional[torch.Generator] = None) -> Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) per image.

    ``x`` is (B, 3, H, W) in about [-1, 1]; the result has the same shape.
    """
    n = x.shape[0]
    x = x + (_uniform(n, x, g) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, x, g) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, x, g) + 0.5) + mean


def translation(x: Tensor, g: Optional[torch.Generator] = None, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift each image by up to ``ratio`` of its side in x and y, filling with zeros (mid-grey)."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if sy == 0 and sx == 0:
        return x
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device, generator=g)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device, generator=g)
    ys = torch.arange(h, device=x.device).view(1, h, 1) - dy  # source row of every output row
    xs = torch.arange(w, device=x.device).view(1, 1, w) - dx
    inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).unsqueeze(1)
    flat = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    moved = x.flatten(2).gather(2, flat).view_as(x)
    return moved * inside.to(x.dtype)


def cutout(x: Tensor, g: Optional[torch.Generator] = None, ratio: float = CUTOUT_RATIO) -> Tensor:
    """Zero one square of side ``ratio`` x side per image at a random place (it may overhang the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device, generator=g)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device, generator=g)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - ch // 2, cx - cw // 2
    hole = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


# the names kaggle_gan.config.AUGMENTATIONS lists (a policy is checked there, before torch is imported)
TRANSFORMS: Dict[str, Callable[[Tensor, Optional[torch.Generator]], Tensor]] = {
    "color": color,
    "translation": translation,
    "cutout": cutout,
}


def augment(x: Tensor, policy: str, g: Optional[torch.Generator] = None) -> Tensor:
    """Apply the policy's transforms in order to (B, 3, H, W) images; differentiable in ``x``."""
    for name in parse_policy(policy):
        x = TRANSFORMS[name](x, g)
    return x


class AugmentedCritic(nn.Module):
    """``D(augment(x))``: the critic as the losses see it, so real, fake, penalty points and
    the generator's step all pass through the same random transforms.

    Holds no parameters of its own (its state dict is the critic's, under ``critic.``),
    so the plain critic is still what checkpoints store. ``generator`` is the training
    loop's, so a resumed run draws the same augmentations.
    """

    def __init__(self, critic: nn.Module, policy: str, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.critic = critic
        self.names = parse_policy(policy)
        self.generator = generator

    def forward(self, x: Tensor, *labels, **kw) -> Tensor:
        """``labels`` and keywords (a conditional critic's ``y``, ``logits=``) pass through untouched."""
        for name in self.names:
            x = TRANSFORMS[name](x, self.generator)
        return self.critic(x, *labels, **kw)
