"""GAN objectives behind one interface.

The training loop asks a loss object for the critic's loss and the
generator's loss and calls its hook after each critic step; a new objective
is a new class here, never a new loop.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class StepContext:
    """What a loss may need from the loop besides the networks and images.

    ``autocast`` opens the mixed-precision region (a null context in fp32);
    ``fp16`` says the loop trains in float16 with gradient scaling, where
    penalties on input gradients run in fp32 (see :func:`input_gradient`);
    ``generator`` draws its randomness. Under DDP every rank's ``generator``
    is in the same state and the batch is rank ``rank``'s slice of
    ``world_size`` equal slices: a loss draws for the whole global batch and
    keeps its slice, so ranks draw independent values and the same ones a
    single process would.
    """

    generator: Optional[torch.Generator] = None
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    fp16: bool = False
    rank: int = 0
    world_size: int = 1
    joint: bool = False  # score real and fake in one critic pass (only for a critic without batch norm)


class GANLoss:
    name = ""
    #: True when the critic loss differentiates through a gradient (no compiled critic then)
    double_backward = False

    def critic_loss(self, D: nn.Module, real: Tensor, fake: Tensor, ctx: StepContext) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Loss to minimise for the critic, and detached extra statistics to log."""
        raise NotImplementedError

    def generator_loss(self, D: nn.Module, fake: Tensor, ctx: StepContext, real: Optional[Tensor] = None) -> Tensor:
        """Loss to minimise for the generator; ``real`` is the step's real batch (a relativistic loss needs it)."""
        raise NotImplementedError

    def after_critic_step(self, D: nn.Module) -> None:
        """Hook after the critic's optimiser step (weight clipping lives here)."""


def _scores(D: nn.Module, real: Tensor, fake: Tensor, ctx: StepContext) -> Tuple[Tensor, Tensor]:
    """D's scores of ``real`` and ``fake``: one pass over both when ``ctx.joint`` (half the kernel launches,
    one spectral-norm power iteration), else two passes, as the sample code does, so that a batch-norm
    critic normalises real and fake batches apart."""
    with ctx.autocast():
        if ctx.joint:
            scores = D(torch.cat([real, fake])).float()
            return scores[: len(real)], scores[len(real):]
        return D(real).float(), D(fake).float()


DIAGNOSTICS = ("d_real_sd", "d_fake_sd", "d_sign_ok", "d_gap")


def diagnostics(r: Tensor, f: Tensor) -> Dict[str, Tensor]:
    """What a critic's raw scores say beyond the loss, from outputs the step already has (no extra pass).

    ``d_real_sd`` and ``d_fake_sd``: the spread of the scores within a batch;
    ``d_sign_ok``: the share of real scores above 0 and fake below 0 (half
    each; for a Wasserstein critic only the gap means anything); ``d_gap``:
    mean real minus mean fake score. A flat critic shows both spreads near 0,
    ``d_sign_ok`` near 0.5 and a gap near 0 while the loss sits at its
    equilibrium value (2 for hinge, log 2 for BCE).
    """
    # population sd (correction 0): a rank with one example under torchrun gives 0, not NaN
    return {"d_real_sd": r.detach().std(correction=0), "d_fake_sd": f.detach().std(correction=0),
            "d_sign_ok": ((r.detach() > 0).float().mean() + (f.detach() < 0).float().mean()) / 2,
            "d_gap": (r.detach().mean() - f.detach().mean())}


class BCELoss(GANLoss):
    """The sample's non-saturating GAN loss; D's loss is the mean of real and fake BCE."""

    name = "bce"

    def critic_loss(self, D, real, fake, ctx):
        r, f = _scores(D, real, fake, ctx)
        loss = (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))) / 2
        return loss, {"d_real": torch.sigmoid(r).mean().detach(), "d_fake": torch.sigmoid(f).mean().detach(),
                      **diagnostics(r, f)}

    def generator_loss(self, D, fake, ctx, real=None):
        with ctx.autocast():
            f = D(fake).float()
        return F.binary_cross_entropy_with_logits(f, torch.ones_like(f))


class WGANLoss(GANLoss):
    """Wasserstein loss; with ``clip`` > 0 the critic's weights are clipped (Arjovsky et al. 2017)."""

    name = "wgan"

    def __init__(self, clip: float = 0.01):
        self.clip = clip

    def critic_loss(self, D, real, fake, ctx):
        r, f = _scores(D, real, fake, ctx)
        wdist = r.mean() - f.mean()
        return -wdist, {"wdist": wdist.detach(), **diagnostics(r, f)}

    def generator_loss(self, D, fake, ctx, real=None):
        with ctx.autocast():
            return -D(fake).float().mean()

    @torch.no_grad()
    def after_critic_step(self, D):
        if self.clip > 0:
            for p in D.parameters():
                p.clamp_(-self.clip, self.clip)


