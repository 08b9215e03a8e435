"""KID, MiFID, precision/recall and density/coverage against brute-force loops and closed-form cases."""

import numpy as np
import pytest

from kaggle_gan.scoring import metrics
from kaggle_gan.scoring.metrics import RealSide


def _naive_mmd2(x, y):
    """Unbiased MMD^2 with (a.b/d + 1)^3, by explicit loops."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_brute_force_mmd_on_a_tiny_case():
    rng = np.random.default_rng(0)
    fake, real = rng.normal(size=(8, 3)), rng.normal(1.0, 1.0, size=(10, 3))
    side = RealSide.build(real, subsets=3, subset_size=6)  # subsets of 4: half the generated set
    assert side.kid_index.shape == (3, 5)
    mean, sd = metrics.kid(fake, side)
    ri, _ = metrics._kid_real_terms(real.astype(np.float32), 3, 4, seed=0)
    draw = np.random.default_rng(1)
    want = [_naive_mmd2(fake[draw.choice(8, 4, replace=False)], real[r]) for r in ri]
    assert mean == pytest.approx(np.mean(want), rel=1e-5) and sd == pytest.approx(np.std(want), rel=1e-4)
    assert sd > 0


def test_kid_is_zero_within_its_sd_for_one_distribution_and_large_for_two():
    rng = np.random.default_rng(1)
    real = RealSide.build(rng.normal(size=(1500, 16)), subsets=20, subset_size=300)
    same, sd = metrics.kid(rng.normal(size=(600, 16)), real)
    assert abs(same) < 2 * sd
    apart, sd_apart = metrics.kid(rng.normal(2.0, 1.0, size=(600, 16)), real)
    assert apart > 100 * max(sd, abs(same)) and apart > 10 * sd_apart


def test_kid_uses_the_cached_real_subsets_when_the_sizes_agree():
    rng = np.random.default_rng(2)
    real_x, fake = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))
    side = RealSide.build(real_x, subsets=1, subset_size=6)
    mean, _ = metrics.kid(fake, side)
    fi = np.random.default_rng(1).choice(12, 6, replace=False)
    assert mean == pytest.approx(_naive_mmd2(fake[fi], real_x[side.kid_index[0]]), rel=1e-5)


def _naive_distance(fake, train):
    def cos(a, b):
        return abs(np.dot(a, b)) / np.linalg.norm(a) / np.linalg.norm(b)
    train = [t for t in train if t.sum() != 0]
    fake = [f for f in fake if f.sum() != 0]
    return float(np.mean([min(1 - cos(f, t) for t in train) for f in fake]))


def test_memorisation_distance_is_kaggles_mean_over_generated_images():
    rng = np.random.default_rng(3)
    fake, train = rng.random((7, 5)), rng.random((11, 5))
    train[4] = 0  # an all-zero row is left out, as Kaggle's evaluator does
    assert metrics.memorisation_distance(fake, train) == pytest.approx(_naive_distance(fake, train), rel=1e-6)
    # the mean runs over generated images, not over training images: the two differ here
    assert metrics.memorisation_distance(fake, train) != pytest.approx(_naive_distance(train, fake), rel=1e-3)


def test_copies_of_training_images_trigger_mifids_penalty():
    rng = np.random.default_rng(4)
    train = rng.random((50, 8))
    copies = train[:20] * 3.0  # the same direction: cosine distance 0
    assert metrics.memorisation_distance(copies, train) == pytest.approx(0.0, abs=1e-6)
    assert metrics.mifid(10.0, metrics.memorisation_distance(copies, train)) > 1e6 * 10.0  # FID / ~0
    # far from the training images: d above 0.1 is thresholded to 1 and MiFID equals FID
    assert metrics.mifid(10.0, 0.25) == pytest.approx(10.0)
    assert metrics.mifid(10.0, 0.05) == pytest.approx(10.0 / 0.05)


def _naive_prdc(fake, real, k_pr=3, k_dc=5):
    def radius(x, i, k):
        return sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1]
    d = lambda a, b: np.linalg.norm(a - b)  # noqa: E731
    rr = [radius(real, i, k_pr) for i in range(len(real))]
    fr = [radius(fake, i, k_pr) for i in range(len(fake))]
    rd = [radius(real, i, k_dc) for i in range(len(real))]
    precision = np.mean([any(d(f, r) <= rr[i] for i, r in enumerate(real)) for f in fake])
    recall = np.mean([any(d(r, f) <= fr[j] for j, f in enumerate(fake)) for r in real])
    density = sum(d(f, r) <= rd[i] for f in fake for i, r in enumerate(real)) / (k_dc * len(fake))
    coverage = np.mean([any(d(f, r) <= rd[i] for f in fake) for i, r in enumerate(real)])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_precision_recall_density_coverage_match_brute_force_loops():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(30, 4)), rng.normal(0.7, 1.2, size=(25, 4))
    got = metrics.precision_recall_density_coverage(fake, RealSide.build(real, subsets=2, subset_size=10))
    want = _naive_prdc(fake, real)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert 0 < got["precision"] < 1 and 0 < got["recall"] < 1  # a case where the balls matter


def test_identical_sets_score_one_and_far_apart_clouds_score_zero():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 8))
    real = RealSide.build(x, subsets=5, subset_size=100)
    same = metrics.precision_recall_density_coverage(x, real)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] >= 1.0  # each point is inside its own ball, and in about k others
    far = metrics.precision_recall_density_coverage(x + 50.0, real)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_real_side_round_trips_through_named_arrays(tmp_path):
    rng = np.random.default_rng(7)
    side = RealSide.build(rng.normal(size=(40, 6)), subsets=4, subset_size=10)
    np.savez(tmp_path / "r.npz", **side.arrays())
    with np.load(tmp_path / "r.npz") as z:
        back = RealSide.from_arrays(z)
    assert np.array_equal(back.features, side.features) and np.array_equal(back.kid_index, side.kid_index)
    assert all(np.array_equal(back.radii[k], side.radii[k]) for k in side.radii)
    fake = rng.normal(size=(12, 6))
    assert metrics.all_metrics(fake, back, 3.0) == metrics.all_metrics(fake, side, 3.0)
    with np.load(tmp_path / "r.npz") as z:
        assert RealSide.from_arrays({k: z[k] for k in z.files if k != "real_radii_5"}) is None


def test_knn_radii_need_more_rows_than_k():
    with pytest.raises(ValueError, match="more than k = 5"):
        metrics.knn_radii(np.zeros((5, 2)), (3, 5))
