import pytest
import torch

from kaggle_gan.config import resolve
from kaggle_gan.core.io import RunLock, UserError
from kaggle_gan.sampling.runs import load_generator
from kaggle_gan.training.checkpoint import load_latest
from kaggle_gan.training.loop import Trainer, train

TINY = {"model.g_width": 8, "model.d_width": 8, "model.resolution": 32, "train.batch_size": 16,
        "train.log_every": 2, "train.ckpt_minutes": 100.0}


def tiny(preset, **more):
    return resolve(preset, {**TINY, **{k.replace("__", "."): v for k, v in more.items()}})


@pytest.mark.parametrize("preset", ["baseline", "medium", "wgan", "strong"])
def test_one_step_of_each_preset_changes_weights_and_keeps_them_finite(preset, prepared, tmp_path):
    cfg = tiny(preset)
    t = Trainer(cfg, prepared, tmp_path / preset, device="cpu", progress=False)
    before_D = [p.detach().clone() for p in t.gan.D.parameters()]
    before_G = [p.detach().clone() for p in t.gan.G.parameters()]
    t.step = cfg.loss.n_critic - 1  # the next step is also a generator step
    t.train_step(t._batch(torch.randperm(len(t.data)), 0))
    for old, new in ((before_D, list(t.gan.D.parameters())), (before_G, list(t.gan.G.parameters()))):
        assert any(not torch.equal(a, b) for a, b in zip(old, new))
        assert all(torch.isfinite(p).all() for p in new)
    if preset == "wgan":
        assert max(p.abs().max().item() for p in t.gan.D.parameters()) <= cfg.loss.clip


def test_run_writes_its_outputs(prepared, tmp_path):
    run = tmp_path / "run"
    out = train(tiny("baseline", train__max_steps=8, train__sample_every=4), prepared, run, device="cpu", progress=False)
    assert out == run / "generator.pt"
    for f in ("config.json", "log.csv", "loss.png", "samples/step_0000004.png", "samples/final.png", "checkpoints/last.pt"):
        assert (run / f).is_file(), f
    G, cfg, step = load_generator(run, torch.device("cpu"))
    assert step == 8 and cfg.model.resolution == 32


def test_resume_continues_exactly(prepared, tmp_path):
    """Stopping at step 6 and resuming to 12 gives bit-identical weights to 12 steps in one go."""
    full = train(tiny("strong", train__max_steps=12), prepared, tmp_path / "a", device="cpu", progress=False)
    train(tiny("strong", train__max_steps=6), prepared, tmp_path / "b", device="cpu", progress=False)
    (tmp_path / "b" / "generator.pt").unlink()
    resumed = train(tiny("strong", train__max_steps=12), prepared, tmp_path / "b", device="cpu", progress=False)
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 12
    for k in a["G"]:
        assert torch.equal(a["G"][k], b["G"][k]), k
    sa, sb = load_latest(tmp_path / "a" / "checkpoints"), load_latest(tmp_path / "b" / "checkpoints")
    for k in sa["D"]:
        assert torch.equal(sa["D"][k], sb["D"][k]), k


def test_resume_refuses_a_different_architecture(prepared, tmp_path):
    train(tiny("baseline", train__max_steps=2), prepared, tmp_path / "r", device="cpu", progress=False)
    with pytest.raises(UserError, match="model.g_width"):
        Trainer(resolve("baseline", {**TINY, "model.g_width": 16}), prepared, tmp_path / "r", device="cpu")


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_checkpoint(prepared, tmp_path):
    run = tmp_path / "nan"
    train(tiny("baseline", train__max_steps=4), prepared, run, device="cpu", progress=False)
    (run / "generator.pt").unlink()
    t = Trainer(tiny("baseline", train__max_steps=8), prepared, run, device="cpu", progress=False)
    with torch.no_grad():
        t.gan.D.body[0].weight.fill_(float("nan"))
    with pytest.raises(UserError, match="diverged at step"):
        t.run()
    assert load_latest(run / "checkpoints")["step"] == 4
    assert not (run / "generator.pt").exists()


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(UserError, match="in use by pid"):
            with RunLock(tmp_path):
                pass


def _bn_gap(G, z):
    """How far eval mode (running statistics) is from train mode (the batch's own statistics) on ``z``."""
    with torch.no_grad():
        G.train()
        batch_stats = G(z)
        G.eval()
        return (G(z) - batch_stats).abs().mean().item()


def test_ema_generator_gets_batch_norm_statistics_measured_for_its_weights():
    """Averaged weights with averaged running statistics draw washed-out images (the race's FID); measured
    statistics make eval mode agree with what train-mode batch norm computes for a large batch."""
    from kaggle_gan.nets.models import build_models
    from kaggle_gan.training.ema import EMA

    cfg = resolve("baseline", TINY).model
    torch.manual_seed(0)
    G, _ = build_models(cfg)
    ema = EMA(G, 0.9)
    for _ in range(5):  # weights move; the copy's buffers stay as built (mean 0, variance 1)
        with torch.no_grad():
            for p in G.parameters():
                p.mul_(1.5).add_(0.2)
        ema.update(G)
    z = torch.randn(1024, cfg.z_dim, generator=torch.Generator().manual_seed(1))
    stale = _bn_gap(ema.model.module, z)
    rng = torch.get_rng_state()
    calibrated = ema.calibrated(cfg.z_dim, 0, 64, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng), "calibration must not draw from the global stream"
    assert not calibrated.training
    first = {k: v.clone() for k, v in calibrated.state_dict().items()}
    measured = _bn_gap(calibrated, z)  # (its train-mode pass moves the running statistics again)
    assert measured < 0.2 * stale, (measured, stale)
    ema.load(ema.model.state_dict(), ema.updates)  # forces a second measurement: same noise, same numbers
    again = ema.calibrated(cfg.z_dim, 0, 64, torch.device("cpu")).state_dict()
    for k in first:
        assert torch.equal(first[k], again[k]), k


def test_checkpoint_and_generator_hold_the_measured_statistics(prepared, tmp_path):
    out = train(tiny("baseline", train__max_steps=4), prepared, tmp_path / "r", device="cpu", progress=False)
    exported = torch.load(out, weights_only=True)["G"]
    saved = {k[len("module."):]: v for k, v in load_latest(tmp_path / "r" / "checkpoints")["G_ema"].items()
             if k.startswith("module.")}
    means = [k for k in exported if k.endswith("running_mean")]
    assert means and any(exported[k].abs().sum() > 0 for k in means)  # measured, not the initial zeros
    for k in exported:
        assert torch.equal(exported[k], saved[k]), k
