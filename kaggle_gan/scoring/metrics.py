"""Distances between a generated and a real set of features, beyond FID: KID, MiFID, precision and recall,
density and coverage.

Every function takes feature arrays ``(N, D)`` (Inception's 2048-d pool
features by default; any backbone's) and computes exactly, in chunks of rows,
so 10,000 x 10,000 comparisons fit in a laptop's memory:

- :func:`kid`: the unbiased squared MMD with the cubic polynomial kernel
  ``k(a, b) = (a.b / D + 1)^3`` (Binkowski et al. 2018), mean and standard
  deviation over random subsets, as clean-fid and torch-fidelity compute it.
  Unlike FID it has no bias at small sample sizes, so 1000 images suffice.
- :func:`memorisation_distance` and :func:`mifid`: Kaggle's MiFID, exactly as
  its evaluator computes it: ``d`` is the mean over *generated* images of the
  smallest cosine distance ``1 - |cos|`` to any training image;
  ``MiFID = FID / (d_thr + 1e-14)`` with ``d_thr = d`` below 0.1, else 1.
- :func:`precision_recall` (Kynkaanniemi et al. 2019, k = 3): the share of
  generated images inside the real manifold (each real feature's ball reaching
  its k-th nearest real neighbour), and of real images inside the generated one.
- :func:`density_coverage` (Naeem et al. 2020, k = 5): how many real balls
  each generated image falls in, divided by k (about 1 for matched sets, above
  for images packed where real ones are dense), and the share of real balls
  that hold at least one generated image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np

KID_SUBSETS = 100
KID_SUBSET_SIZE = 500  # at most half of each set, so both sides of every subset vary (else the sd reads 0)
MIFID_THRESHOLD = 0.1  # Kaggle's cosine_distance_eps
MIFID_EPSILON = 1e-14  # Kaggle's fid_epsilon
PR_K = 3
DC_K = 5
CHUNK = 1024  # rows per block of pairwise distances: 1024 x 10,000 float32 is 40 MB


def _chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for a in range(0, n, size):
        yield slice(a, min(a + size, n))


def _t(x: np.ndarray):
    """float32 rows as a torch tensor: products in float32, every sum of them in float64."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _kernel(a, b) -> np.ndarray:
    """(a.b / d + 1)^3 for every pair of rows, as float64."""
    return (((a @ b.T).double() / a.shape[1] + 1) ** 3).numpy()


def _within(x) -> float:
    """Mean kernel value over pairs of distinct rows of ``x``."""
    k, m = _kernel(x, x), len(x)
    return float((k.sum() - np.trace(k)) / (m * (m - 1)))


