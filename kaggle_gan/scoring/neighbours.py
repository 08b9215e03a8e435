"""Nearest training images of generated ones: did the generator copy?

Steps, each a function:

1. :func:`kaggle_gan.scoring.backbones.load_backbone`: a feature network chosen by name
   (``clip``, ``inception`` or any timm model; weights from the user's caches,
   a file, or ``random:SEED``, never downloaded).
2. :func:`build_index`: unit-length features of every prepared training image,
   stored as float16 under ``WORK/cache/neighbours/`` and keyed by the data hash,
   backbone, weights identity and preprocessing, then reused.
3. :func:`topk_cosine`: exact top-k cosine similarity, chunked over the index
   so memory stays bounded by the chunk size, on the backbone's device.
4. :func:`neighbours`: the stage: a CSV of neighbours, a PNG contact sheet and
   a memorisation summary, written atomically.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core import chunks
from ..core.chunks import chunked_rows
from ..core.io import UserError, atomic_path, write_json
from .backbones import Backbone, embed, load_backbone
from .sheet import contact_sheet

INDEX_FORMAT = 1
DEFAULT_K = 5
DEFAULT_CHUNK = 4096
INDEX_CHUNK = 1000  # training images per saved chunk of index features (an interrupted build resumes from them)
SHEET_ROWS = 16
# The automatic threshold: a generated image is listed when it is closer to a
# training image than 99% of training images are to their nearest *other*
# training image. It adapts to every backbone (a raw cosine of 0.9 means
# "near copy" for one network and "unrelated" for another) and to the data's
# own near-duplicates.
CALIBRATION_COUNT = 1000
CALIBRATION_QUANTILE = 0.99
CALIBRATION_SEED = 0


# --- the index of the training data ------------------------------------------

@dataclass(frozen=True)
class Index:
    """Unit-length training features ``(N, D)`` float16 and the seeded leave-one-out top-1 similarities."""

    features: np.ndarray
    calibration: np.ndarray
    key: str
    fields: dict
    path: Path
    cache_hit: bool
    build_s: float = 0.0


def index_key(shape: Sequence[int], images_sha256: str, backbone: Backbone) -> Tuple[str, dict]:
    """Cache key and the fields it hashes: everything that changes the stored features."""
    fields = {
        "format": INDEX_FORMAT,
        "images_sha256": images_sha256,
        "n_images": int(shape[0]),
        "size": [int(shape[1]), int(shape[2])],
        "backbone": backbone.name,
        "weights": backbone.weights.identity,
        "preprocessing": backbone.preprocessing,
        "calibration": [CALIBRATION_COUNT, CALIBRATION_SEED],
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20], fields


def build_index(
    images: np.ndarray, images_sha256: str, backbone: Backbone, cache: Path, batch_size: int = 64
) -> Index:
    """Features of every prepared image ``(N, H, W, 3)`` uint8, loaded from ``cache`` or computed and stored.

    The stored key is checked on load, so a stale or foreign file is recomputed, never used.
    """
    key, fields = index_key(images.shape, images_sha256, backbone)
    path = Path(cache) / f"index-{key}.npz"
    loaded = _load_index(path, fields, len(images))
    if loaded is not None:
        return Index(loaded[0], loaded[1], key, fields, path, True)
    t0 = time.perf_counter()
    parts = Path(cache) / f"index-{key}.parts"  # chunks of features: an interrupted build continues from them
    desc = f"index {backbone.name} ({len(images)} images)"
    feats = chunked_rows(len(images), lambda a, b: embed(images[a:b], backbone, batch_size, desc=desc),
                         parts, INDEX_CHUNK, desc=desc)
    build_s = time.perf_counter() - t0
    features = feats.astype(np.float16)
    calibration = leave_one_out_top1(features, device=backbone.device)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, features=features, calibration=calibration, fields=json.dumps(fields, sort_keys=True))
    chunks.remove(parts)
    return Index(features, calibration, key, fields, path, False, build_s)


def _load_index(path: Path, fields: dict, n: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["fields"]))
            features, calibration = z["features"], z["calibration"]
    except Exception:  # truncated or foreign file: rebuild and overwrite
        return None
    if stored != fields or features.ndim != 2 or len(features) != n or features.dtype != np.float16:
        return None
    if not np.isfinite(features).all():
        return None
    return features, calibration


# --- search ------------------------------------------------------------------

def topk_cosine(
    queries: np.ndarray, index: np.ndarray, k: int = DEFAULT_K, chunk: int = DEFAULT_CHUNK, device="cpu"
) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries (Q, D) @ index (N, D).T``, rows assumed unit length.

    Walks the index ``chunk`` rows at a time (and the queries ``chunk`` at a
    time), keeping a running top-k, so memory is O(chunk^2) whatever N and Q.
    Returns similarities (Q, k) float32, best first, and training indices (Q, k) int64.
    """
    import torch

    if queries.ndim != 2 or index.ndim != 2 or queries.shape[1] != index.shape[1]:
        raise ValueError(f"feature shapes differ: queries {queries.shape}, index {index.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    k = min(int(k), len(index))
    dev = torch.device(device)
    sims_out = np.empty((len(queries), k), dtype=np.float32)
    idx_out = np.empty((len(queries), k), dtype=np.int64)
    # fp16 matmul is slow on CPU: each index chunk is widened to float32 once, then shared by all queries.
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(dev)
    best_s = torch.full((len(queries), k), -float("inf"), device=dev)
    best_i = torch.zeros((len(queries), k), dtype=torch.long, device=dev)
    with torch.inference_mode():
        for start in range(0, len(index), chunk):
            block = torch.from_numpy(np.ascontiguousarray(index[start : start + chunk])).to(dev).float()
            for q0 in range(0, len(queries), chunk):
                q = q_all[q0 : q0 + chunk]
                s = q @ block.T
                kk = min(k, s.shape[1])
                cs, ci = s.topk(kk, dim=1)
                both_s = torch.cat([best_s[q0 : q0 + chunk], cs], dim=1)
                both_i = torch.cat([best_i[q0 : q0 + chunk], ci + start], dim=1)
                top_s, pos = both_s.topk(k, dim=1)
                best_s[q0 : q0 + chunk] = top_s
                best_i[q0 : q0 + chunk] = both_i.gather(1, pos)
    sims_out[:] = best_s.cpu().numpy()
    idx_out[:] = best_i.cpu().numpy()
    return sims_out, idx_out


def leave_one_out_top1(
    features: np.ndarray, count: int = CALIBRATION_COUNT, seed: int = CALIBRATION_SEED, device="cpu"
) -> np.ndarray:
    """Top-1 similarity of ``count`` seeded training images to their nearest *other* training image, (count,)."""
    n = len(features)
    if n < 2:
        return np.zeros(0, dtype=np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(n, min(count, n), replace=False))
    sims, idx = topk_cosine(features[pick].astype(np.float32), features, k=2, device=device)
    # Rank 1 is normally the image itself; with an exact duplicate in the data it may be the twin instead.
    other = np.where(idx[:, 0] == pick, sims[:, 1], sims[:, 0])
    return other.astype(np.float32)


# --- queries -----------------------------------------------------------------

def load_queries(path: Path, size: int, resample: str = "bilinear") -> Tuple[List[str], np.ndarray]:
    """A folder of images or one image file -> names and (Q, size, size, 3) uint8, prepared like the training data."""
    from ..data.imagefiles import decode_files, iter_image_files

    path = Path(path)
    if path.is_dir():
        files = iter_image_files(path)
        if not files:
            raise UserError(f"{path} holds no files; pass --images a folder of images or one image file")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"images not found: {path}; pass --images a folder of images or one image file "
                        "(or generate the run's images first: make generate)")
    names, images, _ = decode_files(files, size, resample, where=str(path))
    return names, images


