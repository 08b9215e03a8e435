import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kaggle_gan.config import LossConfig
from kaggle_gan.training.losses import BCELoss, StepContext, WGANLoss, build_loss, gradient_penalty


class Linear(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) * self.w.flatten()).sum(1) + 0.3


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(Linear(w), real, fake, StepContext(torch.Generator().manual_seed(1)))
    assert torch.allclose(gp, (w.norm() - 1) ** 2, rtol=1e-5)


def test_gradient_penalty_runs_in_fp32_when_training_in_fp16():
    """Under fp16 training the penalty's double backward leaves autocast: the closed form holds to fp32 accuracy.

    CPU autocast in bfloat16 stands in for the GPU's half precision: inside it the
    linear layer's input gradient is rounded, outside it (``fp16=True``) it is exact.
    """
    torch.manual_seed(0)
    D = nn.Sequential(nn.Flatten(), nn.Linear(48, 1))
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    exact = (D[1].weight.norm() - 1) ** 2
    half = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    in_fp32 = gradient_penalty(D, real, fake, StepContext(torch.Generator().manual_seed(1), half, fp16=True))
    rounded = gradient_penalty(D, real, fake, StepContext(torch.Generator().manual_seed(1), half, fp16=False))
    assert torch.allclose(in_fp32, exact, rtol=1e-6)
    assert not torch.allclose(rounded, exact, rtol=1e-6)


def test_gradient_penalty_draws_one_mixing_weight_per_image():
    """With D(x) = ||x||^2 / 2 the gradient is x itself, so each image's norm reveals its own mix."""
    class Half(nn.Module):
        def forward(self, x):
            return 0.5 * x.flatten(1).pow(2).sum(1)
    real, fake = torch.ones(64, 1, 1, 1), torch.zeros(64, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    alphas = torch.rand(64, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    gp = gradient_penalty(Half(), real, fake, StepContext(g))
    assert torch.allclose(gp, ((alphas.flatten() - 1) ** 2).mean(), rtol=1e-5)
    assert alphas.unique().numel() == 64


def test_bce_matches_sigmoid_plus_bceloss():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.Flatten(0))
    real, fake = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    loss, _ = BCELoss().critic_loss(D, real, fake, StepContext())
    p_real, p_fake = torch.sigmoid(D(real)), torch.sigmoid(D(fake))
    want = (F.binary_cross_entropy(p_real, torch.ones(8)) + F.binary_cross_entropy(p_fake, torch.zeros(8))) / 2
    assert torch.allclose(loss, want, rtol=1e-5)
    g = BCELoss().generator_loss(D, fake, StepContext())
    assert torch.allclose(g, F.binary_cross_entropy(p_fake, torch.ones(8)), rtol=1e-5)


def test_wgan_clips_the_critic_and_estimates_the_distance():
    D = nn.Sequential(nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))
    with torch.no_grad():
        D[1].weight.fill_(0.5)
        D[1].bias.fill_(0.0)
    loss = WGANLoss(clip=0.01)
    real, fake = torch.ones(4, 4), torch.zeros(4, 4)
    d_loss, stats = loss.critic_loss(D, real, fake, StepContext())
    assert torch.isclose(stats["wdist"], torch.tensor(2.0)) and torch.isclose(d_loss, torch.tensor(-2.0))
    loss.after_critic_step(D)
    assert D[1].weight.abs().max() <= 0.01


def test_build_loss_gives_each_objective_with_its_settings():
    from kaggle_gan.training.losses import HingeLoss, WGANGPLoss, WithClassifier, WithR1

    assert type(build_loss(LossConfig(name="bce"))) is BCELoss
    wgan = build_loss(LossConfig(name="wgan", clip=0.02))
    assert type(wgan) is WGANLoss and wgan.clip == 0.02
    gp = build_loss(LossConfig(name="wgan-gp", gp_lambda=5.0))
    assert type(gp) is WGANGPLoss and gp.gp_lambda == 5.0 and gp.clip == 0.0 and gp.double_backward
    r1 = build_loss(LossConfig(name="hinge", r1_gamma=2.0))
    assert type(r1) is WithR1 and type(r1.inner) is HingeLoss and r1.gamma == 2.0 and r1.double_backward
    aux = build_loss(LossConfig(name="hinge", aux_weight=0.5))
    assert type(aux) is WithClassifier and aux.weight == 0.5 and not aux.double_backward


def test_critic_diagnostics_of_known_scores():
    from kaggle_gan.training.losses import diagnostics

    r, f = torch.tensor([2.0, -1.0, 3.0]), torch.tensor([-2.0, 1.0, -4.0])
    d = diagnostics(r, f)
    assert d["d_real_sd"].item() == pytest.approx(float(np.std([2, -1, 3])))
    assert d["d_fake_sd"].item() == pytest.approx(float(np.std([-2, 1, -4])))
    assert d["d_sign_ok"].item() == pytest.approx(2 / 3)  # 2 of 3 real above 0, 2 of 3 fake below
    assert d["d_gap"].item() == pytest.approx(4 / 3 + 5 / 3)
    flat = diagnostics(torch.full((4,), 0.3), torch.full((4,), 0.3))  # the flat critic the README describes
    assert flat["d_real_sd"].item() == 0 and flat["d_sign_ok"].item() == 0.5 and flat["d_gap"].item() == 0
    one = diagnostics(torch.tensor([1.0]), torch.tensor([-1.0]))  # one example per rank under torchrun
    assert one["d_real_sd"].item() == 0


def test_the_relativistic_loss_and_its_two_penalties_have_their_closed_forms():
    """A linear critic D(x) = <w, x> + 0.3: its input gradient is w at every image, so R1 = R2 = ||w||^2."""
    from kaggle_gan.training.losses import RelativisticLoss

    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    D = Linear(w)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    r, f = D(real), D(fake)
    for joint in (False, True):
        loss, stats = RelativisticLoss(gamma=2.0).critic_loss(D, real, fake, StepContext(joint=joint))
        want = F.softplus(-(r - f)).mean() + 2.0 / 2 * 2 * w.pow(2).sum()
        assert torch.allclose(loss, want, rtol=1e-5) and torch.allclose(stats["r1"], w.pow(2).sum(), rtol=1e-5)
        assert torch.allclose(stats["r2"], stats["r1"]) and torch.allclose(stats["gap"], (r - f).mean())
    g = RelativisticLoss(gamma=2.0).generator_loss(D, fake, StepContext(), real)
    assert torch.allclose(g, F.softplus(-(f - r)).mean(), rtol=1e-6)
    # the generator's gradient flows through the fakes only: the real scores are constants
    fake_leaf = fake.clone().requires_grad_(True)
    RelativisticLoss(gamma=2.0).generator_loss(D, fake_leaf, StepContext(), real).backward()
    sig = torch.sigmoid(-(f - r)).detach()
    assert torch.allclose(fake_leaf.grad, (-sig / len(f))[:, None, None, None] * w, rtol=1e-5)
    with pytest.raises(ValueError, match="pass real"):
        RelativisticLoss(1.0).generator_loss(D, fake, StepContext())
    assert type(build_loss(LossConfig(name="rpgan", gamma=3.0))).__name__ == "RelativisticLoss"
