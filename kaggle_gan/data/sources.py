"""What training and scoring read: a prepared data folder, and the training loop's data sources.

A prepared folder (written by :func:`kaggle_gan.data.prepare.prepare`) holds
``images.npy`` (N, H, W, 3) uint8, ``manifest.csv`` and ``prepare.json``;
:func:`load_prepared` opens it. :class:`DeviceImages` serves it to the loop
as float batches on the training device; the toy's 2-D points
(:class:`kaggle_gan.experiments.toy.Points`) are the other source.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, NamedTuple, Optional, Protocol

import numpy as np

from ..core.io import UserError
from .pictures import resize_images, save_grid
from .prepared import load_prepared


class Batch(NamedTuple):
    """What a data source serves the training loop: inputs ``x`` and, for labelled data, ``y``:
    class indices (B,) long, or sets of classes (B, K) float multi-hot."""

    x: "torch.Tensor"  # noqa: F821
    y: Optional["torch.Tensor"] = None  # noqa: F821


def fixed_noise(n: int, z_dim: int, seed: int) -> "torch.Tensor":  # noqa: F821
    """(n, z_dim) standard normal noise drawn on the CPU from ``seed``: the same on every device and call."""
    import torch

    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


class Source(Protocol):
    """What the training loop needs from its data (see :class:`DeviceImages`, :class:`kaggle_gan.experiments.toy.Points`)."""

    device: "torch.device"  # noqa: F821
    classes: int  # 0 = unlabelled
    multi_label: bool  # labels are (B, K) multi-hot sets of the classes, not (B,) indices
    sha256: str  # identity of the data: a resumed run must see the same

    def __len__(self) -> int: ...

    def batch(self, index: "torch.Tensor", generator: "torch.Generator", keep: slice = slice(None)) -> Batch:  # noqa: F821
        """Examples ``index`` of the epoch's order (randomness for all of them from ``generator``), rows ``keep``."""

    def fixed_inputs(self, z_dim: int, seed: int) -> Batch:
        """The noise (B, z_dim) and labels the run's pictures are drawn from, the same at every call."""

    def picture(self, fake: "torch.Tensor", critic: "torch.nn.Module", path: Path) -> None:  # noqa: F821
        """Draw the generator's output for ``fixed_inputs`` (and the critic, where it can be drawn) to ``path``."""


class DeviceImages:
    """The prepared uint8 images (and their labels) held on the training device, served as float batches.

    The training loop's image source. A source offers ``len()``, ``device``,
    ``classes`` (0 = unlabelled), ``multi_label``, ``sha256`` (what a resumed run must match),
    ``batch(index, generator, keep)``, ``fixed_inputs(z_dim, seed)`` and
    ``picture(fake, critic, path)``; :class:`kaggle_gan.experiments.toy.Points` is the other one.
    Sampling, flipping and normalising happen on the device; the host only
    hands over an index tensor.
    """

    def __init__(self, images: np.ndarray, device, channels_last: bool = False, labels: Optional[np.ndarray] = None,
                 classes: int = 0, flip: bool = True, sha256: str = "", names: Optional[List[str]] = None):
        import torch

        self.device = torch.device(device)
        data = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8, a writable copy
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.data = data.contiguous(memory_format=memory_format).to(self.device)
        self.multi_label = labels is not None and np.ndim(labels) == 2
        if labels is not None:  # class indices (B,) long, or sets (B, K) as float multi-hot rows
            labels = np.asarray(labels, dtype=np.float32 if self.multi_label else np.int64)
            self.labels = torch.from_numpy(labels).to(self.device)
        else:
            self.labels = None
        self.channels_last, self.classes, self.flip, self.sha256 = channels_last, classes, flip, sha256
        self.names = list(names or [])  # the class (or object) names, which generator files carry

    def __len__(self) -> int:
        return self.data.shape[0]

    def batch(self, index, generator, keep: slice = slice(None)) -> Batch:
        """``index`` (B,) long -> (B', 3, H, W) float32 in [-1, 1] (and labels), B' = the ``keep`` slice of B.

        Flips are drawn from ``generator`` for the whole batch before slicing, so every
        rank under DDP draws the same and a resumed run draws what the unbroken one did.
        """
        import torch

        if self.flip:
            flip = (torch.rand(len(index), device=generator.device, generator=generator) < 0.5)[keep]
        index = index[keep].to(self.device, non_blocking=True)
        x = self.data.index_select(0, index)
        if self.flip:
            x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
        x = x.float().mul_(2.0 / 255.0).sub_(1.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, None if self.labels is None else self.labels.index_select(0, index))

    def fixed_inputs(self, z_dim: int, seed: int) -> Batch:
        """The noise (and labels) of the run's sample grids: 64 images, or 8 a class with one row per class
        (for sets: one row for each of the first 8 distinct sets of the data)."""
        import torch

        if not self.classes:
            return Batch(fixed_noise(64, z_dim, seed))
        if self.multi_label:
            sets = first_distinct(self.labels.cpu(), 8)
            return Batch(fixed_noise(8, z_dim, seed).repeat(len(sets), 1), sets.repeat_interleave(8, 0))
        z = fixed_noise(8, z_dim, seed).repeat(self.classes, 1)  # the same 8 noises in every row
        return Batch(z, torch.arange(self.classes).repeat_interleave(8))

    def picture(self, fake, critic, path: Path) -> None:
        """Save ``fake`` (B, 3, H, W) in [-1, 1] as a grid 8 wide (a row per class for labelled data)."""
        save_grid(fake, path, nrow=8)


def first_distinct(rows: "torch.Tensor", n: int) -> "torch.Tensor":  # noqa: F821
    """The first ``n`` distinct rows of ``rows`` (B, K), in order of first appearance."""
    import torch

    seen, keep = set(), []
    for i, row in enumerate(rows.tolist()):
        if tuple(row) not in seen:
            seen.add(tuple(row))
            keep.append(i)
            if len(keep) == n:
                break
    return rows[torch.tensor(keep)]


def open_images(data_dir: Path, cfg: "Config", device, channels_last: bool = False) -> "DeviceImages":  # noqa: F821
    """The prepared images of ``data_dir`` (and labels when ``cfg.model.classes`` > 0) as the training
    loop's source on ``device``, resized once to ``model.resolution`` if need be."""
    prepared = load_prepared(data_dir)
    images, labels, sha = prepared.images, None, prepared.meta["images_sha256"]
    if cfg.model.classes:
        if prepared.labels is None:
            raise UserError(f"{data_dir} holds no labels for model.classes={cfg.model.classes}; prepare it with "
                            "--labels folders (class_name/*.jpg), --labels FILE.csv or --labels iclevr")
        labels, sha = prepared.labels, f"{sha}+{prepared.meta['labels_sha256']}"
    if images.shape[1] != cfg.model.resolution:
        print(f"train: prepared images are {images.shape[1]}px, resizing once to model.resolution={cfg.model.resolution}")
        images = resize_images(images, cfg.model.resolution)
    return DeviceImages(images, _data_device(images, device), channels_last, labels=labels,
                        classes=len(prepared.classes) if labels is not None else 0, flip=cfg.train.flip, sha256=sha,
                        names=prepared.classes if labels is not None else None)


def _data_device(images: np.ndarray, device) -> "torch.device":  # noqa: F821
    """Keep the uint8 data on the GPU when it takes under a quarter of its free memory."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if images.nbytes < free / 4:
            return device
        print("train: data kept in host memory (too large for a quarter of the free GPU memory)")
        return torch.device("cpu")
    return device
