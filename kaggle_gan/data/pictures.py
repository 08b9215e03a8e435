"""Image arrays and tensors: resizing, generator output to uint8, sample grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.io import atomic_path


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 with antialiased bilinear resampling (in chunks)."""
    import torch

    out = []
    for i in range(0, len(images), 4096):
        x = torch.from_numpy(np.array(images[i : i + 4096])).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def save_grid(images: "torch.Tensor", path: Path, nrow: int, padding: int = 2) -> Path:  # noqa: F821
    """Images (B, 3, H, W) in [-1, 1] as a PNG grid ``nrow`` wide, written atomically."""
    from torchvision.utils import save_image

    with atomic_path(path, suffix=".png") as tmp:
        save_image(images.float(), tmp, nrow=nrow, normalize=True, value_range=(-1, 1), padding=padding)
    return path


def to_uint8(x: "torch.Tensor", size: int) -> np.ndarray:
    """Generator output (B, 3, R, R) in [-1, 1] -> (B, size, size, 3) uint8, resized with antialiasing."""
    import torch

    x = x.float()
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
