"""Sampling: a trained generator -> ``1.jpg ... N.jpg``.

Images are drawn in batches on the device while a thread pool encodes and
writes the previous batch; the folder appears under its final name only
when every file is in it.

The folder carries a marker, ``.kaggle_gan.json``, listing what it wrote. A
later ``generate`` replaces a folder only when the marker (or, for folders
from before the marker, the ``images.json`` beside it) accounts for every file
in it: a folder holding anything else is refused, never emptied.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import Config
from ..core.io import UserError, current_umask, read_json, write_failure, write_json, written_by
from ..core.runtime import resolve_device
from ..data.pictures import to_uint8
from ..nets.models import build_models
from ..scoring.afd import make_detector
from ..training.checkpoint import FORMAT, GENERATOR_FORMAT, load_file, load_latest
from .curate import SELECTORS, critic_scores, detector_scores, keep_top, load_critic
from .noise import DRAW_BATCH, batches, classes_of, draw, noise, parse_seeds, truncation_threshold

FORMATS = (FORMAT, GENERATOR_FORMAT)
JPEG_QUALITY = 85  # even 1000 noise-like 64x64 images stay under the homework's 2 MB
MARKER = ".kaggle_gan.json"  # inside an output folder: what generate wrote there
WRITTEN_BY = "kaggle_gan generate"


def _run_state(run: Path, checkpoint: str) -> dict:
    """A run folder's generator: ``best.pt`` (the evaluation's best point) unless ``checkpoint`` is ``last``,
    then ``generator.pt``, then the latest good checkpoint. Says which it used."""
    for name in (("best.pt",) if checkpoint == "best" else ()) + ("generator.pt",):
        if (run / name).is_file():
            try:
                state = load_file(run / name, formats=FORMATS)
            except ValueError as err:  # corrupt: fall back to the next
                print(f"warning: {err}; trying the run's other generators")
                continue
            scores = state.get("metrics") or {}
            why = ", ".join(f"{k} {scores[k]:.4g}" for k in ("afd", "kid", "fid") if scores.get(k) is not None)
            print(f"generate: from {run / name} (step {state['step']}{', ' + why if why else ''})")
            return state
    state = load_latest(run / "checkpoints")
    if state is None:
        raise UserError(f"{run} holds no usable best.pt, generator.pt or checkpoint; train it first (make strong)")
    print(f"generate: using the run's latest good checkpoint, {state['path']} (step {state['step']})")
    return state


def load_state(source: Path, checkpoint: str = "best") -> dict:
    """The generator's saved state from a run folder, a generator file or a checkpoint (see :func:`load_generator`)."""
    source = Path(source)
    if checkpoint not in ("best", "last"):
        raise UserError(f"--checkpoint must be best or last, not {checkpoint!r}")
    if source.is_dir():
        return _run_state(source, checkpoint)
    if source.is_file():
        try:
            return load_file(source, formats=FORMATS)
        except ValueError as err:
            raise UserError(str(err)) from None
    raise UserError(f"no generator at {source}; pass a run folder or a .pt file")


def generator_of(state: dict, device: torch.device, source: Path) -> Tuple[torch.nn.Module, Config, int]:
    """(EMA generator in eval mode, its config, its step) from a state :func:`load_state` returned."""
    cfg = Config.from_dict(state["config"])
    G, _ = build_models(cfg.model)
    weights = state["G_ema"] if state.get("G_ema") is not None else state["G"]
    if any(k.startswith("module.") for k in weights):  # an AveragedModel's state dict
        weights = {k[len("module."):]: v for k, v in weights.items() if k.startswith("module.")}
    try:
        G.load_state_dict(weights)
    except RuntimeError:  # weights that do not fit the architecture the file itself declares
        raise UserError(f"{source}: its weights do not match its own model configuration; "
                        "it was not written by kaggle_gan or was edited") from None
    return G.to(device).eval(), cfg, int(state["step"])


def load_generator(source: Path, device: torch.device, checkpoint: str = "best") -> Tuple[torch.nn.Module, Config, int]:
    """(EMA generator in eval mode, its config, its step) from a run folder, a generator file or a checkpoint.

    For a run folder, ``checkpoint`` ``best`` prefers ``best.pt`` (written by the evaluation during training)
    and ``last`` takes ``generator.pt`` (the end of training); either falls back to the latest checkpoint.
    """
    return generator_of(load_state(source, checkpoint), device, Path(source))


IMAGE_FORMATS = ("jpg", "png")  # the homework's JPEGs; PNG for competitions that ask for it (Generative Dog Images)


def _write_batch(images: np.ndarray, folder: Path, first: int, quality: int, ext: str) -> None:
    from PIL import Image

    for i, arr in enumerate(images):
        Image.fromarray(arr).save(folder / f"{first + i}.{ext}", **({"quality": quality} if ext == "jpg" else {}))


