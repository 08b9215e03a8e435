"""The exponential moving average of the generator's weights, with batch-norm statistics measured for it."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..nets.conditional import bind

STANDING_BATCHES = 16  # batches of noise that measure the EMA generator's batch-norm statistics


STANDING_SEED = 7


class EMA:
    """An exponential moving average of the generator's weights (``torch.optim.swa_utils.AveragedModel``).

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first
    updates, so short runs are not dominated by the random initialisation.
    Batch-norm statistics are not averaged: averaged weights need statistics
    of their own, which :meth:`calibrated` measures on fresh noise before the
    copy is used ("standing statistics", BigGAN; SWA's ``update_bn``). The
    average of the live generator's running statistics drew darker, flatter
    images: the same baseline checkpoint scored proxy FID 4.8 with it and 1.5
    with measured statistics in the race (README).
    """

    def __init__(self, G: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = AveragedModel(G, multi_avg_fn=self._average, use_buffers=False)
        self.model.eval()
        self._calibrated_at = -1  # self.updates when the statistics were last measured

    @torch.no_grad()
    def _average(self, averaged: List[torch.Tensor], current: List[torch.Tensor], _n) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for a, c in zip(averaged, current):
            a.lerp_(c, 1 - d)

    def update(self, G: nn.Module) -> None:
        self.model.update_parameters(G)
        self.updates += 1

    def load(self, state: Dict[str, torch.Tensor], updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = updates
        self._calibrated_at = -1  # measure again: checkpoints of older versions hold averaged statistics

    @torch.no_grad()
    def calibrated(self, z_dim: int, classes: int, batch_size: int, device: torch.device,
                   sets: Optional[torch.Tensor] = None) -> nn.Module:
        """The averaged generator, in eval mode, with batch-norm statistics measured for its weights.

        Each batch norm's running mean and variance become the plain average
        over ``STANDING_BATCHES`` training-sized batches of noise (and uniform
        labels for a conditional generator, or rows drawn from ``sets``, the
        data's (N, K) object sets, for a multi-label one) drawn from a fixed seed, so the
        result depends on the weights alone: not on when it is called, and
        without touching the training's random streams.
        """
        G = self.model.module
        norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms and self._calibrated_at != self.updates:
            momenta = [m.momentum for m in norms]
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
            G.train()
            noise = torch.Generator().manual_seed(STANDING_SEED)
            for _ in range(STANDING_BATCHES):
                z = torch.randn(batch_size, z_dim, generator=noise).to(device)
                if sets is not None:
                    y = sets[torch.randint(len(sets), (batch_size,), generator=noise).to(sets.device)].to(device)
                else:
                    y = torch.randint(classes, (batch_size,), generator=noise).to(device) if classes else None
                bind(G, y)(z)
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            self._calibrated_at = self.updates
        return G.eval()
