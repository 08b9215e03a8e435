"""Frechet Inception Distance, in small steps: network -> activations -> statistics -> distance.

- The network is pytorch-fid's Inception-v3 (TensorFlow FID port), assembled
  here from ``pytorch_fid.inception``'s public blocks so that building it never
  downloads anything; its weights come from :mod:`kaggle_gan.core.weights`
  (torch hub cache, a path, or ``random:SEED`` for a labelled proxy).
- One resize policy for real and generated images, :data:`RESIZE_POLICY`.
- Reference statistics of the training data are cached under a key of
  everything that changes them and written atomically.
- The Frechet distance is our own float64 code (no ``scipy.linalg.sqrtm``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from ..core import chunks
from ..core.chunks import chunked_rows
from ..core.io import atomic_path
from .inception import RESIZE_POLICY, InceptionFeatures
from .metrics import DC_K, RealSide, all_metrics

HOLDOUT = 1000  # held-out real images for the floor: as many as a submission, so both carry the same small-sample bias
SELECTION_SEED = 0
# Half-samples behind a FID's +- (half_sample_sd): under 0.1 s each for 1000 images on 2 CPU cores; 30 pin the
# standard deviation to about +-13%.
SD_ROUNDS = 30
SD_MIN_IMAGES = 6  # below this, halves of 2 images say nothing: half_sample_sd gives None
CACHE_FORMAT = 2  # 2: the reference features, their k-NN radii, KID's real terms and the held-out ceiling
REFERENCE_CHUNK = 500  # images per saved chunk of reference features: about a minute of Inception on 2 CPU cores


# --- the network -------------------------------------------------------------


# --- activations and statistics ----------------------------------------------


def activations(
    images: np.ndarray, model: InceptionFeatures, batch_size: int = 32, desc: str = "inception", progress: bool = True
) -> np.ndarray:
    """(N, H, W, 3) uint8 images -> (N, D) float64 features (D = 2048 for Inception), in batches with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    out: Optional[np.ndarray] = None
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        chunk = np.array(images[start : start + batch_size])  # writable: torch refuses read-only memory maps
        f = model(torch.from_numpy(chunk).permute(0, 3, 1, 2)).cpu().double().numpy()
        if out is None:  # 2048 for Inception; any width for another feature network
            out = np.empty((len(images), f.shape[1]), dtype=np.float64)
        out[start : start + len(chunk)] = f
    if out is None:
        raise ValueError("no images to compute features of")
    return out


def statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64. Needs N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature rows of shape (N, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance; rounding-level negative eigenvalues become 0."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), in float64.

    The symmetric form has real non-negative eigenvalues, so it stays finite
    for the singular covariances of N < D samples (1000 images, 2048 features)
    where a general ``sqrtm`` returns complex noise. Never negative.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def frechet_distance_to_features(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FID of (N, D) ``features`` against statistics ``mu`` (D,), ``sigma`` (D, D); equal to
    ``frechet_distance(*statistics(features), mu, sigma)``.

    With S1 = B^T B (B the centred features over sqrt(N - 1)), sigma^1/2 S1 sigma^1/2
    and the (N, N) matrix B sigma B^T share their non-zero eigenvalues, so for
    N < D (1000 images, 2048 features) no (D, D) square root is needed: several
    times faster, and just as finite.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature rows, got {f.shape}")
    if n - 1 >= d:
        return frechet_distance(*statistics(f), mu, sigma)
    mean = f.mean(axis=0)
    b = (f - mean) / np.sqrt(n - 1)
    s = np.asarray(sigma, np.float64)
    small = b @ s @ b.T
    eig = np.linalg.eigvalsh((small + small.T) / 2.0)
    diff = mean - np.asarray(mu, np.float64)
    value = float(diff @ diff + np.einsum("ij,ij->", b, b) + np.trace(s) - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum())
    return max(value, 0.0)


def half_sample_sd(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray, rounds: int = SD_ROUNDS,
                   seed: int = 0) -> Optional[float]:
    """How much the FID of ``features`` would move with another draw of as many images, the reference fixed.

    The standard deviation of the FID over ``rounds`` random halves of the
    rows, drawn without replacement: the delete-d jackknife with d = n/2
    (Shao and Wu 1989), whose variance factor (n - d) / d is then 1. The usual
    bootstrap (with replacement) repeats rows, which lowers the rank of the
    covariance and overstates the spread when there are fewer images than
    features: 4-5x at 300 images of 600 features in our checks, where halves
    stayed within 0.9-1.3x of fresh draws. Gaps between two runs smaller than
    about twice this do not rank them. Seeded; the global random state is left alone.
    None for fewer than ``SD_MIN_IMAGES`` rows.
    """
    f = np.asarray(features, dtype=np.float64)
    if rounds < 2:
        raise ValueError(f"need at least 2 rounds, got {rounds}")
    if len(f) < SD_MIN_IMAGES:
        return None
    rng = np.random.default_rng(seed)
    half = len(f) // 2
    values = [frechet_distance_to_features(f[rng.permutation(len(f))[:half]], mu, sigma) for _ in range(rounds)]
    return float(np.std(values, ddof=1))


# --- reference statistics of the training data -------------------------------

@dataclass(frozen=True)
class ReferenceStats:
    """Training-data statistics plus the real-data floor, as cached.

    ``mu`` (2048,), ``sigma`` (2048, 2048) over ``count`` reference images;
    ``floor`` is the FID of ``holdout`` other real images against them and
    ``floor_sd`` its :func:`half_sample_sd` (None below 6 held-out images, or
    from a cache written before it was stored).
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    holdout: int
    floor: float
    key: str
    fields: dict
    path: Path
    cache_hit: bool
    floor_sd: Optional[float] = None
    real: Optional[RealSide] = None
    ceiling: Optional[dict] = None


def split_counts(n: int, ref_count: int, holdout: int = HOLDOUT) -> Tuple[int, int]:
    """(held-out, reference) image counts for ``n`` prepared images; the two sets never overlap."""
    if n < 4:
        raise ValueError(f"need at least 4 prepared images for reference statistics, have {n}")
    hold = min(holdout, n // 2)
    return hold, max(2, min(ref_count, n - hold))


def selection(n: int, ref_count: int, holdout: int = HOLDOUT) -> Tuple[np.ndarray, np.ndarray]:
    """(held-out, reference) indices into ``n`` prepared images: a fixed permutation's first ``hold``, then ``ref``."""
    hold, ref = split_counts(n, ref_count, holdout)
    order = np.random.default_rng(SELECTION_SEED).permutation(n)
    return np.sort(order[:hold]), np.sort(order[hold : hold + ref])


def reference_key(
    shape: Tuple[int, ...], images_sha256: str, weights_identity: str, ref: int, hold: int, view: str = ""
) -> Tuple[str, dict]:
    """Cache key and the fields it hashes: everything that changes the reference statistics."""
    fields = {
        "format": CACHE_FORMAT,
        "images_sha256": images_sha256,
        "n_images": int(shape[0]),
        "size": [int(shape[1]), int(shape[2])],
        "resize": RESIZE_POLICY,
        "weights": weights_identity,
        "ref_count": int(ref),
        "holdout": int(hold),
        "selection_seed": SELECTION_SEED,
    }
    if view:  # left out otherwise, so reference caches written before views existed keep their keys
        fields["view"] = view
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20], fields


def reference_stats(
    images: np.ndarray,
    images_sha256: str,
    model: InceptionFeatures,
    cache: Path,
    ref_count: int = 10_000,
    holdout: int = HOLDOUT,
    batch_size: int = 32,
    view: Optional[Tuple[str, Callable[[np.ndarray], np.ndarray]]] = None,
    chunk: int = REFERENCE_CHUNK,
) -> ReferenceStats:
    """Statistics of a seeded subsample of the prepared ``images`` (N, H, W, 3) uint8, cached.

    ``view`` = (name, function) transforms the chosen reference and held-out
    images first (the race's low-resolution round trip); the name joins the cache key.
    Features are computed ``chunk`` images at a time and each chunk is kept until
    the statistics are stored, so an interrupted run continues from its last chunk.

    The cache key covers the data hash, image size, resize policy, weights
    identity and both sample counts; the file is written atomically and its
    stored key is checked on load, so a stale or foreign file is never used.
    """
    n = len(images)
    hold, ref = split_counts(n, ref_count, holdout)
    key, fields = reference_key(images.shape, images_sha256, model.weights.identity, ref, hold, view[0] if view else "")
    path = Path(cache) / f"ref-{key}.npz"
    loaded = _load_cached(path, fields)
    if loaded is not None:
        return ReferenceStats(*loaded[:2], ref, hold, loaded[2], key, fields, path, True, *loaded[3:])

    hold_idx, ref_idx = selection(n, ref_count, holdout)
    seen = view[1] if view else (lambda x: x)
    parts = Path(cache) / f"ref-{key}.parts"  # chunks of features: an interrupted run continues from them

    def features(idx: np.ndarray, name: str, desc: str) -> np.ndarray:
        # the network's outputs are float32, so float32 chunks hold them exactly
        rows = chunked_rows(len(idx), lambda a, b: activations(seen(images[idx[a:b]]), model, batch_size,
                                                               desc=desc).astype(np.float32),
                            parts / name, chunk, desc=desc)
        return rows.astype(np.float64)

    ref_feats = features(ref_idx, "reference", f"reference stats ({ref} images)")
    mu, sigma = statistics(ref_feats)
    held = features(hold_idx, "holdout", f"real floor ({hold} images)")
    floor = frechet_distance_to_features(held, mu, sigma)
    floor_sd = half_sample_sd(held, mu, sigma)
    # the k-nearest-neighbour metrics need more than k reference images (none below 6: FID alone then)
    real = RealSide.build(ref_feats) if len(ref_feats) > DC_K else None
    # what real images score: held-out training images against the reference, every metric
    ceiling = all_metrics(held, real, floor) if real is not None and len(held) > DC_K else None
    extra = {} if floor_sd is None else {"floor_sd": np.float64(floor_sd)}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, mu=mu, sigma=sigma, floor=np.float64(floor), fields=json.dumps(fields, sort_keys=True),
                 ceiling=json.dumps(ceiling), **(real.arrays() if real is not None else {}), **extra)
    chunks.remove(parts)
    return ReferenceStats(mu, sigma, ref, hold, floor, key, fields, path, False, floor_sd, real, ceiling)