def _kid_real_terms(real: np.ndarray, subsets: int, m: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """KID's real subsets of ``m`` rows, drawn without replacement from ``seed``, and their within-terms."""
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set, have {len(real)} real")
    rng = np.random.default_rng(seed)
    index = np.stack([rng.choice(len(real), m, replace=False) for _ in range(subsets)])
    r = _t(real)
    return index, np.array([_within(r[i]) for i in index])


# --- the real side, computed once per reference and cached with it -------------------

@dataclass
class RealSide:
    """What every score needs of the real set: its features, its k-NN radii and KID's real-real terms.

    ``radii[k]`` is each real row's distance to its k-th nearest other real
    row; ``kid_index`` (subsets, m) the real rows of each KID subset and
    ``kid_within`` their mean kernel value over distinct pairs. These depend on
    the real set alone, so the reference cache stores them and scoring pays
    only for generated-vs-real work.
    """

    features: np.ndarray
    radii: Dict[int, np.ndarray]
    kid_index: np.ndarray
    kid_within: np.ndarray

    @classmethod
    def build(cls, real: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
              seed: int = 0) -> "RealSide":
        real = np.asarray(real, np.float32)
        index, within = _kid_real_terms(real, subsets, max(2, min(subset_size, len(real) // 2)), seed)
        return cls(real, knn_radii(real, (PR_K, DC_K)), index, within)

    def arrays(self, prefix: str = "real_") -> Dict[str, np.ndarray]:
        """Named arrays for ``np.savez``; :meth:`from_arrays` reads them back."""
        out = {f"{prefix}features": self.features, f"{prefix}kid_index": self.kid_index,
               f"{prefix}kid_within": self.kid_within}
        out.update({f"{prefix}radii_{k}": v for k, v in self.radii.items()})
        return out

    @classmethod
    def from_arrays(cls, z, prefix: str = "real_") -> Optional["RealSide"]:
        names = [f"{prefix}{n}" for n in ("features", "kid_index", "kid_within")] + \
                [f"{prefix}radii_{k}" for k in (PR_K, DC_K)]
        if not all(n in z for n in names):
            return None
        return cls(z[names[0]], {k: z[f"{prefix}radii_{k}"] for k in (PR_K, DC_K)}, z[names[1]], z[names[2]])


# --- KID ---------------------------------------------------------------------------

def kid(fake: np.ndarray, real: RealSide, seed: int = 1) -> Tuple[float, float]:
    """(mean, standard deviation) over KID subsets of the unbiased polynomial-kernel MMD^2.

    Subsets hold ``m`` = min(500, half of each set) rows of each side, so
    both sides vary between subsets (with 1000 against 1000 images and
    subsets of 1000, every subset would be the same two sets and the sd 0).
    The real rows of each subset are ``real.kid_index`` (cached with the
    reference; drawn again here when fewer generated images need smaller
    subsets); the generated rows are drawn without replacement from a
    generator seeded with ``seed``. Papers usually print it x1000.
    """
    if len(fake) < 2:
        raise ValueError(f"KID needs at least 2 generated images, have {len(fake)}")
    index, within = real.kid_index, real.kid_within
    m = max(2, min(index.shape[1], len(fake) // 2))
    if m < index.shape[1]:
        index, within = _kid_real_terms(real.features, len(index), m, seed=0)
    rng = np.random.default_rng(seed)
    f, r = _t(fake), _t(real.features)
    # (n_fake, n_real) in float32: 400 MB for a Kaggle-sized 10,000 x 10,000; means are taken in float64
    cross = np.concatenate([_kernel(f[s], r).astype(np.float32) for s in _chunks(len(f))])
    values = []
    for ri, rr in zip(index, within):
        fi = rng.choice(len(fake), m, replace=False)
        values.append(_within(f[fi]) + rr - 2 * cross[np.ix_(fi, ri)].mean(dtype=np.float64))
    return float(np.mean(values)), float(np.std(values))


# --- MiFID -------------------------------------------------------------------------

def memorisation_distance(fake: np.ndarray, train: np.ndarray) -> float:
    """Kaggle's ``d``: mean over generated rows of the smallest ``1 - |cos|`` to any training row.

    Rows whose features sum to zero are left out of both sets, as Kaggle's evaluator does.
    """
    def unit(x: np.ndarray):  # in float32, as Kaggle's evaluator computes with float32 features
        x = np.asarray(x, np.float32)
        t = _t(x[x.sum(axis=1) != 0])
        return t / t.norm(dim=1, keepdim=True)

    f, r = unit(fake), unit(train)
    nearest = np.concatenate([(1 - (f[s] @ r.T).abs()).min(dim=1).values.numpy() for s in _chunks(len(f))])
    # |cos| of a copy can round to just above 1 in float32: a distance is never below 0
    return float(np.maximum(nearest, 0).mean(dtype=np.float64))


def mifid(fid: float, distance: float) -> float:
    """FID divided by the memorisation distance thresholded at 0.1 (1 above it): a penalty for copies."""
    return float(fid / ((distance if distance < MIFID_THRESHOLD else 1.0) + MIFID_EPSILON))


# --- k-nearest-neighbour balls ------------------------------------------------------

def knn_radii(x: np.ndarray, ks: Tuple[int, ...]) -> Dict[int, np.ndarray]:
    """Per k in ``ks``: each row's distance to its k-th nearest other row (exact, chunked)."""
    import torch

    top = max(ks)
    if len(x) <= top:
        raise ValueError(f"the k-nearest-neighbour metrics need more than k = {top} images per set, have {len(x)}")
    t = _t(x)
    # the top + 1 smallest include the row itself, at distance 0
    near = torch.cat([torch.cdist(t[s], t).topk(top + 1, dim=1, largest=False).values for s in _chunks(len(t))])
    return {k: near[:, k].numpy() for k in ks}


def _scan(fake: np.ndarray, real: np.ndarray, visit: Callable) -> None:
    """Call ``visit(rows, distances)`` for each chunk of generated rows against every real row."""
    import torch

    f, r = _t(fake), _t(real)
    for s in _chunks(len(f)):
        visit(s, torch.cdist(f[s], r).numpy())


def precision_recall_density_coverage(fake: np.ndarray, real: RealSide) -> Dict[str, float]:
    """Precision and recall (k = 3, Kynkaanniemi 2019), density and coverage (k = 5, Naeem 2020), one scan."""
    real_pr, real_dc = real.radii[PR_K], real.radii[DC_K]
    fake_pr = knn_radii(fake, (PR_K,))[PR_K]
    inside = np.zeros(len(fake), bool)  # generated row in some real ball (precision)
    recalled = np.zeros(len(real_pr), bool)  # real row in some generated ball (recall)
    covered = np.zeros(len(real_pr), bool)  # real ball holding a generated row (coverage)
    hits = 0  # (generated, real ball) pairs (density)

    def visit(s: slice, d: np.ndarray) -> None:
        nonlocal hits
        inside[s] = (d <= real_pr[None, :]).any(axis=1)
        recalled[:] |= (d <= fake_pr[s, None]).any(axis=0)
        within = d <= real_dc[None, :]
        hits += int(within.sum())
        covered[:] |= within.any(axis=0)

    _scan(fake, real.features, visit)
    return {"precision": float(inside.mean()), "recall": float(recalled.mean()),
            "density": hits / (DC_K * len(fake)), "coverage": float(covered.mean())}


def all_metrics(fake: np.ndarray, real: RealSide, fid: Optional[float],
                memorisation: Optional[np.ndarray] = None) -> Dict[str, Optional[float]]:
    """Every number of this module for one generated set, keyed as ``scores.json`` stores them. MiFID's
    memorisation distance is to ``memorisation`` (every training image's features) when given, else to the
    reference's."""
    kid_mean, kid_sd = kid(fake, real)
    distance = memorisation_distance(fake, real.features if memorisation is None else memorisation)
    return {"kid": kid_mean, "kid_sd": kid_sd, "mifid": None if fid is None else mifid(fid, distance),
            "memorisation_distance": distance, **precision_recall_density_coverage(fake, real)}
