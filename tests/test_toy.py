"""The 2-D toy: the coverage metric on hand-made points, WGAN-GP covering the ring, exact resume on points."""
import numpy as np
import pytest
import torch

from kaggle_gan.core.io import UserError
from kaggle_gan.experiments.toy import Points, coverage, mixture, toy, toy_config
from kaggle_gan.training.loop import Trainer, train


def test_every_mode_hit_equally_is_full_coverage():
    centres, sigma = mixture("ring8")
    points = np.repeat(centres, 50, axis=0) + sigma * 0.5  # half a sigma off each centre
    cov = coverage(points, centres, sigma)
    assert (cov.modes, cov.total, cov.hq) == (8, 8, 1.0)
    assert cov.counts.tolist() == [50] * 8


def test_a_collapsed_generator_covers_one_mode():
    centres, sigma = mixture("grid25")
    points = np.repeat(centres[7:8], 400, axis=0)
    cov = coverage(points, centres, sigma)
    assert (cov.modes, cov.total, cov.hq) == (1, 25, 1.0)


def test_points_off_the_modes_are_neither_high_quality_nor_covering():
    centres, sigma = mixture("ring8")
    off = np.zeros((90, 2))  # the ring's centre, 2 away from every mode
    near_miss = centres[:1] + [[4 * sigma, 0.0]] * 10  # 4 sigma from mode 0: outside 3 sigma
    cov = coverage(np.concatenate([off, near_miss]), centres, sigma)
    assert (cov.modes, cov.hq) == (0, 0.0)
    # a mode with under 1% of the samples is not covered: 1 good point in 200
    cov = coverage(np.concatenate([np.zeros((199, 2)), centres[:1]]), centres, sigma)
    assert (cov.modes, cov.counts[0]) == (0, 1)
    cov = coverage(np.concatenate([np.zeros((198, 2)), centres[:1], centres[:1]]), centres, sigma)
    assert cov.modes == 1


def test_unknown_mixture_or_loss_is_a_one_line_error():
    with pytest.raises(UserError, match="unknown mixture"):
        mixture("ring9")
    with pytest.raises(UserError, match="unknown toy loss"):
        toy_config("lsgan")


@pytest.mark.slow
def test_wgan_gp_covers_all_eight_modes_in_a_short_cpu_run(tmp_path):
    """1000 generator steps (~15 s on 2 cores), fixed seed: every mode covered; pictures and table written."""
    table = toy(tmp_path, losses=["wgan-gp"], overrides={"train.max_steps": "5000"}, checkpoints=2, progress=False)
    row = table.iloc[0]
    assert (row.modes, row.of) == (8, 8), row.to_dict()
    assert row.hq > 0.3
    run = tmp_path / "ring8" / "wgan-gp"
    assert sorted(p.name for p in (run / "samples").glob("step_*.png")) == ["step_0002500.png", "step_0005000.png"]
    for f in ("loss.png", "checkpoints/last.pt", "generator.pt"):
        assert (run / f).is_file(), f
    assert (tmp_path / "ring8" / "coverage.csv").is_file() and (tmp_path / "ring8" / "summary.png").is_file()


def test_a_toy_run_resumes_bit_exactly(tmp_path):
    """The one loop's resume on points: 40 + 40 steps equal 80 in one go (WGAN-GP: penalty randomness too)."""
    data = Points("ring8", 256 * 20, seed=0)
    cfg = lambda n: toy_config("wgan-gp", {"train.max_steps": n})  # noqa: E731
    full = train(cfg(80), data, tmp_path / "a", device="cpu", progress=False)
    Trainer(cfg(40), data, tmp_path / "b", device="cpu", progress=False).run()
    (tmp_path / "b" / "generator.pt").unlink()
    resumed = Trainer(cfg(80), data, tmp_path / "b", device="cpu", progress=False)
    assert resumed.step == 40
    resumed.run()
    a, b = torch.load(full, weights_only=True), torch.load(tmp_path / "b" / "generator.pt", weights_only=True)
    assert a["step"] == b["step"] == 80
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])


def test_points_from_another_seed_refuse_to_resume(tmp_path):
    cfg = toy_config("bce", {"train.max_steps": 20})
    train(cfg, Points("ring8", 256 * 10, seed=0), tmp_path / "r", device="cpu", progress=False)
    (tmp_path / "r" / "generator.pt").unlink()
    with pytest.raises(UserError, match="other prepared data"):
        Trainer(cfg, Points("ring8", 256 * 10, seed=1), tmp_path / "r", device="cpu", progress=False)
