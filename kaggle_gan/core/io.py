"""File plumbing shared by every stage: atomic writes, checksums, downloads, locks.

Everything that leaves a file under its final name goes through
:func:`atomic_path`, so a run killed at any moment leaves either the old file
or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

# inside a folder of images that ``generate`` wrote: what it wrote and how (checkpoint, seeds, truncation, pool);
# generate reads it before replacing the folder, score before recording how the images were made
MARKER = ".kaggle_gan.json"
GENERATED_BY = "kaggle_gan generate"


class UserError(RuntimeError):
    """A problem the user can fix; the CLI prints it as one line, without a traceback."""


def option_hint(flag: str, make_var: str, value: str) -> str:
    """How to pass ``value``: ``DETECTOR=path`` under ``make`` (which sets MAKELEVEL), else ``--detector path``."""
    return f"{make_var}={value}" if make_var and os.environ.get("MAKELEVEL") else f"{flag} {value}"


RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_run_name(name: str) -> str:
    """``name`` if it is a safe run name (letters, digits, '.', '_', '-'; not only dots), else a UserError.

    Run names become folder and Make target names: a space splits a Make
    target in two, a '/' or '..' would write outside ``WORK/runs`` and ``submission/``.
    """
    if not RUN_NAME.fullmatch(name or "") or set(name) == {"."}:
        raise UserError(f"run name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                        f"(e.g. {re.sub(r'[^A-Za-z0-9._-]+', '_', name or '').strip('.') or 'run1'!r})")
    return name


# errno -> (what happened, what to do): failed writes the user has to fix, reported in one line
_WRITE_ERRORS: Dict[int, tuple] = {
    errno.ENOSPC: ("no space left on the device", "free some space, or point WORK= (--work) at a larger disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or point WORK= (--work) at a larger disk"),
    errno.EFBIG: ("file too large for this file system or limit", "point WORK= (--work) at another disk"),
    errno.EROFS: ("read-only file system", "point WORK= (--work) at a writable folder"),
    errno.EACCES: ("permission denied", "point WORK= (--work) at a folder you can write to"),
    errno.EPERM: ("operation not permitted", "point WORK= (--work) at a folder you can write to"),
}
# what torch.save (RuntimeError) and numpy.save (OSError without errno) raise when the disk fills under them;
# numpy 2's tofile says "Not enough free space to write N bytes after offset M"
_SHORT_WRITE = re.compile(r"PytorchStreamWriter failed|file write failed|unexpected pos|requested and \d+ written"
                          r"|not enough free space", re.IGNORECASE)


def write_failure(err: BaseException, path: Union[str, Path, None] = None, detail: str = "") -> Optional[UserError]:
    """A one-line :class:`UserError` for a write that failed for a reason the user must fix
    (full disk, quota, read-only or forbidden folder), naming ``path``; None for any other error."""
    if isinstance(err, OSError) and err.errno in _WRITE_ERRORS:
        what, fix = _WRITE_ERRORS[err.errno]
        where = err.filename if err.filename is not None and path is None else path
    elif isinstance(err, (OSError, RuntimeError)) and not isinstance(err, UserError) and _SHORT_WRITE.search(str(err)):
        what = ("no space left on the device" if "free space" in str(err).lower()
                else "a short write (no space left on the device?)")
        fix = _WRITE_ERRORS[errno.ENOSPC][1]
        where = path
    else:
        return None
    return UserError(f"cannot write {where if where is not None else 'a file'}: {what}{detail}; {fix}. "
                     "Files written before are unchanged; run the same command again afterwards")


def ensure_free_space(folder: Path, nbytes: int) -> None:
    """Refuse, in one line naming ``folder``, a write of ``nbytes`` that cannot fit on its disk, before any of
    it is written (a large array: the message is the same as a full disk's, without waiting for one)."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # no answer (a folder that does not exist yet): the write itself will tell
        return
    if nbytes > free:
        raise write_failure(OSError(errno.ENOSPC, "needs more space"), Path(folder),
                            f" ({nbytes / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free)")


def cache_dir() -> Path:
    """Where downloaded assets live: ``$KAGGLE_GAN_CACHE`` or ``~/.cache/kaggle_gan``."""
    return Path(os.environ.get("KAGGLE_GAN_CACHE", Path.home() / ".cache" / "kaggle_gan"))


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place only if the block succeeds.

    The temporary name starts with ``.tmp-`` so nothing mistakes it for a finished file.
    """
    final = Path(final)
    tmp_path: Optional[Path] = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}.", suffix=suffix, dir=final.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; finished files get the usual permissions
        tmp_path = Path(tmp)
        yield tmp_path
        if tmp_path.is_file():
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except (OSError, RuntimeError) as err:  # a full disk or read-only folder: one line, the old file kept
        failure = write_failure(err, final)
        if failure is None:
            raise
        raise failure from None
    finally:
        if tmp_path is not None and tmp_path.is_file():
            tmp_path.unlink()


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """A matplotlib figure laid out tightly and written as a PNG atomically, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(path)


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def written_by(path: Path, who: str) -> Optional[dict]:
    """The JSON object at ``path`` when its ``written_by`` is ``who``; None when missing, damaged or another's."""
    try:
        meta = read_json(path)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("written_by") == who else None


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

    A POSIX record lock (``lockf``) on ``FOLDER/.lock``: the kernel drops it
    when its process dies, and, unlike ``flock``, it is not inherited by the
    processes that one forks (decoding workers, compile workers), so an orphan
    left by a ``kill -9`` never keeps a run locked. POSIX locks do not exclude
    the process that holds them, so locks held by this process are also kept
    in :data:`_HELD`. The file names the holder's pid for the message.
    """

    _HELD: Dict[str, int] = {}  # real path of each .lock this process holds -> its file descriptor

    def __init__(self, folder: Path, hint: str = "wait for it to finish or choose another RUN name"):
        self.path = Path(folder) / ".lock"
        self.hint = hint
        self._fd: Optional[int] = None

    def _refuse(self, holder: str) -> UserError:
        return UserError(f"{self.path.parent} is in use by {holder}; {self.hint}")

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            key = os.path.realpath(self.path)
            if key in RunLock._HELD:
                raise self._refuse(f"pid {os.getpid()} (this process)")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise write_failure(err, self.path) or err from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)  # closing it never drops the other process's lock
            raise self._refuse(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        RunLock._HELD[key] = fd
        self._fd, self._key = fd, key
        return self

    def release(self) -> None:
        if self._fd is not None:
            RunLock._HELD.pop(self._key, None)
            os.close(self._fd)  # drops the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
