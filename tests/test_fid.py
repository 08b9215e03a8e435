"""FID: closed forms of the Frechet distance, weights loading and the reference-statistics cache."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kaggle_gan.core.io import UserError, sha256_file
from kaggle_gan.core.weights import WeightsMissing
from kaggle_gan.scoring import fid, inception

# --- the distance: closed forms ---------------------------------------------------

def test_identical_sets_give_zero():
    x = np.random.default_rng(0).normal(size=(200, 16))
    mu, sigma = fid.statistics(x)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_identity_covariances_give_squared_mean_distance():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    eye = np.eye(32)
    assert fid.frechet_distance(mu1, eye, mu2, eye) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-10)


def test_diagonal_covariances_match_closed_form():
    # Commuting covariances: tr term is sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0, 0.0]), np.array([4.0, 1.0, 9.0, 2.0])
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()) + 3.0
    mu2 = np.array([1.0, 1.0, 1.0, 0.0])
    assert fid.frechet_distance(np.zeros(4), np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_1000_samples_of_2048_features_are_finite():
    # 1000 < 2048: both covariances are singular, where a general sqrtm goes complex.
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(1000, 2048))
    mu2, s2 = fid.statistics(rng.normal(size=(1000, 2048)) + 0.1)
    d = fid.frechet_distance(*fid.statistics(feats), mu2, s2)
    assert np.isfinite(d) and d > 0
    # The (N, N) route the score uses agrees (the general route carries sqrt-of-rounding noise from clamped zeros).
    assert fid.frechet_distance_to_features(feats, mu2, s2) == pytest.approx(d, rel=1e-6)


def test_feature_route_matches_the_covariance_route():
    rng = np.random.default_rng(5)
    feats, other = rng.normal(size=(7, 20)), rng.normal(size=(50, 20)) * 2 + 1
    mu, sigma = fid.statistics(other)
    expected = fid.frechet_distance(*fid.statistics(feats), mu, sigma)
    assert fid.frechet_distance_to_features(feats, mu, sigma) == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance_to_features(other, mu, sigma) == pytest.approx(0.0, abs=1e-8)  # N - 1 >= D route


def test_half_sample_sd_matches_the_spread_of_fresh_draws():
    # Fewer images than features, as in the race (1000 of 2048): the spread over one draw's halves should be the
    # spread the FID really has over fresh draws from the same generator, within sampling error.
    rng = np.random.default_rng(6)
    scale = np.linspace(0.5, 1.5, 200)
    mu, sigma = fid.statistics(rng.normal(size=(4000, 200)))
    fresh = [fid.frechet_distance_to_features(rng.normal(size=(100, 200)) * scale + 0.05, mu, sigma) for _ in range(200)]
    one = rng.normal(size=(100, 200)) * scale + 0.05
    sd = fid.half_sample_sd(one, mu, sigma, rounds=100)
    assert 0.7 < sd / np.std(fresh) < 1.5
    # repeatable from its own seed, global random state untouched; more images, a smaller sd
    state = np.random.get_state()
    assert fid.half_sample_sd(one, mu, sigma) == fid.half_sample_sd(one, mu, sigma)
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert fid.half_sample_sd(rng.normal(size=(1600, 200)) * scale + 0.05, mu, sigma) < sd / 2
    with pytest.raises(ValueError, match="at least 2 rounds"):
        fid.half_sample_sd(one, mu, sigma, rounds=1)
    # too few images for halves to mean anything: no spread rather than a number
    assert fid.half_sample_sd(one[: fid.SD_MIN_IMAGES - 1], mu, sigma) is None
    assert fid.half_sample_sd(one[: fid.SD_MIN_IMAGES], mu, sigma) > 0


def test_statistics_need_two_rows():
    with pytest.raises(ValueError):
        fid.statistics(np.zeros((1, 4)))


# --- weights: hub cache, checksum, offline ---------------------------------------

@pytest.fixture(scope="module")
def hub_weights(tmp_path_factory):
    """A randomly initialised FID Inception saved where torch hub keeps checkpoints."""
    import torch

    home = tmp_path_factory.mktemp("torch_home")
    net = inception.build_inception()
    inception._seeded_init(net, 1)
    path = home / "hub" / "checkpoints" / inception.FID_WEIGHTS.filename
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return home, path, sha256_file(path)[:8]


def _images(n=2, side=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_weights_load_from_hub_cache_like_users(hub_weights, monkeypatch, tmp_path):
    home, path, prefix = hub_weights
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("KAGGLE_GAN_CACHE", str(tmp_path))
    model = inception.load_inception(None, "cpu", sha256=prefix)
    assert model.weights.path == path and model.label == "FID"
    feats = fid.activations(_images(), model)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    # The saved file holds random:1 weights, so the loaded network must agree with that seed.
    proxy = inception.load_inception("random:1", "cpu")
    assert proxy.label == "proxy FID (random:1)"
    np.testing.assert_allclose(fid.activations(_images(), proxy), feats, rtol=1e-5, atol=1e-6)
    # An explicit path goes through the same check.
    assert inception.load_inception(str(path), "cpu", sha256=prefix).weights.sha256.startswith(prefix)


def test_weights_checksum_mismatch_is_a_clear_error(hub_weights):
    _, path, _ = hub_weights
    with pytest.raises(UserError, match="sha256"):
        inception.load_inception(str(path), "cpu")  # the published prefix 6726825d cannot match random weights


def test_missing_weights_offline_say_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KAGGLE_GAN_CACHE", str(tmp_path / "kg"))
    with pytest.raises(WeightsMissing) as info:
        inception.load_inception(None, "cpu")
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / inception.FID_WEIGHTS.filename) in msg
    assert "--inception-weights" in msg and "random:SEED" in msg
    with pytest.raises(WeightsMissing, match="no such file"):
        inception.load_inception(str(tmp_path / "nope.pth"), "cpu")
    with pytest.raises(UserError, match="random:SEED"):
        inception.load_inception("random:x", "cpu")


def test_import_touches_neither_torch_nor_network():
    code = (
        "import sys, socket\n"
        "def no_net(*a, **k): raise AssertionError('network touched at import')\n"
        "socket.socket.connect = socket.create_connection = no_net\n"
        "import kaggle_gan.scoring.fid, kaggle_gan.scoring.afd, kaggle_gan.scoring.score, kaggle_gan.core.weights\n"
        "assert 'torch' not in sys.modules and 'cv2' not in sys.modules and 'pandas' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# --- reference statistics cache --------------------------------------------------

@pytest.fixture(scope="module")
def proxy0():
    return inception.load_inception("random:0", "cpu")


def test_reference_cache_hit_miss_and_invalidation(proxy0, tmp_path):
    images = _images(12, 32, seed=3)
    first = fid.reference_stats(images, "aaaa", proxy0, tmp_path, ref_count=6)
    assert not first.cache_hit and first.path.is_file()
    assert (first.count, first.holdout) == (6, 6) and np.isfinite(first.floor)
    again = fid.reference_stats(images, "aaaa", proxy0, tmp_path, ref_count=6)
    assert again.cache_hit and np.array_equal(again.mu, first.mu) and again.floor == first.floor
    assert first.floor_sd > 0 and again.floor_sd == first.floor_sd
    # A cache written before the floor's sd was stored still loads, without it.
    with np.load(first.path) as z:
        np.savez(first.path, **{k: z[k] for k in z.files if k != "floor_sd"})
    old = fid.reference_stats(images, "aaaa", proxy0, tmp_path, ref_count=6)
    assert old.cache_hit and old.floor == first.floor and old.floor_sd is None
    assert not fid.reference_stats(images, "bbbb", proxy0, tmp_path, ref_count=6).cache_hit
    # A damaged file is recomputed, never trusted.
    first.path.write_bytes(b"garbage")
    redo = fid.reference_stats(images, "aaaa", proxy0, tmp_path, ref_count=6)
    assert not redo.cache_hit and np.allclose(redo.mu, first.mu)
    assert not list(tmp_path.glob(".tmp-*"))


def test_reference_view_transforms_the_chosen_images_and_keys_the_cache(proxy0, tmp_path):
    images = _images(12, 32, seed=3)
    plain = fid.reference_stats(images, "aaaa", proxy0, tmp_path, ref_count=6)
    dark = fid.reference_stats(images, "aaaa", proxy0, tmp_path, ref_count=6, view=("dark", lambda x: x // 4))
    assert not dark.cache_hit and dark.path != plain.path and not np.allclose(dark.mu, plain.mu)
    again = fid.reference_stats(images, "aaaa", proxy0, tmp_path, ref_count=6, view=("dark", lambda x: x // 4))
    assert again.cache_hit and np.array_equal(again.mu, dark.mu)


def test_everything_that_changes_the_statistics_changes_the_key():
    base = dict(shape=(12, 64, 64, 3), images_sha256="aaaa", weights_identity="random:0", ref=6, hold=6)
    key = fid.reference_key(**base)[0]
    for change in (
        {"images_sha256": "bbbb"}, {"shape": (12, 32, 32, 3)}, {"shape": (13, 64, 64, 3)},
        {"weights_identity": "random:1"}, {"weights_identity": "6726825d" + "0" * 56}, {"ref": 5}, {"hold": 5},
    ):
        assert fid.reference_key(**{**base, **change})[0] != key, change
    assert fid.reference_key(**base)[0] == key
    assert fid.split_counts(10_127, 10_000) == (1000, 9127)
    assert fid.split_counts(71_314, 10_000) == (1000, 10_000)


def test_interrupted_reference_stats_leave_no_statistics_only_whole_chunks(proxy0, tmp_path, monkeypatch):
    calls = []

    def boom(images, model, batch_size=32, desc=""):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.random.default_rng(0).normal(size=(len(images), 2048))

    monkeypatch.setattr(fid, "activations", boom)
    with pytest.raises(KeyboardInterrupt):
        fid.reference_stats(_images(8, 32), "dddd", proxy0, tmp_path, ref_count=4)
    assert not list(tmp_path.glob("*.npz"))  # no statistics file that looks finished
    (parts,) = tmp_path.iterdir()  # only the chunks the re-run continues from: the reference's, whole
    assert parts.name.endswith(".parts")
    assert [p.relative_to(parts).as_posix() for p in sorted(parts.rglob("*.npy"))] == ["reference/rows-00000000-00000004.npy"]
