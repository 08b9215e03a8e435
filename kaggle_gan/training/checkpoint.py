"""Checkpoints: full training state, written atomically, loaded safely.

A checkpoint is a plain ``torch.save`` dict of tensors and primitives, so it
loads with ``torch.load(weights_only=True)``: a file carrying a pickled
object (code) is refused instead of executed.

``torch.load`` does not notice a flipped byte inside tensor data (the zip
members are stored without a checked CRC), so every file also carries
``sha256``, a digest of its own content computed by :func:`content_digest`;
a mismatch marks the file corrupt and :func:`load_latest` falls back to the
previous one. The digest is an ordinary string entry, so the file still
loads with plain ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..core.io import UserError, atomic_path
from ..core.version import __version__

FORMAT = "kaggle_gan/1"  # full training state
GENERATOR_FORMAT = "kaggle_gan/generator/1"  # the sampling generator alone
LAST, PREVIOUS = "last.pt", "previous.pt"
DIGEST_KEY = "sha256"


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    """Hash ``obj`` (nested dicts/lists of tensors and plain values) in a canonical order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        # optimiser state dicts use int keys, everything else str: sort by (type, repr) to mix them
        items = sorted(obj.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        h.update(f"D{len(items)}:".encode())
        for k, v in items:
            h.update(f"{type(k).__name__}:{k!r}=".encode())
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    else:  # str, int, float (repr is exact), bool, None
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_digest(state: Dict[str, Any]) -> str:
    """sha256 of a checkpoint's content, leaving out the digest entry itself."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def _stamp(state: Dict[str, Any]) -> Dict[str, Any]:
    state = dict(state)
    state.pop(DIGEST_KEY, None)
    state[DIGEST_KEY] = content_digest(state)
    return state


def _remove_stale_temps(folder: Path) -> None:
    """Delete temporary files a killed writer left behind (the run lock makes this the only writer)."""
    for stale in folder.glob(".tmp-*.pt"):
        with contextlib.suppress(OSError):
            stale.unlink()


def save_checkpoint(state: Dict[str, Any], folder: Path, epoch_copy: Optional[int] = None) -> Path:
    """Write ``state`` as ``folder/last.pt``; the former ``last.pt`` becomes ``previous.pt``.

    Killed at any point, the folder still holds at least one whole checkpoint.
    """
    folder = Path(folder)
    _remove_stale_temps(folder)
    state = _stamp(dict(state, format=FORMAT, version=__version__))
    with atomic_path(folder / LAST, suffix=".pt") as tmp:
        torch.save(state, tmp)
        last = folder / LAST
        if last.exists():
            os.replace(last, folder / PREVIOUS)
    if epoch_copy is not None:
        with atomic_path(folder / f"epoch_{epoch_copy:04d}.pt", suffix=".pt") as tmp:
            shutil.copyfile(folder / LAST, tmp)
    return folder / LAST


def save_generator(weights: Dict[str, Any], config: Dict[str, Any], step: int, path: Path,
                   extra: Optional[Dict[str, Any]] = None) -> Path:
    """Export the generator used for sampling (``generator.pt``, ``best.pt`` with its ``extra`` scores), atomically."""
    state = _stamp({"format": GENERATOR_FORMAT, "version": __version__, "config": config, "step": step, "G": weights,
                    **(extra or {})})
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return Path(path)


def add_to_generator(path: Path, entries: Dict[str, Any]) -> Path:
    """Rewrite the generator file ``path`` with ``entries`` added (its digest renewed), atomically."""
    state = load_file(path, formats=(GENERATOR_FORMAT,))
    state = _stamp({**state, **entries})
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return Path(path)


def _is_whole_pickle(data: bytes) -> bool:
    """True if ``data`` parses as one complete pickle stream (parsed by ``pickletools``, never executed)."""
    import io
    import pickletools

    try:
        for _op, _arg, _pos in pickletools.genops(io.BytesIO(data)):
            pass
    except Exception:  # random bytes, a truncated stream
        return False
    return True


def _carries_pickled_code(path: Path) -> bool:
    """Whether a file that ``weights_only`` refused is a real pickle (code to refuse) rather than damage.

    A ``torch.save`` file is a zip whose ``*/data.pkl`` member holds the pickle;
    the legacy format is a bare pickle. Random or truncated bytes do not parse as
    a whole pickle stream, so they count as damage, not as an attack.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            return member is not None and _is_whole_pickle(zf.read(member))
    except (zipfile.BadZipFile, OSError, KeyError, EOFError):
        pass
    try:
        return _is_whole_pickle(Path(path).read_bytes())
    except OSError:
        return False


def load_file(path: Path, map_location: str = "cpu", formats=(FORMAT,)) -> Dict[str, Any]:
    """Load one checkpoint safely.

    ``UserError`` for a file that carries pickled code (refused, never run);
    ``ValueError`` for a damaged one (empty, truncated, random bytes, a
    content digest that does not match), which callers skip for an older copy
    (:func:`load_latest`, and ``generate`` for ``generator.pt``).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds for damaged files (IndexError for an empty one)
        if isinstance(err, pickle.UnpicklingError) and _carries_pickled_code(path):
            raise UserError(
                f"refusing {path}: it carries pickled Python objects, which could run code when loaded; "
                "only kaggle_gan checkpoints (tensors and plain values) are accepted"
            ) from None
        why = "not a pickle" if isinstance(err, pickle.UnpicklingError) else str(err).strip().split(". ")[0][:120]
        raise ValueError(f"{path} is corrupt or truncated ({type(err).__name__}: {why})") from None
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise ValueError(f"{path} is not a kaggle_gan checkpoint")
    # files written before the digest existed carry none; any file that has one must match it
    if DIGEST_KEY in state and state[DIGEST_KEY] != content_digest(state):
        raise ValueError(f"{path} is corrupt (its content does not match the sha256 stored in it)")
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
    from ..config import Config

    defaults = Config().to_dict()
    for group in ("model", "loss", "optim"):
        for key, value in wanted[group].items():
            # a key added after the checkpoint was written held its default then
            old = saved.get(group, {}).get(key, defaults[group][key])
            if old != value:
                raise UserError(
                    f"{path} was trained with {group}.{key}={old!r}, not {value!r}; keep its settings "
                    "(make remembers them: leave PRESET and SET out) or train the new ones under another RUN name"
                )
    for key in ("batch_size", "seed"):
        if saved["train"][key] != wanted["train"][key]:
            raise UserError(
                f"{path} was trained with train.{key}={saved['train'][key]!r}, not {wanted['train'][key]!r}; "
                "changing it mid-run would change the data order: use another RUN name"
            )
