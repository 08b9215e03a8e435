"""Sampling: a trained generator -> ``1.jpg ... N.jpg``.

Images are drawn in batches on the device while a thread pool encodes and
writes the previous batch (:mod:`kaggle_gan.sampling.folder`: the folder
appears under its final name only when every file is in it, and a folder
holding anything generate did not write is refused, never emptied). The
generator comes from a run's ``best.pt``, ``generator.pt`` or a checkpoint
(:mod:`kaggle_gan.sampling.runs`); what a conditional generator draws, from
:mod:`kaggle_gan.sampling.conditions`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..core.io import GENERATED_BY, MARKER, UserError, write_json
from ..core.runtime import resolve_device
from ..data.pictures import to_uint8
from ..scoring.afd import make_detector
from .conditions import conditions_for, names_of, read_conditions
from .curate import SELECTORS, critic_scores, detector_scores, keep_top, load_critic
from .folder import check_grid, check_replaceable, is_ours, write_folder, write_grid
from .noise import DRAW_BATCH, batches, draw, noise, parse_seeds, truncation_threshold
from .runs import generator_of, load_state

JPEG_QUALITY = 85  # even 1000 noise-like 64x64 images stay under the homework's 2 MB
DEFAULT_COUNT = 1000  # a homework submission
IMAGE_FORMATS = ("jpg", "png")  # the homework's JPEGs; PNG for competitions that ask for it (Generative Dog Images)


@torch.no_grad()
def generate(
    source: Path,
    out: Path,
    n: Optional[int] = None,
    seed: int = 0,
    size: int = 64,
    batch_size: int = DRAW_BATCH,
    device: str = "auto",
    quality: int = JPEG_QUALITY,
    checkpoint: str = "best",
    image_format: str = "jpg",
    seeds: Union[None, str, Sequence[int]] = None,
    truncation: float = 1.0,
    pool: Optional[int] = None,
    select: Optional[str] = None,
    detector=None,
    condition: Optional[str] = None,
    conditions: Union[None, str, Path] = None,
) -> Path:
    """Write ``n`` images ``1.jpg .. n.jpg`` (``size`` x ``size``; ``.png`` with ``image_format="png"``) from
    ``source`` into the folder ``out``.

    Image k is drawn from its own seed: ``seeds`` (a list, or text such as ``"0-999"``), by default
    the ``seed``-th block of n, ``seed * n .. seed * n + n - 1`` (another ``seed``: a disjoint set).
    ``n`` defaults to one image per listed seed (or per set of ``conditions``), else 1000.
    ``images.json`` lists the seeds, and ``seeds=[s], n=1`` draws one again, bit-identical on the same
    device and ``batch_size``. ``truncation`` < 1 narrows the noise (:mod:`kaggle_gan.sampling.noise`).
    ``pool`` M >= n draws M images (the ``seed``-th block of M unless ``seeds`` is given) and keeps the n that
    ``select`` (``critic`` or ``detector``; :mod:`kaggle_gan.sampling.curate`) ranks highest, in pool order.
    A conditional generator draws ``condition`` (a class, or a set of objects ``"red cube,blue sphere"``) for
    every image, or one image per set of the file ``conditions`` (then also ``OUT-grid.png``, 8 sets a row);
    see :mod:`kaggle_gan.sampling.conditions`. The noise is drawn on the CPU, so it does not depend on the device.
    """
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"--image-format must be jpg or png, not {image_format!r}")
    if seed < 0 or (n is not None and n < 1):
        raise UserError(f"--count must be positive and --seed at least 0, got {n} and {seed}")
    if condition is not None and conditions is not None:
        raise UserError("--condition (one for every image) and --conditions (one image per set) exclude each other")
    listed = parse_seeds(seeds) if isinstance(seeds, str) else None if seeds is None else [int(s) for s in seeds]
    truncation_threshold(truncation)  # a bad psi fails before the generator loads
    out = Path(out)
    check_replaceable(out)  # before minutes of work: a folder that is not ours is never touched
    grid = out.parent / f"{out.name}-grid.png" if conditions is not None else None
    check_grid(grid, out)
    dev = resolve_device(device)
    state = load_state(source, checkpoint)
    G, cfg, step = generator_of(state, dev, Path(source))
    if cfg.model.arch == "mlp":
        raise UserError(f"{source} is a 2-D toy run: it draws points, not images (see its samples/ pictures)")
    rows = read_conditions(conditions, names_of(state, cfg.model.classes)) if conditions is not None else None
    n, seeds = _counts(n, seed, listed, pool, select, None if rows is None else len(rows))
    y = conditions_for(state, cfg.model.classes, len(seeds), seeds, condition, rows)
    critic = load_critic(source, state, dev)[0] if select == "critic" else None
    judge = make_detector(detector) if select == "detector" else None
    meta = {"written_by": GENERATED_BY, "source": str(source), "checkpoint": state.get("path", str(source)),
            "step": step, "count": n, "seed": seed, "size": size, "quality": quality, "image_format": image_format,
            "truncation": truncation, "batch_size": batch_size, "pool": len(seeds), "select": select,
            "condition": condition, "conditions": None if conditions is None else str(conditions)}
    drawn = _draw(G, cfg.model.z_dim, seeds, y, truncation, dev, size, batch_size, critic)
    if select is not None:
        images, scores = _rank(drawn, judge)
        keep = keep_top(scores, n)
        meta["seeds"] = [seeds[i] for i in keep]
        drawn = ((images[keep[sl]], None) for sl in batches(n, batch_size))
        print(f"generate: kept {n} of {len(seeds)} images, ranked by the {select}")
    else:
        meta["seeds"] = seeds
    if grid is not None:
        drawn = list(drawn)
        write_grid(np.concatenate([x for x, _ in drawn]), grid)
        meta["grid"] = grid.name
    write_folder(drawn, out, n, meta, quality, image_format)
    sidecar = out.parent / f"{out.name}.json"
    if not sidecar.exists() or is_ours(sidecar):
        write_json(sidecar, meta)
    else:
        print(f"generate: left {sidecar} alone (not written by kaggle_gan); the details are in {out / MARKER}")
    print(f"generate: {n} images from step {step} in {out}" + (f"; the sets side by side in {grid}" if grid else ""))
    return out


def _counts(n: Optional[int], seed: int, listed: Optional[List[int]], pool: Optional[int], select: Optional[str],
            sets: Optional[int]) -> Tuple[int, List[int]]:
    """(images kept, the seed of every image drawn): the count follows the listed seeds or sets when not given;
    only a real contradiction is refused."""
    if sets is not None:
        if pool is not None:
            raise UserError("--pool does not go with --conditions: each set gets exactly one image")
        if n is not None and n != sets:
            raise UserError(f"--conditions lists {sets} sets, one image each, but --count is {n}; drop --count")
        n = sets
    if n is None:
        n = len(listed) if listed is not None and pool is None else DEFAULT_COUNT
    m = _pool_size(n, pool, select)
    if listed is None:
        return n, list(range(seed * m, seed * m + m))
    if len(listed) != m:
        what = f"--pool {m}" if pool else f"--conditions' {m} sets" if sets else f"--count {m}"
        raise UserError(f"--seeds lists {len(listed)} seed(s) but {what} means {m} image(s) drawn; "
                        f"list exactly {m}, or leave --count out to draw one image per seed")
    return n, listed


def _pool_size(n: int, pool: Optional[int], select: Optional[str]) -> int:
    if select is not None and select not in SELECTORS:
        raise UserError(f"--select must be critic or detector, not {select!r}")
    if pool is None:
        return n
    if pool < n:
        raise UserError(f"--pool {pool} is smaller than --count {n}; draw a pool of at least as many images")
    if pool > n and select is None:
        raise UserError(f"--pool {pool} needs a judge to keep {n} of them: add --select critic (HW6-safe) "
                        "or --select detector")
    return pool


def _draw(G, z_dim: int, seeds: List[int], y: Optional[torch.Tensor], truncation: float, dev: torch.device,
          size: int, batch_size: int, critic=None) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """(uint8 images, the critic's scores or None) per batch of ``seeds`` (with conditions ``y``), in order."""
    from tqdm.auto import tqdm

    z = noise(seeds, z_dim, truncation)
    for sl in tqdm(list(batches(len(seeds), batch_size)), desc="generate", unit="batch"):
        yb = y[sl] if y is not None else None
        x = draw(G, z[sl], dev, yb, batch_size)
        yield to_uint8(x, size), (critic_scores(critic, x, yb) if critic is not None else None)


def _rank(drawn, judge) -> Tuple[np.ndarray, list]:
    """All drawn images, and a score per image: the critic's, or the detector's confidence."""
    images, scores = [], []
    for x, s in drawn:
        images.append(x)
        scores.extend(s.tolist() if s is not None else [])
    images = np.concatenate(images)
    return images, (detector_scores(images, judge) if judge is not None else scores)


