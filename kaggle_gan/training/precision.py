"""Numeric precision and optimisers: the choices a training step makes about arithmetic, in one place."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..config import Config


@dataclass
class Precision:
    dtype: Optional[torch.dtype]
    device_type: str = "cuda"

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def choose_precision(amp: str, device: torch.device) -> Precision:
    """bf16 on GPUs with bf16 tensor cores (compute capability 8.0+: A100, H100, RTX 30xx+), fp16 with
    gradient scaling on older ones (T4, P100, V100, where bf16 is emulated and slow); fp32 on CPU unless
    ``amp`` names a precision (CPU autocast: slower here, but how a T4's fp16 step is tested without one)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return Precision(None, device.type)
    if amp == "auto":
        return Precision(torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16)
    return Precision({"bf16": torch.bfloat16, "fp16": torch.float16}[amp], device.type)


def make_optimizer(params, cfg: Config, lr: float, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    # fused kernels on CUDA, multi-tensor (foreach) on CPU; the plain per-tensor loop when fast=False
    kw = {"fused": True} if (cfg.train.fast and device.type == "cuda") else {"foreach": cfg.train.fast}
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(o.beta1, o.beta2), **kw)
    kw.pop("fused", None)
    return torch.optim.RMSprop(params, lr=lr, foreach=cfg.train.fast)


def drop_parameters(state: Dict, names: List[str], dropped: List[str]) -> Dict:
    """An optimiser's ``state_dict`` without the parameters named in ``dropped``.

    ``names`` are the parameter names in the order the optimiser was given
    them (one parameter group); the kept ones are renumbered in that order, so
    a checkpoint of a model that has since lost parameters loads into an
    optimiser of today's model with every other moment estimate intact.
    """
    keep = [i for i, n in enumerate(names) if n not in dropped]
    (group,) = state["param_groups"]
    return {"state": {new: state["state"][old] for new, old in enumerate(keep) if old in state["state"]},
            "param_groups": [{**group, "params": list(range(len(keep)))}]}
