"""What one training step computes (kaggle_gan.training.step.GANStep), on tiny cases with known answers."""
import numpy as np
import pytest
import torch
from torch import nn

from kaggle_gan.config import resolve
from kaggle_gan.data.sources import Batch
from kaggle_gan.experiments.toy import toy_config
from kaggle_gan.training.distributed import World
from kaggle_gan.training.ema import EMA
from kaggle_gan.training.losses import HingeLoss, StepContext
from kaggle_gan.training.step import GANStep

SMALL = {"model.g_width": 8, "model.d_width": 8, "model.resolution": 32, "train.batch_size": 4}


def gan_step(preset: str, **overrides) -> GANStep:
    cfg = resolve(preset, {**SMALL, **{k.replace("__", "."): v for k, v in overrides.items()}})
    return GANStep(cfg, torch.device("cpu"), World(), torch.Generator().manual_seed(0))


def test_the_hinge_loss_has_its_closed_form_values():
    r = torch.tensor([0.5, 2.0, -1.0])  # relu(1 - r) = 0.5, 0, 2
    f = torch.tensor([-2.0, 0.0, 1.5])  # relu(1 + f) = 0, 1, 2.5
    scores = iter([r, f])
    D = lambda x: next(scores)  # noqa: E731  the critic's outputs, real then fake
    loss, stats = HingeLoss().critic_loss(D, torch.zeros(3, 1), torch.zeros(3, 1), StepContext())
    assert loss.item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert stats["d_real"].item() == pytest.approx(0.5) and stats["d_fake"].item() == pytest.approx(-0.5 / 3)
    assert HingeLoss().generator_loss(lambda x: f, torch.zeros(3, 1), StepContext()).item() == pytest.approx(0.5 / 3)


def test_the_ema_copies_first_then_averages_with_a_warm_up():
    """The first update copies; update n (n earlier ones) moves the average by 1 - d toward the weights,
    d = min(decay, (1 + n) / (10 + n)): short runs are not dominated by the random initialisation."""
    net = nn.Linear(1, 1, bias=False)
    ema = EMA(net, decay=0.5)
    values = [3.0, 5.0, -1.0] + [2.0] * 10
    expected, a = [], None
    for n, w in enumerate(values):
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update(net)
        a = w if a is None else a + (1 - min(0.5, (1 + n) / (10 + n))) * (w - a)
        expected.append(a)
        assert ema.model.module.weight.item() == pytest.approx(a, rel=1e-6), n
    assert expected[1] == pytest.approx(3.0 + (1 - 2 / 11) * 2.0)  # warm-up: 2/11 of the old value kept
    assert expected[-1] == pytest.approx(2.0, abs=1e-3)  # then decay 0.5 halves the gap each update


@pytest.mark.parametrize("preset, optimiser", [("boss", torch.optim.Adam), ("wgan", torch.optim.RMSprop)])
def test_each_learning_rate_reaches_its_own_optimiser_and_networks(preset, optimiser):
    step = gan_step(preset, optim__lr_g=1e-3, optim__lr_d=3e-4)
    for opt, net, lr in ((step.opt_G, step.G, 1e-3), (step.opt_D, step.D, 3e-4)):
        assert isinstance(opt, optimiser)
        assert [g["lr"] for g in opt.param_groups] == [lr]
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}


@pytest.mark.parametrize("augment", ["", "translation"])
def test_the_generator_step_shows_the_critic_augmented_fakes_when_augmenting(augment):
    step = gan_step("boss", train__augment=augment)
    seen = {}
    step.G.register_forward_hook(lambda m, i, out: seen.__setitem__("fake", out.detach().clone()))
    step.D.register_forward_pre_hook(lambda m, args: seen.__setitem__("critic_input", args[0].detach().clone()))
    step.generator_step(None, None)
    fake, shown = seen["fake"], seen["critic_input"]
    assert fake.shape == shown.shape
    if augment:  # translation shifts each image and fills the gap with zeros
        assert not torch.equal(fake, shown) and (shown == 0).float().mean() > (fake == 0).float().mean()
    else:
        assert torch.equal(fake, shown)