def training_features(images: np.ndarray, images_sha256: str, model: InceptionFeatures, cache: Path,
                      batch_size: int = 32, chunk: int = REFERENCE_CHUNK) -> np.ndarray:
    """(N, D) float32 features of every prepared image (MiFID's memorisation distance against the whole
    training set, as Kaggle measures it), cached under a key of the data and the network, computed ``chunk``
    images at a time so an interrupted run continues from its last chunk."""
    fields = {"format": CACHE_FORMAT, "kind": "all", "images_sha256": images_sha256, "n_images": int(len(images)),
              "size": [int(images.shape[1]), int(images.shape[2])], "resize": RESIZE_POLICY,
              "weights": model.weights.identity}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache) / f"train-{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["fields"])) == fields and len(z["features"]) == len(images):
                return z["features"]
    except Exception:  # missing, truncated or foreign: compute again
        pass
    parts = Path(cache) / f"train-{key}.parts"
    desc = f"training images ({len(images)})"
    feats = chunked_rows(len(images), lambda a, b: activations(images[a:b], model, batch_size, desc=desc)
                         .astype(np.float32), parts, chunk, desc=desc)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, features=feats, fields=json.dumps(fields, sort_keys=True))
    chunks.remove(parts)
    return feats


def _load_cached(path: Path, fields: dict) -> Optional[tuple]:
    """(mu, sigma, floor, floor_sd, real side, ceiling) from a cache file whose key matches, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["fields"]))
            mu, sigma, floor = z["mu"], z["sigma"], float(z["floor"])
            floor_sd = float(z["floor_sd"]) if "floor_sd" in z.files else None
            real, ceiling = RealSide.from_arrays(z), json.loads(str(z["ceiling"]))
    except Exception:  # truncated or foreign file: recompute and overwrite
        return None
    if stored != fields or mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        return None
    if real is None and int(fields["ref_count"]) > DC_K:  # a cache from before the real side was stored
        return None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all() and np.isfinite(floor)):
        return None
    return mu, sigma, floor, floor_sd, real, ceiling
