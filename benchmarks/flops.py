"""Work done, against what the device can do: FLOPs of a training step and a matrix-multiply peak.

``bench.py`` divides each pipeline's images/s into achieved GFLOP/s with
:func:`count_flops` and sets that against :func:`matmul_peak`, measured on the
same device in the same run: the physical limit a speed goal is set against.

The counter is ``torch.utils.flop_counter.FlopCounterMode``: it counts the
multiply-adds of matrix products and convolutions, forward and backward (2
FLOPs each), as dispatched. Element-wise work (activations, normalisation,
the optimiser) is not counted; it is memory-bound and small next to the
convolutions. So the share of peak is the share of the device's matrix-multiply
rate that the step's convolutions and products achieve.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode


class _GlobalOnly:
    """A stand-in for the counter's module tracker: every FLOP is attributed to the total alone.

    The tracker's backward hooks fail inside ``torch.autograd.grad`` (the
    gradient penalty of WGAN-GP and R1: "A leaf node was passed to
    _will_engine_execute_node"), and only the total is wanted here.
    """

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return None


def count_flops(work: Callable[[], object]) -> int:
    """FLOPs that ``work()`` dispatches (matrix products and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        work()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: Optional[torch.dtype] = None, seconds: float = 0.5,
                repeats: int = 5) -> float:
    """Median GFLOP/s of square matrix products in ``dtype`` (float32 when None) on ``device``.

    The side is 8192 on a GPU (large enough for its tensor cores to saturate)
    and 1024 on a CPU (about 2 GFLOP a product: tens of milliseconds on 2
    cores). Each of ``repeats`` timings runs about ``seconds`` of products
    after one untimed product.
    """
    dtype = dtype or torch.float32
    n = 8192 if device.type == "cuda" else 1024
    # fp32 convolutions run in TF32 on Ampere and later (cuDNN's default): the fp32 peak they meet is TF32's
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = old or tf32
    try:
        return _timed_products(device, dtype, n, seconds, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _timed_products(device: torch.device, dtype: torch.dtype, n: int, seconds: float, repeats: int) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    start = time.perf_counter()
    torch.mm(a, b)
    sync()
    per = max(time.perf_counter() - start, 1e-6)
    products = max(1, int(seconds / per))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(products):
            torch.mm(a, b)
        sync()
        rates.append(2 * n**3 * products / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)