def test_a_critic_learns_to_separate_two_point_clouds():
    """Critic steps alone (hinge loss) on real points far from the untrained generator's: the loss leaves 2."""
    cfg = toy_config("hinge", {"train.batch_size": "64"})
    step = GANStep(cfg, torch.device("cpu"), World(), torch.Generator().manual_seed(0))
    real = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * 0.1 + 4.0
    losses = [step.critic_step(real, None)["d_loss"].item() for _ in range(200)]
    assert losses[0] > 1.5
    assert min(losses[-20:]) < 1.5


def test_a_whole_step_is_a_critic_step_then_a_generator_step_on_its_turn():
    step = gan_step("strong")
    batch = Batch(torch.rand(4, 3, 32, 32) * 2 - 1)
    critic_only = step(batch, generator_turn=False)
    both = step(batch, generator_turn=True)
    assert "g_loss" not in critic_only and "g_loss" in both and "d_loss" in both
    assert step.ema.updates == 1  # the EMA follows the generator's steps only


def test_one_critic_pass_scores_as_two_where_nothing_couples_the_batch():
    from kaggle_gan.training.losses import _scores

    step = gan_step("strong")  # instance norm: each image normalised on its own
    assert step.ctx.joint and not gan_step("strong", train__joint_critic=False).ctx.joint  # on unless turned off
    assert not gan_step("baseline", train__joint_critic=True).ctx.joint  # batch norm couples a batch: two passes
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    joint = _scores(step.D, real, fake, StepContext(joint=True))
    two = _scores(step.D, real, fake, StepContext())
    torch.testing.assert_close(joint, two, rtol=1e-5, atol=1e-6)


def test_schedules_run_from_their_start_to_their_end_value_over_the_plan():
    from kaggle_gan.training.schedule import Plan, Schedules, cosine

    assert cosine(2.0, 0.2, 0) == 2.0 and cosine(2.0, 0.2, 1) == pytest.approx(0.2) and cosine(2.0, 0.2, 0.5) == 1.1
    cfg = resolve("boss", {**SMALL, "optim.lr_final": 0.25, "optim.beta2_final": 0.99, "loss.name": "rpgan",
                           "loss.gamma": 2.0, "loss.gamma_final": 0.2, "train.ema_halflife_kimg": 10.0})
    s = Schedules(cfg)
    start, end = s.values(0.0), s.values(1.0)
    assert (start["lr_g"], start["lr_d"], start["beta2"], start["gamma"]) == (2e-4, 4e-4, 0.9, 2.0)
    assert end["lr_g"] == pytest.approx(5e-5) and end["lr_d"] == pytest.approx(1e-4)
    assert end["beta2"] == pytest.approx(0.99) and end["gamma"] == pytest.approx(0.2)
    # the EMA's half-life: 0 at the start, 10k images after a tenth of the run: decay 0.5 per 10k images
    per_step = cfg.train.batch_size * cfg.loss.n_critic
    assert start["ema_decay"] == 0.0 and end["ema_decay"] == pytest.approx(0.5 ** (per_step / 10_000))
    assert not Schedules(resolve("boss-resnet", SMALL)).active  # today's presets: nothing scheduled, nothing touched
    plan = Plan(cap=1000, minutes=1.0)  # 60 s at 10 steps/s: 600 steps
    plan.measured(step=50, steps=50, seconds=5.0, elapsed=5.0)
    assert plan.steps == 600 and plan.progress(0) == 0 and plan.progress(599) == 1
    assert not plan.out_of_time(59.9) and plan.out_of_time(60)
    plan.measured(step=100, steps=50, seconds=45.0, elapsed=50.0)  # slower: 100 steps in 50 s, 10 s left
    assert plan.steps == 120
    assert Plan(cap=100, minutes=10.0, planned=400).steps == 100  # never beyond the cap