# --- the contact sheet -------------------------------------------------------


# --- the stage ---------------------------------------------------------------

def summarise(top1: np.ndarray, threshold: float) -> dict:
    """Distribution of top-1 similarities (Q,) and how many reach ``threshold``."""
    q = np.percentile(top1, [0, 5, 25, 50, 75, 95, 100]) if len(top1) else [float("nan")] * 7
    return {
        "queries": int(len(top1)),
        "top1": dict(zip(["min", "p5", "p25", "median", "p75", "p95", "max"], [round(float(v), 4) for v in q])),
        "mean": round(float(np.mean(top1)), 4) if len(top1) else None,
        "threshold": round(float(threshold), 4),
        "above": int((top1 >= threshold).sum()),
        "share_above": round(float((top1 >= threshold).mean()), 4) if len(top1) else 0.0,
    }


def default_out(images: Path) -> Path:
    """``WORK/runs/RUN/images`` (or one file in it) -> ``WORK/runs/RUN/neighbours``: beside the images folder."""
    images = Path(images)
    folder = images if images.is_dir() else images.parent
    return folder.parent / "neighbours"


def neighbours(
    images: Union[str, Path],
    data_dir: Union[str, Path],
    work: Union[str, Path],
    backbone: Optional[str] = None,
    weights: Union[str, Path, None] = None,
    k: int = DEFAULT_K,
    threshold: Optional[float] = None,
    out: Union[str, Path, None] = None,
    device: str = "auto",
    input_size: Optional[int] = None,
    rows: int = SHEET_ROWS,
    batch_size: int = 64,
    chunk: int = DEFAULT_CHUNK,
    quiet: bool = False,
) -> dict:
    """Find the ``k`` most similar training images of every image in ``images``; write CSV, sheet and summary.

    Args:
        images: a folder of images (e.g. ``WORK/runs/RUN/images``) or one image file.
        data_dir: prepared training data (``WORK/data``).
        work: work folder; the feature index is cached under ``WORK/cache/neighbours``.
        backbone: ``clip``, ``inception`` or a timm model name; None: ``clip`` when its
            weights are on this machine, else ``inception``.
        weights: None (the user's caches), a weights file, or ``random:SEED`` (untrained proxy).
        k: neighbours per query.
        threshold: cosine similarity at or above which a pair is listed as a possible copy;
            None: the 99th percentile of training images' similarity to their nearest other
            training image (computed once per index).
        out: output folder (default: ``neighbours`` beside the images folder).
        rows: queries on the contact sheet, most similar first.

    Returns:
        The summary, also written to ``OUT/summary.json``.
    """
    import pandas as pd

    from ..core.runtime import resolve_device
    from ..data.prepared import load_prepared

    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise UserError(f"--threshold is a cosine similarity between -1 and 1, got {threshold}")
    if rows < 1:
        raise UserError(f"--rows must be at least 1, got {rows}")
    images, work = Path(images), Path(work)
    # Everything a user can get wrong is checked before minutes of computing.
    prepared = load_prepared(Path(data_dir))
    size = int(prepared.images.shape[1])
    names, queries = load_queries(images, size, prepared.meta.get("resample", "bilinear"))
    dev = resolve_device(device)
    net = load_backbone(backbone, weights, dev, input_size)
    out = Path(out) if out else default_out(images)

    index = build_index(prepared.images, prepared.meta["images_sha256"], net, work / "cache" / "neighbours", batch_size)
    q = embed(queries, net, batch_size, desc=f"queries ({len(queries)})")
    t0 = time.perf_counter()
    sims, idx = topk_cosine(q, index.features, k, chunk, dev)
    search_s = time.perf_counter() - t0
    k = sims.shape[1]

    auto = threshold is None
    if auto:
        if len(index.calibration) == 0:
            threshold = 1.0
        else:
            threshold = float(np.quantile(index.calibration, CALIBRATION_QUANTILE))
    train_files = prepared.files
    table = pd.DataFrame({
        "query": np.repeat(names, k),
        "rank": np.tile(np.arange(1, k + 1), len(names)),
        "train_index": idx.reshape(-1),
        "train_file": [train_files[i] if i < len(train_files) else "" for i in idx.reshape(-1)],
        "similarity": np.round(sims.reshape(-1).astype(np.float64), 5),
    })
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "neighbours.csv") as tmp:
        table.to_csv(tmp, index=False)

    top1 = sims[:, 0]
    order = np.argsort(-top1, kind="stable")
    shown = order[: min(rows, len(order))]
    title = f"nearest training images by {net.label}; threshold {threshold:.3f}"
    contact_sheet(out / "neighbours.png", queries[shown], [names[i] for i in shown], prepared.images,
                  sims[shown], idx[shown], title, threshold)

    above = [i for i in order if top1[i] >= threshold]
    summary = summarise(top1, threshold)
    summary.update({
        "backbone": net.name,
        "label": net.label,
        "proxy": net.weights.is_random,
        "weights": net.weights.describe(),
        "preprocessing": net.preprocessing,
        "k": k,
        "threshold_source": (f"auto: {CALIBRATION_QUANTILE:.0%} quantile of {len(index.calibration)} training images' "
                             "similarity to their nearest other training image") if auto else "given",
        "training_nn_top1": {"median": round(float(np.median(index.calibration)), 4)} if len(index.calibration) else {},
        "pairs_above": [
            {"query": names[i], "train_index": int(idx[i, 0]), "train_file": train_files[int(idx[i, 0])],
             "similarity": round(float(top1[i]), 5)} for i in above
        ],
        "images": str(images),
        "data": str(prepared.folder),
        "index": {"path": str(index.path), "key": index.key, "cache_hit": index.cache_hit,
                  "n": int(len(index.features)), "dim": int(index.features.shape[1]), "build_s": round(index.build_s, 2)},
        "search_s": round(search_s, 4),
        "device": str(dev),
        "outputs": {"csv": str(out / "neighbours.csv"), "sheet": str(out / "neighbours.png")},
    })
    write_json(out / "summary.json", summary)
    if not quiet:
        print(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    """The printed memorisation summary: a few lines plus up to 10 listed pairs."""
    t = s["top1"]
    lines = [
        f"neighbours: {s['queries']} queries, k={s['k']}, features {s['label']}",
        f"  top-1 cosine similarity: min {t['min']:.3f}  median {t['median']:.3f}  p95 {t['p95']:.3f}  max {t['max']:.3f}",
        f"  threshold {s['threshold']:.3f} ({s['threshold_source']})",
        f"  {s['above']} of {s['queries']} queries ({s['share_above']:.1%}) at or above it"
        + (": possible copies" if s["above"] else ""),
    ]
    for p in s["pairs_above"][:10]:
        lines.append(f"    {p['query']} ~ #{p['train_index']} {p['train_file']}  {p['similarity']:.4f}")
    if len(s["pairs_above"]) > 10:
        lines.append(f"    ... {len(s['pairs_above']) - 10} more in summary.json")
    if s["proxy"]:
        lines.append("  untrained (random) weights: similarities are a proxy, not evidence of copying")
    lines.append(f"  wrote {s['outputs']['csv']}, {s['outputs']['sheet']}")
    return "\n".join(lines)
