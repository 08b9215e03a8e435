"""File plumbing shared by every stage: atomic writes, checksums, downloads, locks.

Everything that leaves a file under its final name goes through
:func:`atomic_path`, so a run killed at any moment leaves either the old file
or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional


class UserError(RuntimeError):
    """A problem the user can fix; the CLI prints it as one line, without a traceback."""


def cache_dir() -> Path:
    """Where downloaded assets live: ``$KAGGLE_GAN_CACHE`` or ``~/.cache/kaggle_gan``."""
    return Path(os.environ.get("KAGGLE_GAN_CACHE", Path.home() / ".cache" / "kaggle_gan"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only if the block succeeds.

    The temporary name starts with ``.tmp-`` so nothing mistakes it for a finished file.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists() and tmp_path.is_file():
            tmp_path.unlink()


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: Path,
    sha256: Optional[str] = None,
    size: Optional[int] = None,
    what: str = "file",
    offline_hint: str = "",
) -> Path:
    """Fetch ``url`` to ``dest`` with a progress bar, resuming a partial ``.part`` file.

    The file appears under ``dest`` only after its size and sha256 (when given)
    match. Network failures raise :class:`UserError` naming ``offline_hint``.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.is_file() and (size is None or dest.stat().st_size == size) and (
        sha256 is None or sha256_file(dest) == sha256
    ):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "kaggle-gan"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the .part file is already whole
            response = None
        else:
            raise UserError(f"could not download {what} from {url}: HTTP {err.code}. {offline_hint}") from err
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"could not download {what} from {url} ({err}); no internet? {offline_hint}") from err
    total, received = size, 0
    if response is not None:
        with response:
            if have and response.status != 206:  # server ignored the range: start again
                have = 0
            if size is None and response.length is not None:
                total = response.length + have
            mode = "ab" if have else "wb"
            with open(part, mode) as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=f"download {what}"
            ) as bar:
                try:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        received += len(block)
                        bar.update(len(block))
                except (OSError, http.client.HTTPException):
                    pass  # a dropped connection: the size check below keeps the part for a resume
    got = part.stat().st_size
    if total is not None and got < total and received:  # progress was made: keep the part, resume next time
        raise UserError(f"download of {what} stopped at {got} of {total} bytes; run again to resume")
    if total is not None and got != total:
        part.unlink()
        raise UserError(f"downloaded {what} has {got} bytes, expected {total}; run again to retry")
    if sha256 is not None:
        digest = sha256_file(part)
        if digest != sha256:
            part.unlink()
            raise UserError(f"downloaded {what} has sha256 {digest}, expected {sha256}; run again to retry")
    os.replace(part, dest)
    return dest


class RunLock:
    """An exclusive lock on a folder, so two processes never write the same run.

    Uses ``flock``: the kernel releases it when the holder dies, so a killed
    run never leaves a stale lock behind.
    """

    def __init__(self, folder: Path, hint: str = "wait for it to finish or choose another RUN name"):
        self.path = Path(folder) / ".lock"
        self.hint = hint
        self._fh = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise UserError(
                f"{self.path.parent} is in use by {holder}; {self.hint}"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()}")
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
