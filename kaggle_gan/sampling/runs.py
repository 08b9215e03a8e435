"""A trained run's generator: best.pt, generator.pt, or a checkpoint, loaded safely and said which."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import torch

from ..config import Config
from ..core.io import UserError
from ..nets.models import build_models
from ..training.checkpoint import FORMAT, GENERATOR_FORMAT, load_file, load_latest

FORMATS = (FORMAT, GENERATOR_FORMAT)


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
            scores, fresh = state.get("metrics") or {}, state.get("metrics_fresh") or {}
            why = ", ".join(f"{k} {scores[k]:.4g}" + (f" ({fresh[k]:.4g} on fresh noise)" if fresh.get(k) is not None
                                                      else "")
                            for k in ("afd", "kid", "fid") if scores.get(k) is not None)
            chosen = (state.get("chosen_by") or {}).get("metric")
            print(f"generate: from {run / name} (step {state['step']}{', ' + why if why else ''}"
                  + (f"; chosen by {chosen}" if chosen else "") + ")")
            state["path"] = str(run / name)
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
            return {**load_file(source, formats=FORMATS), "path": str(source)}
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

