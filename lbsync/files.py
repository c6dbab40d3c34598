"""Files done safely: atomic writes, swap-in with a check and a way back, and the run lock.

Every file lbsync owns (nginx includes, state, metrics, host files written by `install`) goes
through `write_atomic`, so a reader (nginx, `lbsync status`, node_exporter) sees the old or the
new file whole, never half, even when the writer dies in between.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InstallError, LockError, NoPermission


def write_atomic(path: Path, content: str | bytes, durable: bool = True, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old or the new file whole.

    `durable=False` skips the fsyncs, for advisory files (state) written on every run.
    """
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new private file next to `path` (same file system, so the rename is atomic). Not
    tempfile: it costs the hook milliseconds of imports for a name that O_EXCL makes safe."""
    for attempt in range(100):
        tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{attempt}.tmp"))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue  # left by a killed writer with our pid: try the next name
        except PermissionError:
            raise NoPermission.on(path, "writing") from None
    raise InstallError(f"cannot create a temporary file beside {path}")


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` survive a power cut."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def swap_in(path: Path, content: str) -> Callable[[], str]:
    """Install `content` at `path` atomically, keeping the previous file as `<path>.prev`.

    Returns the way back: a function that puts the previous file back (or removes the new one
    when there was none) and says which, for the one error line that follows.
    """
    previous = path.with_name(path.name + ".prev")
    had_previous = path.exists()
    try:
        if had_previous:
            write_atomic(previous, path.read_bytes())
        write_atomic(path, content)
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from None

    def undo() -> str:
        if had_previous:
            os.replace(previous, path)
            return f"previous {path.name} restored"
        path.unlink(missing_ok=True)
        return f"{path.name} removed again"
    return undo


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist; unreadable -> InstallError (73).

    Bytes that are not UTF-8 are not ours: they come back replaced, so the file compares as
    different and is overwritten, instead of failing every run.
    """
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise InstallError(f"{path} is a directory: remove it, lbsync writes a file there") from None
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from None


def mark(path: Path) -> None:
    """Create an empty marker file; a read-only or full file system is one clear error (73)."""
    try:
        path.touch()
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from None


def unmark(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise InstallError(f"cannot remove {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def locked(path: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting at most `timeout` seconds for it.

    flock works on a read-only handle, so whoever can open the file can freeze every update:
    the file is 0600 (tightened if an older one was looser), never followed through a symlink,
    and its directory is made root-only when lbsync creates it.
    """
    fd = _open_lock(Path(path))
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise LockError(f"another lbsync run holds {path} (waited {timeout:.0f} s)") from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except PermissionError:
        raise NoPermission.on(path, "opening the lock file") from None
    except OSError as exc:
        why = "it is a symlink; refusing to follow it" if exc.errno == errno.ELOOP else exc.strerror
        raise LockError(f"cannot open lock file {path}: {why}") from None
    info = os.fstat(fd)
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return fd
