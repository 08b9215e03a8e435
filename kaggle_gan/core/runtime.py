"""Device choice and CPU threading, decided in one place."""
from __future__ import annotations

import os

from .io import UserError


def available_cores() -> int:
    """Cores this process may use (respects taskset/cgroup affinity, unlike ``os.cpu_count``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_device(name: str = "auto") -> "torch.device":  # noqa: F821
    """``auto`` -> cuda when present, else cpu; ``cuda`` without a GPU is a clear error.

    On CPU the intra-op thread count is set by :func:`cpu_threads`.
    """
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("DEVICE=cuda but no CUDA GPU is visible; use DEVICE=cpu or DEVICE=auto")
    if name not in ("cpu",) and not name.startswith("cuda") and name != "mps":
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    device = torch.device(name)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    return device


def cpu_threads() -> int:
    """Intra-op threads on CPU: ``OMP_NUM_THREADS`` when the user set it, else every available core.

    On a machine shared with other jobs fewer threads can be much faster:
    an op split over N threads waits for the slowest to be scheduled.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return available_cores()


def random_state(gen: "torch.Generator", device: "torch.device") -> dict:  # noqa: F821
    """Every random state a step draws from: torch's global CPU (and CUDA) state and the run's generator."""
    import torch

    rng = {"torch": torch.get_rng_state(), "loop": gen.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_random_state(rng: dict, gen: "torch.Generator", device: "torch.device") -> None:  # noqa: F821
    """Put back what :func:`random_state` returned (states saved on any device load on any other)."""
    import torch

    torch.set_rng_state(rng["torch"].cpu())
    gen.set_state(rng["loop"].cpu())  # a CUDA generator's state is a CPU ByteTensor too
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