@pytest.mark.parametrize("budget", ["epochs", "minutes"])
def test_a_shortened_run_ends_with_its_learning_rate_annealed(prepared, tmp_path, budget):
    """train.epochs=1 (or a 3-second train.minutes) still reaches lr_final at its last step, not half-way."""
    from test_train import tiny

    from kaggle_gan.training.loop import Trainer

    short = {"train__epochs": 1} if budget == "epochs" else {"train__minutes": 0.05, "train__max_steps": 10_000}
    cfg = tiny("strong", optim__lr_final=0.1, train__log_every=1, **short)
    trainer = Trainer(cfg, prepared, tmp_path / budget, device="cpu", progress=False)
    seen = []
    original = trainer.gan.critic_step
    trainer.gan.critic_step = lambda *a: (seen.append(trainer.gan.opt_D.param_groups[0]["lr"]), original(*a))[1]
    trainer.run()
    assert seen[0] == pytest.approx(2e-4) and len(seen) == trainer.step
    if budget == "epochs":  # 96 images, batch 16: 6 steps, the last one at exactly lr_final
        assert trainer.step == 6 and seen[-1] == pytest.approx(2e-4 * 0.1)
    else:  # the plan is the time left at the measured speed: the last step lands near its end, never far off
        assert 2.9 <= trainer.elapsed <= 6 and trainer.step < 10_000
        assert trainer.plan.progress(trainer.step - 1) >= 0.9 and seen[-1] <= 2e-4 * 0.1 * 1.3


def test_a_spent_time_budget_is_a_finished_run_until_given_more_minutes(prepared, tmp_path):
    """The same command finds a run whose train.minutes are spent finished; a larger budget trains on."""
    from test_train import tiny

    from kaggle_gan.training.loop import Trainer

    def trainer(minutes):
        cfg = tiny("baseline", train__minutes=minutes, train__max_steps=100_000, train__log_every=1)
        return Trainer(cfg, prepared, tmp_path / "r", device="cpu", progress=False)

    first = trainer(0.02)
    first.run()
    assert first.elapsed >= 1.2 and 0 < first.step < 100_000
    again = trainer(0.02)
    again.run()
    assert again.step == first.step  # nothing more to train
    longer = trainer(0.04)
    longer.run()
    assert longer.step > first.step and longer.elapsed >= 2.4


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["boss"])
def test_fp16_with_gradient_scaling_trains_like_bf16(preset, prepared, tmp_path):
    """What a T4 or P100 runs (fp16 autocast, gradient scaling), here on CPU autocast: 200 steps, no NaN, a
    scaler that does not collapse, and the same losses as bf16 within the tolerance stated below."""
    import pandas as pd
    from test_train import tiny

    from kaggle_gan.training.loop import Trainer

    logs = {}
    for amp in ("bf16", "fp16"):
        trainer = Trainer(tiny(preset, train__amp=amp, train__max_steps=200, train__log_every=20), prepared,
                          tmp_path / amp, device="cpu", progress=False)
        assert trainer.gan.precision.name == amp and trainer.gan.scaled == (amp == "fp16")
        trainer.run()
        logs[amp] = pd.read_csv(tmp_path / amp / "log.csv")
        assert np.isfinite(logs[amp][["d_loss", "g_loss"]].to_numpy()).all()
        if amp == "fp16":  # skipped steps halve the scale; a collapse would drive it towards 0
            assert trainer.gan.scaler_D.get_scale() >= 2.0 ** 8 and trainer.gan.scaler_G.get_scale() >= 2.0 ** 8
    # the two half precisions round differently, so the runs drift apart; their losses stay close over 200 steps:
    # the mean of the last 100 steps within 0.15 (hinge losses sit near 1-2, the relativistic near 0.69)
    late = {amp: log[log.step > 100][["d_loss", "g_loss"]].mean() for amp, log in logs.items()}
    assert (late["fp16"] - late["bf16"]).abs().max() < 0.15, late
