"""Checkpoints: full training state, written atomically, loaded safely.

A checkpoint is a plain ``torch.save`` dict of tensors and primitives, so it
loads with ``torch.load(weights_only=True)``: a file carrying a pickled
object (code) is refused instead of executed.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import __version__
from .io import UserError, atomic_path

FORMAT = "kaggle_gan/1"  # full training state
GENERATOR_FORMAT = "kaggle_gan/generator/1"  # the sampling generator alone
LAST, PREVIOUS = "last.pt", "previous.pt"


def save_checkpoint(state: Dict[str, Any], folder: Path, epoch_copy: Optional[int] = None) -> Path:
    """Write ``state`` as ``folder/last.pt``; the former ``last.pt`` becomes ``previous.pt``.

    Killed at any point, the folder still holds at least one whole checkpoint.
    """
    folder = Path(folder)
    state = dict(state, format=FORMAT, version=__version__)
    with atomic_path(folder / LAST, suffix=".pt") as tmp:
        torch.save(state, tmp)
        last = folder / LAST
        if last.exists():
            os.replace(last, folder / PREVIOUS)
    if epoch_copy is not None:
        with atomic_path(folder / f"epoch_{epoch_copy:04d}.pt", suffix=".pt") as tmp:
            shutil.copyfile(folder / LAST, tmp)
    return folder / LAST


def save_generator(weights: Dict[str, Any], config: Dict[str, Any], step: int, path: Path) -> Path:
    """Export the generator used for sampling (``generator.pt``), atomically."""
    state = {"format": GENERATOR_FORMAT, "version": __version__, "config": config, "step": step, "G": weights}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_file(path: Path, map_location: str = "cpu", formats=(FORMAT,)) -> Dict[str, Any]:
    """Load one checkpoint safely; ``UserError`` for a refused file, ``ValueError`` for a corrupt one."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise UserError(
                f"refusing {path}: it carries pickled Python objects, which could run code when loaded; "
                "only kaggle_gan checkpoints (tensors and plain values) are accepted"
            ) from None
        raise ValueError(f"{path} is corrupt ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{path} is corrupt or truncated ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise ValueError(f"{path} is not a kaggle_gan checkpoint")
    return state


def candidates(folder: Path) -> List[Path]:
    """Checkpoints of a run, newest first: last, previous, then per-epoch copies."""
    folder = Path(folder)
    epochs = sorted(folder.glob("epoch_*.pt"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]), reverse=True)
    return [p for p in (folder / LAST, folder / PREVIOUS, *epochs) if p.is_file()]


def load_latest(folder: Path, map_location: str = "cpu") -> Optional[Dict[str, Any]]:
    """The newest checkpoint that loads, skipping corrupt ones with a message; None if there is none."""
    for path in candidates(folder):
        try:
            state = load_file(path, map_location)
        except ValueError as err:
            print(f"warning: {err}; trying the previous checkpoint")
            continue
        state["path"] = str(path)
        return state
    return None


def check_compatible(saved: Dict[str, Any], wanted: Dict[str, Any], path: str) -> None:
    """Refuse to resume a checkpoint whose model, loss or optimiser differs from the requested config."""
    for group in ("model", "loss", "optim"):
        for key, value in wanted[group].items():
            old = saved.get(group, {}).get(key)
            if old != value:
                raise UserError(
                    f"{path} was trained with {group}.{key}={old!r}, not {value!r}; "
                    "use another RUN name (or delete the run folder) to start afresh"
                )
    for key in ("batch_size", "seed"):
        if saved["train"][key] != wanted["train"][key]:
            raise UserError(
                f"{path} was trained with train.{key}={saved['train'][key]!r}, not {wanted['train'][key]!r}; "
                "changing it mid-run would change the data order: use another RUN name"
            )