@torch.no_grad()
def generate(
    source: Path,
    out: Path,
    n: int = 1000,
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
) -> Path:
    """Write ``n`` images ``1.jpg .. n.jpg`` (``size`` x ``size``; ``.png`` with ``image_format="png"``) from
    ``source`` into the folder ``out``.

    Image k is drawn from its own seed: ``seeds`` (a list, or text such as ``"0-999"``), by default
    the ``seed``-th block of n, ``seed * n .. seed * n + n - 1`` (another ``seed``: a disjoint set).
    ``images.json`` lists them, and ``seeds=[s], n=1`` draws one again, bit-identical on the same
    device and ``batch_size``. ``truncation`` < 1 narrows the noise (:mod:`kaggle_gan.sampling.noise`).
    ``pool`` M >= n draws M images (the ``seed``-th block of M unless ``seeds`` is given) and keeps the n that
    ``select`` (``critic`` or ``detector``; :mod:`kaggle_gan.sampling.curate`) ranks highest, in pool order.
    The noise is drawn on the CPU, so it does not depend on the device.
    """
    if n < 1 or seed < 0:
        raise UserError(f"--count must be positive and --seed at least 0, got {n} and {seed}")
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"--image-format must be jpg or png, not {image_format!r}")
    m = _pool_size(n, pool, select)
    seeds = list(range(seed * m, seed * m + m)) if seeds is None else (parse_seeds(seeds) if isinstance(seeds, str)
                                                                else [int(s) for s in seeds])
    if len(seeds) != m:
        raise UserError(f"--seeds lists {len(seeds)} seed(s) but {m} image(s) are drawn "
                        f"({'--pool' if pool else '--count'} {m}); list exactly {m}")
    truncation_threshold(truncation)  # a bad psi fails before the generator loads
    out = Path(out)
    check_replaceable(out)  # before minutes of work: a folder that is not ours is never touched
    dev = resolve_device(device)
    state = load_state(source, checkpoint)
    G, cfg, step = generator_of(state, dev, Path(source))
    if cfg.model.arch == "mlp":
        raise UserError(f"{source} is a 2-D toy run: it draws points, not images (see its samples/ pictures)")
    critic = load_critic(source, state, dev)[0] if select == "critic" else None
    judge = make_detector(detector) if select == "detector" else None
    meta = {"written_by": WRITTEN_BY, "source": str(source), "step": step, "count": n, "seed": seed, "size": size,
            "quality": quality, "image_format": image_format, "truncation": truncation, "batch_size": batch_size,
            "pool": m, "select": select}
    drawn = _draw(G, cfg, seeds, truncation, dev, size, batch_size, critic)
    if select is not None:
        images, scores = _rank(drawn, judge)
        keep = keep_top(scores, n)
        meta["seeds"] = [seeds[i] for i in keep]
        drawn = ((images[keep[sl]], None) for sl in batches(n, batch_size))
        print(f"generate: kept {n} of {m} images, ranked by the {select}")
    else:
        meta["seeds"] = seeds
    _write_folder(drawn, out, n, meta, quality, image_format)
    sidecar = out.parent / f"{out.name}.json"
    if not sidecar.exists() or _ours(sidecar):
        write_json(sidecar, meta)
    else:
        print(f"generate: left {sidecar} alone (not written by kaggle_gan); the details are in {out / MARKER}")
    print(f"generate: {n} images from step {step} in {out}")
    return out


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


def _draw(G, cfg: Config, seeds: List[int], truncation: float, dev: torch.device, size: int, batch_size: int,
          critic=None) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """(uint8 images, the critic's scores or None) per batch of ``seeds``, in order."""
    from tqdm.auto import tqdm

    z = noise(seeds, cfg.model.z_dim, truncation)
    y = classes_of(seeds, cfg.model.classes)
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


def _write_folder(drawn, out: Path, n: int, meta: dict, quality: int, image_format: str) -> None:
    """Encode the drawn batches as ``1.EXT .. n.EXT`` in a temporary folder (a thread pool encodes while the next
    batch is drawn), then put it in place of ``out`` whole."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for leftover in [*out.parent.glob(f".tmp-{out.name}.*"), *out.parent.glob(f".old-{out.name}.*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # from a generate killed earlier
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    except OSError as err:
        raise write_failure(err, out) or err from None
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the finished folder gets the usual permissions
    try:
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as workers:
            pending, first = [], 1
            for x, _scores in drawn:
                pending.append(workers.submit(_write_batch, x, tmp, first, quality, image_format))
                first += len(x)
            for f in pending:
                f.result()
        write_json(tmp / MARKER, {**meta, "files": [f"{i}.{image_format}" for i in range(1, n + 1)]})
        _replace_dir(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(err, out)  # None for anything but a full or read-only disk
        if failure is not None:
            raise failure from None
        raise


def _ours(sidecar: Path) -> bool:
    """Whether ``NAME.json`` beside a folder was written by generate (today's, or the keys older versions wrote)."""
    try:
        meta = read_json(sidecar)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("written_by") == WRITTEN_BY
                                       or {"source", "step", "count", "seed", "size"} <= set(meta))


def _written_files(folder: Path) -> Optional[set]:
    """The files an earlier generate wrote into ``folder``, or None when nothing says it wrote there."""
    marker = folder / MARKER
    if marker.is_file():
        meta = written_by(marker, WRITTEN_BY)
        try:
            return {MARKER, *meta["files"]} if meta is not None else None
        except (KeyError, TypeError):  # a marker of ours, damaged by hand
            return None
    sidecar = folder.parent / f"{folder.name}.json"  # a folder written before the marker existed
    if sidecar.is_file() and _ours(sidecar):
        return {f"{i}.jpg" for i in range(1, int(read_json(sidecar)["count"]) + 1)}
    return None


def check_replaceable(out: Path) -> None:
    """Refuse ``out`` unless it is absent, empty, or an earlier generate's folder holding only what it wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; choose a new or empty folder for --out")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    written = _written_files(out)
    if written is None:
        raise UserError(f"refusing to write into {out}: it holds {len(present)} file(s) kaggle_gan did not write "
                        f"(e.g. {', '.join(present[:3])}); choose a new or empty folder for --out")
    foreign = [name for name in present if name not in written]
    if foreign:
        raise UserError(f"refusing to replace {out}: besides an earlier generate's images it holds {len(foreign)} "
                        f"other file(s) (e.g. {', '.join(foreign[:3])}); move them out or choose another --out")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one."""
    old: Optional[Path] = None
    if final.exists():
        old = final.with_name(f".old-{final.name}.{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