def input_gradient(D: nn.Module, x: Tensor, ctx: StepContext) -> Tensor:
    """grad_x sum(D(x)) in fp32, kept in the graph so a penalty on it can be minimised.

    In bf16 the pass runs under autocast like the rest of the step. In fp16
    it runs in fp32: a gradient of a gradient in half precision overflows,
    the gradient scaler then skips step after step and shrinks its scale
    until the input gradient underflows to zero (seen on an H100: WGAN-GP's
    penalty read exactly 1, ||grad|| = 0, within 200 steps, then diverged).
    """
    x = x.detach().float().requires_grad_(True)
    with contextlib.nullcontext() if ctx.fp16 else ctx.autocast():
        out = D(x)
    (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return grad.float()


def gradient_penalty(D: nn.Module, real: Tensor, fake: Tensor, ctx: StepContext) -> Tensor:
    """E[(||grad_x D(x)||_2 - 1)^2] at x = a*real + (1-a)*fake, one a ~ U(0,1) per image."""
    n = real.shape[0]
    # one weight per example, broadcast over the rest: (n, 1, 1, 1) for images, (n, 1) for points
    alpha = torch.rand(n * ctx.world_size, *[1] * (real.dim() - 1), device=real.device, generator=ctx.generator)
    alpha = alpha[ctx.rank * n : (ctx.rank + 1) * n]
    grad = input_gradient(D, torch.lerp(fake.detach().float(), real.detach().float(), alpha), ctx)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


class WGANGPLoss(WGANLoss):
    """Wasserstein loss with a gradient penalty (Gulrajani et al. 2017), no clipping."""

    name = "wgan-gp"
    double_backward = True

    def __init__(self, gp_lambda: float = 10.0):
        super().__init__(clip=0.0)
        self.gp_lambda = gp_lambda

    def critic_loss(self, D, real, fake, ctx):
        loss, stats = super().critic_loss(D, real, fake, ctx)
        gp = gradient_penalty(D, real, fake, ctx)
        stats["gp"] = gp.detach()
        return loss + self.gp_lambda * gp, stats


class HingeLoss(GANLoss):
    """Hinge loss (Lim & Ye 2017; used by SN-GAN, BigGAN)."""

    name = "hinge"

    def critic_loss(self, D, real, fake, ctx):
        r, f = _scores(D, real, fake, ctx)
        return F.relu(1 - r).mean() + F.relu(1 + f).mean(), {"d_real": r.mean().detach(), "d_fake": f.mean().detach(),
                                                               **diagnostics(r, f)}

    def generator_loss(self, D, fake, ctx, real=None):
        with ctx.autocast():
            return -D(fake).float().mean()


class RelativisticLoss(GANLoss):
    """Relativistic pairing with R1 and R2 (R3GAN: Huang et al., NeurIPS 2024).

    Critic: softplus(-(D(real) - D(fake))), each real image against the fake
    beside it, plus ``gamma / 2`` E||grad D||^2 at the real images (R1) and at
    the fakes (R2). Generator: softplus(-(D(fake) - D(real))). The critic is
    judged by the gap between pairs, not by each score's sign, so it cannot go
    flat at a fixed point the way a saturated hinge critic sits at 2; the two
    zero-centred penalties keep it smooth on both distributions. ``gamma`` is
    set by the step's schedule (``loss.gamma`` -> ``loss.gamma_final``).

    The penalties' input gradients come from the same forward pass as the
    scores (one pass over real and fake, differentiated twice); in fp16 that
    pass runs in fp32, as :func:`input_gradient` explains.
    """

    name = "rpgan"
    double_backward = True

    def __init__(self, gamma: float):
        self.gamma = gamma

    def critic_loss(self, D, real, fake, ctx):
        real = real.detach().float().requires_grad_(True)
        fake = fake.detach().float().requires_grad_(True)
        with contextlib.nullcontext() if ctx.fp16 else ctx.autocast():
            if ctx.joint:
                scores = D(torch.cat([real, fake])).float()
                r, f = scores[: len(real)], scores[len(real):]
            else:
                r, f = D(real).float(), D(fake).float()
        gap = r - f
        grad_r, grad_f = torch.autograd.grad((r.sum(), f.sum()), (real, fake), create_graph=True)
        r1 = grad_r.float().flatten(1).pow(2).sum(1).mean()
        r2 = grad_f.float().flatten(1).pow(2).sum(1).mean()
        loss = F.softplus(-gap).mean() + self.gamma / 2 * (r1 + r2)
        return loss, {"r1": r1.detach(), "r2": r2.detach(), "gap": gap.detach().mean(), **diagnostics(r, f)}

    def generator_loss(self, D, fake, ctx, real=None):
        if real is None:
            raise ValueError("the relativistic loss compares fakes with the step's real batch: pass real")
        with ctx.autocast():
            f = D(fake).float()
            with torch.no_grad():  # the real images' scores are constants for the generator
                r = D(real).float()
        return F.softplus(-(f - r)).mean()


def r1_penalty(D: nn.Module, real: Tensor, ctx: StepContext) -> Tensor:
    """E[||grad_x D(x)||^2] at the real images (Mescheder et al. 2018), a zero-centred penalty."""
    return input_gradient(D, real, ctx).flatten(1).pow(2).sum(dim=1).mean()


class WithR1(GANLoss):
    """Any loss plus ``gamma / 2 * R1`` on the critic: a penalty composed onto an objective, not a new objective."""

    double_backward = True

    def __init__(self, inner: GANLoss, gamma: float):
        self.inner, self.gamma = inner, gamma
        self.name = inner.name

    def critic_loss(self, D, real, fake, ctx):
        loss, stats = self.inner.critic_loss(D, real, fake, ctx)
        r1 = r1_penalty(D, real, ctx)
        stats["r1"] = r1.detach()
        return loss + self.gamma / 2 * r1, stats

    def generator_loss(self, D, fake, ctx, real=None):
        return self.inner.generator_loss(D, fake, ctx, real)

    def after_critic_step(self, D):
        self.inner.after_critic_step(D)


class WithClassifier(GANLoss):
    """Any loss plus an auxiliary classifier's cross-entropy (AC-GAN, Odena et al. 2017), weighted ``weight``.

    For conditional runs: ``D`` is the critic bound to the batch's labels
    (:class:`kaggle_gan.nets.conditional.Bound`); the classifier head's
    cross-entropy against them is read from the inner loss's own first pass. The critic learns to
    classify real images only (classifying fakes too rewards it for what the
    generator got wrong, and costs diversity); the generator is pushed towards
    images the head reads as the class it was asked for.
    """

    def __init__(self, inner: GANLoss, weight: float):
        self.inner, self.weight = inner, weight
        self.name = inner.name
        self.double_backward = inner.double_backward

    def critic_loss(self, D, real, fake, ctx):
        # the head reads the real images in the inner loss's own first pass (real first, or real then fake
        # in one pass): no forward of its own, no second augmentation or spectral-norm power iteration
        loss, stats = self.inner.critic_loss(D.keeping(), real, fake, ctx)
        ce = D.first_class_loss()
        D.keep = False
        stats["aux_real"] = ce.detach()
        return loss + self.weight * ce, stats

    def generator_loss(self, D, fake, ctx, real=None):
        loss = self.inner.generator_loss(D.keeping(), fake, ctx, real)  # its first pass is the fakes'
        ce = D.first_class_loss()
        D.keep = False
        return loss + self.weight * ce

    def after_critic_step(self, D):
        self.inner.after_critic_step(D)


def build_loss(loss_cfg) -> GANLoss:
    """The loss object for a :class:`kaggle_gan.config.LossConfig` (with R1 when ``r1_gamma`` > 0)."""
    if loss_cfg.name == "bce":
        loss: GANLoss = BCELoss()
    elif loss_cfg.name == "wgan":
        loss = WGANLoss(loss_cfg.clip)
    elif loss_cfg.name == "wgan-gp":
        loss = WGANGPLoss(loss_cfg.gp_lambda)
    elif loss_cfg.name == "hinge":
        loss = HingeLoss()
    elif loss_cfg.name == "rpgan":
        loss = RelativisticLoss(loss_cfg.gamma)
    else:
        raise ValueError(f"unknown loss.name {loss_cfg.name!r}; choose bce, wgan, wgan-gp, hinge or rpgan")
    gamma = getattr(loss_cfg, "r1_gamma", 0.0)
    if gamma > 0:
        loss = WithR1(loss, gamma)
    aux = getattr(loss_cfg, "aux_weight", 0.0)
    return WithClassifier(loss, aux) if aux > 0 else loss
