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
from typing import Optional, Tuple

import numpy as np
import torch

from .checkpoint import FORMAT, GENERATOR_FORMAT, load_file, load_latest
from .config import Config
from .io import UserError, current_umask, read_json, write_failure, write_json
from .models import bind, build_models
from .runtime import resolve_device

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


def load_generator(source: Path, device: torch.device, checkpoint: str = "best") -> Tuple[torch.nn.Module, Config, int]:
    """(EMA generator in eval mode, its config, its step) from a run folder, a generator file or a checkpoint.

    For a run folder, ``checkpoint`` ``best`` prefers ``best.pt`` (written by the evaluation during training)
    and ``last`` takes ``generator.pt`` (the end of training); either falls back to the latest checkpoint.
    """
    source = Path(source)
    if checkpoint not in ("best", "last"):
        raise UserError(f"--checkpoint must be best or last, not {checkpoint!r}")
    if source.is_dir():
        state = _run_state(source, checkpoint)
    elif source.is_file():
        try:
            state = load_file(source, formats=FORMATS)
        except ValueError as err:
            raise UserError(str(err)) from None
    else:
        raise UserError(f"no generator at {source}; pass a run folder or a .pt file")
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


def to_uint8(x: torch.Tensor, size: int) -> np.ndarray:
    """Generator output (B, 3, R, R) in [-1, 1] -> (B, size, size, 3) uint8, resized with antialiasing."""
    x = x.float()
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
    batch_size: int = 250,
    device: str = "auto",
    quality: int = JPEG_QUALITY,
    checkpoint: str = "best",
    image_format: str = "jpg",
) -> Path:
    """Write ``n`` images ``1.jpg .. n.jpg`` (``size`` x ``size``; ``.png`` with ``image_format="png"``) from
    ``source`` into the folder ``out``.

    Deterministic for a given generator and ``seed``: the noise is drawn on
    the CPU, so it does not depend on the device.
    """
    from tqdm.auto import tqdm

    if n < 1:
        raise UserError(f"--count must be positive, got {n}")
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"--image-format must be jpg or png, not {image_format!r}")
    out = Path(out)
    check_replaceable(out)  # before minutes of work: a folder that is not ours is never touched
    dev = resolve_device(device)
    G, cfg, step = load_generator(source, dev, checkpoint)
    if cfg.model.arch == "mlp":
        raise UserError(f"{source} is a 2-D toy run: it draws points, not images (see its samples/ pictures)")
    meta = {"written_by": WRITTEN_BY, "source": str(source), "step": step, "count": n, "seed": seed, "size": size,
            "quality": quality, "image_format": image_format}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for leftover in [*out.parent.glob(f".tmp-{out.name}.*"), *out.parent.glob(f".old-{out.name}.*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # from a generate killed earlier
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    except OSError as err:
        raise write_failure(err, out) or err from None
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the finished folder gets the usual permissions
    noise = torch.Generator().manual_seed(seed)
    try:
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            pending = []
            for first in tqdm(range(0, n, batch_size), desc="generate", unit="batch"):
                b = min(batch_size, n - first)
                z = torch.randn(b, cfg.model.z_dim, generator=noise).to(dev)
                # a conditional generator draws the classes in turn: image i is class (i - 1) mod classes
                y = torch.arange(first, first + b, device=dev) % cfg.model.classes if cfg.model.classes else None
                x = to_uint8(bind(G, y)(z), size)
                pending.append(pool.submit(_write_batch, x, tmp, first + 1, quality, image_format))
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
    sidecar = out.parent / f"{out.name}.json"
    if not sidecar.exists() or _ours(sidecar):
        write_json(sidecar, meta)
    else:
        print(f"generate: left {sidecar} alone (not written by kaggle_gan); the details are in {out / MARKER}")
    print(f"generate: {n} images from step {step} in {out}")
    return out


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
        try:
            meta = read_json(marker)
            if meta.get("written_by") == WRITTEN_BY:
                return {MARKER, *meta["files"]}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            return None
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
