"""Find a pretrained weights file, check it, or stand in a seeded random network.

Generic on purpose: the FID Inception uses it today, other feature backbones
(timm, CLIP) can describe their file with a :class:`WeightsSpec` and reuse it.
A weights source is one of

- ``None``: look for the file by name in the known cache folders,
- a path to a file (``--inception-weights PATH``),
- ``random:SEED``: no file at all; the caller initialises the network from
  ``SEED``, and every number it produces must be labelled a proxy.

Nothing here touches the network: when the file is absent the user gets one
line naming the URL and the folder to put it in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .io import UserError, cache_dir, option_hint, sha256_file

_RANDOM = re.compile(r"^random:(\d+)$")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


class WeightsMissing(UserError):
    """The weights file is nowhere to be found; callers may skip the metric instead of failing."""


@dataclass(frozen=True)
class WeightsSpec:
    """What a weights file should be.

    ``sha256`` is the full hex digest or a prefix of it (torch hub names carry
    the first 8 hex digits, e.g. ``...-6726825d.pth``); ``url`` may be None
    when there is no public address. ``option`` is the command-line flag that
    supplies a path, named in error messages.
    """

    name: str
    filename: str
    url: Optional[str]
    sha256: Optional[str]
    option: str = "--weights"
    make_var: str = ""  # the Make variable that supplies it (INCEPTION, WEIGHTS), named when run under make

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _HEX.match(self.sha256):
            raise ValueError(f"sha256 of {self.name} must be 8 to 64 lowercase hex digits, got {self.sha256!r}")


@dataclass(frozen=True)
class ResolvedWeights:
    """A checked weights file (``path`` and its full ``sha256``) or a seed for random weights."""

    spec: WeightsSpec
    path: Optional[Path]
    sha256: Optional[str]
    seed: Optional[int]

    @property
    def is_random(self) -> bool:
        return self.seed is not None

    @property
    def identity(self) -> str:
        """What changes every number computed with these weights: the file digest or ``random:SEED``."""
        return f"random:{self.seed}" if self.is_random else str(self.sha256)

    def describe(self) -> dict:
        return {
            "name": self.spec.name,
            "source": f"random:{self.seed}" if self.is_random else str(self.path),
            "sha256": self.sha256,
            "random": self.is_random,
        }


def parse_random(source: Union[str, Path, None]) -> Optional[int]:
    """``"random:7"`` -> 7; anything else -> None."""
    if source is None:
        return None
    m = _RANDOM.match(str(source).strip())
    return int(m.group(1)) if m else None


def search_dirs() -> List[Path]:
    """Folders searched for a weights file by name, in order.

    The torch hub checkpoint folder comes first because that is where
    pytorch-fid, torchvision and timm leave downloads (``$TORCH_HOME/hub/checkpoints``).
    """
    import torch.hub

    return [Path(torch.hub.get_dir()) / "checkpoints", cache_dir() / "weights"]


def check_sha256(path: Path, expected: Optional[str], what: str) -> str:
    """Full sha256 of ``path``; a :class:`UserError` when it does not start with ``expected``."""
    digest = sha256_file(path)
    if expected is not None and not digest.startswith(expected.lower()):
        raise UserError(
            f"{what} at {path} has sha256 {digest[:16]}..., expected {expected}...: "
            "wrong or corrupt file; delete it and fetch it again"
        )
    return digest


def missing_message(spec: WeightsSpec, dirs: Sequence[Path]) -> str:
    """One line saying where the file goes, where to get it and how to skip it."""
    where = f"download {spec.url} and save it as {Path(dirs[0]) / spec.filename}" if spec.url else (
        f"save it as {Path(dirs[0]) / spec.filename}"
    )
    return (
        f"{spec.name} weights not found ({spec.filename} is not in {', '.join(str(d) for d in dirs)}); "
        f"{where}, or pass {option_hint(spec.option, spec.make_var, 'PATH')} "
        f"(or {option_hint(spec.option, spec.make_var, 'random:SEED')} for a proxy)"
    )


def resolve_weights(
    spec: WeightsSpec,
    source: Union[str, Path, None] = None,
    *,
    sha256: Optional[str] = None,
    dirs: Optional[Sequence[Path]] = None,
) -> ResolvedWeights:
    """Locate and verify the weights described by ``spec``.

    ``source``: None (search ``dirs``, default :func:`search_dirs`), a file
    path, or ``random:SEED``. ``sha256`` overrides ``spec.sha256`` (a full
    digest or a prefix), e.g. for a file the user trained or a test wrote.
    Raises :class:`WeightsMissing` when nothing is found, :class:`UserError`
    on a checksum mismatch. Never downloads.
    """
    expected = (sha256 or spec.sha256 or "").lower() or None
    if expected is not None and not _HEX.match(expected):
        raise UserError(f"expected sha256 for {spec.name} must be 8 to 64 hex digits, got {sha256!r}")
    seed = parse_random(source)
    if seed is not None:
        return ResolvedWeights(spec, None, None, seed)
    if source is not None and str(source).startswith("random"):
        raise UserError(f"{spec.option} {source!r}: write random:SEED with an integer seed, e.g. random:0")
    if source is not None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsMissing(f"{spec.option} {path}: no such file; {missing_message(spec, dirs or search_dirs())}")
        return ResolvedWeights(spec, path, check_sha256(path, expected, spec.name), None)
    dirs = list(dirs) if dirs is not None else search_dirs()
    for d in dirs:
        path = Path(d) / spec.filename
        if path.is_file():
            return ResolvedWeights(spec, path, check_sha256(path, expected, spec.name), None)
    raise WeightsMissing(missing_message(spec, dirs))
