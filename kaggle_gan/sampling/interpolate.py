"""Latent interpolation: a GIF (and an MP4 when OpenCV can write one) walking the noise between seeds.

``kaggle-gan interpolate --run RUN --seeds 1,2,3 --frames 60`` writes, under
``RUN/interpolation/`` unless ``--out`` names another base path:

- ``seeds-1-2-3.gif``: spherical interpolation through the seeds' noise
  (:func:`kaggle_gan.sampling.noise.path`), seed 1 on the first frame, seed 3 on
  the last, each seed exactly on a frame;
- ``seeds-1-2-3.mp4``: the same frames, when OpenCV's video writer works;
- ``seeds-1-2-3-strip.png``: 8 evenly spaced frames side by side;
- ``seeds-1-2-3.json``: what was drawn, and the marker that lets a later run
  replace these files (files it did not write are never replaced).

A class-conditional generator draws one row per class: the GIF's frames
show every class side by side for the same noise; the strip has a row per
class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..core.io import UserError, atomic_path, write_json, written_by

WRITTEN_BY = "kaggle_gan interpolate"
STRIP_FRAMES = 8


def interpolate(
    source: Path,
    seeds: Union[str, Sequence[int]] = "1,2,3",
    frames: int = 60,
    out: Optional[Path] = None,
    truncation: float = 1.0,
    size: int = 128,
    fps: int = 20,
    device: str = "auto",
    checkpoint: str = "best",
    condition: Optional[str] = None,
) -> Dict[str, Path]:
    """Write the GIF, MP4 (when possible), strip PNG and JSON for ``seeds``; returns {kind: path}. A conditional
    generator draws a row per class, or one row with ``condition`` (a class, or a set of objects: a
    set-conditioned generator needs one)."""
    from ..core.runtime import resolve_device
    from .conditions import conditions_for, draws_sets
    from .noise import check_path, noise, parse_seeds, path, truncation_threshold
    from .runs import generator_of, load_state

    seeds = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    check_path(len(seeds), frames)  # before the generator loads
    truncation_threshold(truncation)
    if fps < 1 or size < 8:
        raise UserError(f"--fps must be >= 1 and --size >= 8, got {fps} and {size}")
    source = Path(source)
    name = "seeds-" + "-".join(map(str, seeds)) if len(seeds) <= 8 else f"seeds-{seeds[0]}-to-{seeds[-1]}"
    base = Path(out) if out else (source if source.is_dir() else source.parent) / "interpolation" / name
    targets = {"gif": _named(base, ".gif"), "mp4": _named(base, ".mp4"), "strip": _named(base, "-strip.png"),
               "json": _named(base, ".json")}
    _check_replaceable(targets)
    dev = resolve_device(device)
    state = load_state(source, checkpoint)
    G, cfg, step = generator_of(state, dev, source)
    if cfg.model.arch == "mlp":
        raise UserError(f"{source} is a 2-D toy run: it draws points, not images")
    z = path(noise(seeds, cfg.model.z_dim, truncation), frames)
    rows = conditions_for(state, cfg.model.classes, 1, [], condition) if condition is not None else None
    if rows is None and draws_sets(state):  # a class-conditional run draws a row per class; sets have no rows
        raise UserError("this run draws sets of objects: say which with --condition 'red cube,blue sphere'")
    grid = frame_images(G, z, cfg.model.classes, size, dev, rows)  # (frames, rows, size, size, 3)
    written = {"gif": _write_gif(_row_frames(grid), targets["gif"], fps)}
    video = _write_mp4(_row_frames(grid), targets["mp4"], fps)
    if video is not None:
        written["mp4"] = video
    picks = np.round(np.linspace(0, frames - 1, min(STRIP_FRAMES, frames))).astype(int)
    written["strip"] = _write_png(_strip(grid[picks]), targets["strip"])
    write_json(targets["json"], {"written_by": WRITTEN_BY, "source": str(source), "step": step, "seeds": seeds,
                                 "condition": condition,
                                 "frames": frames, "truncation": truncation, "size": size, "fps": fps,
                                 "files": [p.name for p in written.values()]})
    written["json"] = targets["json"]
    print(f"interpolate: {frames} frames through seeds {','.join(map(str, seeds))} -> "
          + ", ".join(str(p) for p in written.values()))
    return written


@torch.no_grad()
def frame_images(G, z: torch.Tensor, classes: int, size: int, device: torch.device,
                 conditions: Optional[torch.Tensor] = None) -> np.ndarray:
    """(frames, rows, size, size, 3) uint8: row r is class r for a conditional G, or the r-th of ``conditions``
    (classes (R,) or sets (R, K)); one row for an unconditional G."""
    from ..data.pictures import to_uint8
    from .noise import batches, draw

    if conditions is None and classes:
        conditions = torch.arange(classes)
    rows = 1 if conditions is None else len(conditions)
    zz = z.repeat_interleave(rows, dim=0)
    y = None if conditions is None else conditions.repeat(len(z), *[1] * (conditions.dim() - 1))
    out = [to_uint8(draw(G, zz[sl], device, None if y is None else y[sl]), size) for sl in batches(len(zz))]
    return np.concatenate(out).reshape(len(z), rows, size, size, 3)


def _row_frames(grid: np.ndarray) -> List[np.ndarray]:
    """One picture per frame: its rows (classes) side by side."""
    return [np.concatenate(list(frame), axis=1) for frame in grid]


def _strip(grid: np.ndarray) -> np.ndarray:
    """(rows * size, frames * size, 3): frames left to right, one row per class."""
    return np.concatenate([np.concatenate(list(grid[:, r]), axis=1) for r in range(grid.shape[1])], axis=0)


def _named(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def _check_replaceable(targets: Dict[str, Path]) -> None:
    """Refuse when a target exists and the JSON beside it does not say this command wrote it."""
    present = [p for p in targets.values() if p.exists()]
    if not present:
        return
    if written_by(targets["json"], WRITTEN_BY) is None:
        raise UserError(f"refusing to replace {present[0]}: kaggle_gan did not write it; move it or choose another "
                        "--out")


def _write_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def _write_gif(frames: List[np.ndarray], path: Path, fps: int) -> Path:
    from PIL import Image

    pictures = [Image.fromarray(f) for f in frames]
    with atomic_path(path, suffix=".gif") as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=round(1000 / fps),
                         loop=0)
    return path


class _NoVideo(Exception):
    pass


def _write_mp4(frames: List[np.ndarray], path: Path, fps: int) -> Optional[Path]:
    """The frames as an MP4 through OpenCV's writer; None (with a note) where it cannot write one."""
    try:
        import cv2
    except ImportError:
        print("interpolate: no MP4 (OpenCV is not installed); the GIF has the same frames")
        return None
    h, w = frames[0].shape[:2]
    try:
        with atomic_path(path, suffix=".mp4") as tmp:
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise _NoVideo
            for f in frames:
                writer.write(np.ascontiguousarray(f[:, :, ::-1]))  # OpenCV wants BGR
            writer.release()
    except _NoVideo:
        print("interpolate: no MP4 (this OpenCV build has no MPEG-4 writer); the GIF has the same frames")
        return None
    return path
