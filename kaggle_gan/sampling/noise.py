"""Noise for sampling: per-image seeds, the truncation trick, spherical interpolation, batch-invariant drawing.

Image ``k`` of a ``generate`` is ``G(noise(seed_k))``: its noise comes from
its own seed alone, so one image can be drawn again by itself.

Truncation (BigGAN's trick; our generators have no mapping network, so there
is no StyleGAN mean latent to pull toward). Each noise entry is drawn from
the standard normal restricted to ``[-t, t]``, by the inverse CDF of one
uniform draw, with ``t`` chosen so the entries' standard deviation is
``psi``: psi 1 is the untruncated normal, lower psi a narrower one. Why
this and not scaling z by psi: both give the same spread, but a truncated
entry always lies inside the range the generator was trained on, while a
scaled z lies on a sphere of radius psi * sqrt(z_dim) and has lost the
spread of the norms it was trained on. The inverse CDF also makes psi
continuous for a seed: the same seed at a lower psi gives a tamer version
of the same image, not another image.

Batch invariance: a convolution's float rounding depends on the batch size
(on this CPU, up to 78 of 3M uint8 values differed between one batch of
250 and 250 single images), but not on an image's place in the batch or on
its neighbours. So :func:`draw` always runs ``G`` on full batches of one
size, padding the last one, and an image drawn alone equals the same image
drawn among a thousand, bit for bit, on the same device and batch size.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterator, List, Optional, Sequence

import torch

from ..core.io import UserError

MAX_SEED = 2**63 - 1
DRAW_BATCH = 250  # the fixed batch that makes images independent of how many are drawn at once


def parse_seeds(text: str) -> List[int]:
    """``"0-999"``, ``"1,2,3"`` or a mix (``"0-9,20,30-32"``) -> the seeds in that order; duplicates refused."""
    seeds: List[int] = []
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UserError(f"--seeds: {part!r} is not a seed or a range; write e.g. 0-999 or 1,2,3")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first or last > MAX_SEED:
            raise UserError(f"--seeds: {part!r} is not an increasing range of seeds below 2**63")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise UserError("--seeds lists a seed twice, which would draw the same image twice; list each once")
    return seeds


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def truncated_sd(t: float) -> float:
    """Standard deviation of the standard normal restricted to [-t, t] (closed form)."""
    if math.isinf(t):
        return 1.0
    mass = 2 * _normal_cdf(t) - 1
    return math.sqrt(max(0.0, 1 - 2 * t * math.exp(-t * t / 2) / math.sqrt(2 * math.pi) / mass))


def truncation_threshold(psi: float) -> float:
    """The ``t`` whose truncated normal on [-t, t] has standard deviation ``psi`` (inf for psi 1)."""
    if not 0 < psi <= 1:
        raise UserError(f"--truncation must be in (0, 1] (1 = none; 0.7 is a common choice), got {psi}")
    if psi == 1:
        return math.inf
    lo, hi = 0.0, 40.0  # truncated_sd rises from 0 to 1 over t in (0, inf)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if truncated_sd(mid) < psi else (lo, mid)
    return (lo + hi) / 2


def noise(seeds: Sequence[int], z_dim: int, truncation: float = 1.0) -> torch.Tensor:
    """(len(seeds), z_dim) float32: row i from ``seeds[i]`` alone, truncated to standard deviation ``truncation``."""
    t = truncation_threshold(truncation)
    low = 0.0 if math.isinf(t) else _normal_cdf(-t)
    width = 1.0 - 2 * low
    rows = []
    for seed in seeds:
        if not 0 <= int(seed) <= MAX_SEED:
            raise UserError(f"seed {seed} is outside 0 .. 2**63 - 1")
        u = torch.rand(z_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(int(seed)))
        # u in [0, 1): keep the inverse CDF finite at u = 0
        rows.append(torch.special.ndtri((low + u * width).clamp(1e-300, 1 - 1e-16)))
    return torch.stack(rows).float() if rows else torch.zeros(0, z_dim)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t = 0, exactly) to ``b`` (t = 1, exactly), norms interpolated linearly.

    Gaussian noise lives near a sphere: a straight line between two draws
    passes through the low-norm middle the generator rarely saw; the great
    circle (scaled between the two norms) does not.
    """
    if t in (0, 1):
        return (a if t == 0 else b).clone()
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(), b64.norm()
    omega = torch.arccos(torch.dot(a64 / na, b64 / nb).clamp(-1, 1))
    if omega.item() < 1e-6:
        return ((1 - t) * a64 + t * b64).to(a.dtype)
    direction = (torch.sin((1 - t) * omega) * a64 / na + torch.sin(t * omega) * b64 / nb) / torch.sin(omega)
    return (direction * ((1 - t) * na + t * nb)).to(a.dtype)


def check_path(seeds: int, frames: int) -> None:
    """A walk needs two or more seeds and a frame for each."""
    if seeds < 2 or frames < seeds:
        raise UserError(f"--frames must be at least the number of seeds ({seeds}), and --seeds must list two or "
                        f"more; got {frames} frames for {seeds} seed(s)")


def path(z: torch.Tensor, frames: int) -> torch.Tensor:
    """(frames, z_dim): spherical interpolation through the rows of ``z`` in order; row i lands exactly on
    frame round(i * (frames - 1) / (len(z) - 1)), the first on frame 0 and the last on the last frame."""
    check_path(len(z), frames)
    stops = [round(i * (frames - 1) / (len(z) - 1)) for i in range(len(z))]
    out = []
    for i in range(len(z) - 1):
        span = stops[i + 1] - stops[i]
        out += [slerp(z[i], z[i + 1], k / span) for k in range(span)]
    out.append(z[-1].clone())
    return torch.stack(out)


def classes_of(seeds: Sequence[int], classes: int) -> Optional[torch.Tensor]:
    """A conditional generator's class per image: seed mod classes (image k of 0-999 is class (k - 1) mod classes)."""
    return torch.tensor([int(s) % classes for s in seeds]) if classes else None


def batches(count: int, size: int = DRAW_BATCH) -> Iterator[slice]:
    for first in range(0, count, size):
        yield slice(first, min(count, first + size))


@torch.no_grad()
def draw(G: Callable, z: torch.Tensor, device: torch.device, y: Optional[torch.Tensor] = None,
         batch_size: int = DRAW_BATCH) -> torch.Tensor:
    """``G(z[i])`` (with condition ``y[i]``: a class, or a row of a multi-hot set) for one chunk of at most ``batch_size`` rows, run as one full batch of
    ``batch_size`` (zero-padded) so the result does not depend on how many rows are drawn together."""
    n = len(z)
    if n > batch_size:
        raise ValueError(f"draw takes at most {batch_size} rows at once, got {n}")
    pad = batch_size - n
    zp = torch.cat([z, z.new_zeros(pad, z.shape[1])]) if pad else z
    args = (zp.to(device),)
    if y is not None:
        args += ((torch.cat([y, y.new_zeros((pad, *y.shape[1:]))]) if pad else y).to(device),)  # (B,) or (B, K)
    cudnn = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # autotuning may pick another algorithm, and other rounding, per process
    try:
        return G(*args)[:n]
    finally:
        torch.backends.cudnn.benchmark = cudnn
