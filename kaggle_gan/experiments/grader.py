"""The grading classifier of the conditional experiments: a small CNN trained from scratch on real images.

How conditional generation is judged: a classifier trained on the real
images reads the generated ones. It is trained on a seeded 80% of the real
images; its score on the other 20% is the ceiling (a generator cannot be
graded above what the classifier reads correctly on real images). One label
per image (``labels`` (N,) classes, :mod:`.cgan`) trains it with
cross-entropy; a set per image (``labels`` (N, K) multi-hot, :mod:`.iclevr`)
with a binary cross-entropy per object. Cached under a key the caller builds
from the data's sha256, so a second run loads it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence, Tuple

import numpy as np

from ..core.io import atomic_path

HELD_OUT = 0.2  # share of the real images the classifier never trains on: its ceiling is measured there


def split(n: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded permutation, ``HELD_OUT`` of it held out."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - HELD_OUT)))
    return order[:cut], order[cut:]


def as_input(images: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1], the generator's range."""
    import torch

    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def small_cnn(classes: int, widths: Sequence[int]) -> "torch.nn.Module":  # noqa: F821
    """(B, 3, R, R) in [-1, 1] -> logits (B, classes): a conv-BN-ReLU-pool block per width, then a linear head."""
    from torch import nn

    layers, c_in = [], 3
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in, classes))


def logits(model, x: "torch.Tensor", batch: int = 500) -> "torch.Tensor":  # noqa: F821
    """The model's logits for ``x`` (N, 3, R, R), in eval mode, a batch at a time."""
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def train_grader(images: np.ndarray, labels: np.ndarray, model: "torch.nn.Module", path: Path,  # noqa: F821
                 ceiling_of: Callable[["torch.Tensor", np.ndarray], float], epochs: int,  # noqa: F821
                 lr: float = 2e-3, progress: bool = True, what: str = "grading classifier") -> Tuple["torch.nn.Module", float]:  # noqa: F821
    """``model`` trained on the training split of (``images``, ``labels``), and ``ceiling_of(logits, labels)``
    on the held-out split; loaded from ``path`` when it is there, else trained and saved there.

    Adam with a one-cycle schedule, batches of 64, and the batch shifted by up to 2 pixels
    (robust to a generator's small offsets); every random draw from seed 0.
    """
    import torch

    from ..nets.conditional import class_loss

    if path.is_file():
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        return model.eval(), float(state["ceiling"])
    train_idx, held_idx = split(len(images))
    x = as_input(images)
    y = torch.from_numpy(np.asarray(labels, np.float32 if np.ndim(labels) == 2 else np.int64))
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (len(train_idx) // 64 + 1))
    from tqdm.auto import tqdm

    for _epoch in tqdm(range(epochs), desc=what, unit="epoch", disable=not progress):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            shift = torch.randint(-2, 3, (2,), generator=g).tolist()
            loss = class_loss(model(torch.roll(x[idx], shifts=shift, dims=(2, 3))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    ceiling = float(ceiling_of(logits(model, x[held_idx]), np.asarray(labels)[held_idx]))
    if progress:
        print(f"{what} trained on {len(train_idx)} real images; held-out accuracy {ceiling:.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"model": model.state_dict(), "ceiling": ceiling}, tmp)
    return model.eval(), ceiling
