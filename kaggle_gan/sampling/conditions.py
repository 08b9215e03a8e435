"""What a conditional generator is asked to draw: one class, or one set of objects, per image.

- A class-conditional run (``make cgan``) draws class ``seed mod classes`` for
  image k by default; ``--condition NAME`` draws that class for every image.
- A set-conditioned run (``make iclevr``) has no default: ``--condition "red
  cube,blue sphere"`` draws that set for every image, ``--conditions
  sets.json`` (the lab's format, a list of object-name lists) one image per set.

Names are the run's own (its generator file carries the class or object
names of the data it was trained on); a file from before that, with the lab's
24 objects, reads the lab's ``objects.json``. An index (``7``) works too. An
empty set is refused: the mean of no embeddings would set every conditional
batch norm's gain to 0.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

from ..core.io import UserError
from .noise import classes_of

LAB_OBJECTS = Path(__file__).resolve().parents[1] / "data" / "iclevr" / "objects.json"


def names_of(state: dict, classes: int) -> List[str]:
    """The class (or object) names of a generator file; the lab's objects for a 24-class file without names."""
    names = state.get("class_names")
    if names:
        return [str(n) for n in names]
    if classes == 24:
        table = json.loads(LAB_OBJECTS.read_text())
        return [name for name, _ in sorted(table.items(), key=lambda kv: kv[1])]
    return [str(i) for i in range(classes)]


def draws_sets(state: dict) -> bool:
    """Whether the run was trained on sets of objects (multi-hot conditions), not one class per image."""
    return state.get("condition") == "set"


def _index(name: str, names: Sequence[str], where: str) -> int:
    if name in names:
        return list(names).index(name)
    if name.isdigit() and int(name) < len(names):
        return int(name)
    shown = ", ".join(repr(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
    raise UserError(f"{where}: {name!r} is not one of this run's {len(names)} classes ({shown})")


def parse_condition(text: str, names: Sequence[str], sets: bool) -> torch.Tensor:
    """``"red cube,blue sphere"`` -> (K,) float multi-hot for a set-conditioned run; ``"7"`` or a class name ->
    a 0-d long class index for a class-conditional one."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise UserError("--condition names no object: give one or more, e.g. --condition 'red cube,blue sphere'")
    index = [_index(name, names, "--condition") for name in items]
    if not sets:
        if len(index) > 1:
            raise UserError(f"--condition lists {len(index)} classes, but this run draws one class per image")
        return torch.tensor(index[0])
    row = torch.zeros(len(names))
    row[index] = 1.0
    return row


def read_conditions(path: Union[str, Path], names: Sequence[str]) -> torch.Tensor:
    """The lab's condition file (a JSON list of object-name lists) -> (N, K) float multi-hot, one row per set."""
    path = Path(path).expanduser()
    try:
        sets = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"--conditions: cannot read {path} ({err.strerror or err})") from None
    except ValueError as err:
        raise UserError(f"--conditions: {path} is not JSON ({err})") from None
    if not isinstance(sets, list) or not sets or not all(isinstance(s, list) for s in sets):
        raise UserError(f"--conditions: {path} must be a list of object-name lists, as the lab's test.json")
    rows = torch.zeros(len(sets), len(names))
    for i, objects in enumerate(sets):
        if not objects:
            raise UserError(f"--conditions: set {i} of {path} is empty; every set needs at least one object")
        rows[i, [_index(str(o), names, f"--conditions set {i}") for o in objects]] = 1.0
    return rows


def conditions_for(state: dict, classes: int, count: int, seeds: Sequence[int], condition: Optional[str] = None,
                   conditions: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The condition of each of ``count`` images: the rows of ``conditions``, ``condition`` for every image, or
    a class-conditional run's default (seed mod classes); None for an unconditional generator."""
    if not classes:
        if condition is not None or conditions is not None:
            raise UserError("this generator is unconditional: leave out --condition and --conditions")
        return None
    if conditions is not None:
        return conditions
    if condition is not None:
        one = parse_condition(condition, names_of(state, classes), draws_sets(state))
        return one.expand(count, *one.shape).clone()
    if draws_sets(state):
        raise UserError("this run draws sets of objects: say which with --condition 'red cube,blue sphere' (every "
                        "image) or --conditions sets.json (one image per set, the lab's format)")
    return classes_of(seeds, classes)
