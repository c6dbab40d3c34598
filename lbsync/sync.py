"""reconcile(): the one idempotent pipeline every trigger runs.

snapshot -> select -> render -> compare -> check -> install -> test -> reload. State always comes
from the full membership the local Serf agent reports, never from an event's delta, so a missed
or repeated event cannot make the file drift. The whole run holds an flock, so a hook, a daemon
and a manual run never interleave.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import __version__
from .config import Settings
from .errors import InstallError, LockError, NginxError
from .members import Member, Policy, Selection, Skip, select
from .render import fingerprint, render

log = logging.getLogger("lbsync")

HEADER = "# lbsync fingerprint={inputs} body={body}\n"


class MemberSource(Protocol):
    """Where members come from: the Serf agent over RPC, or a list in tests."""

    def members(self) -> list[dict]: ...


class Outcome(enum.Enum):
    UNCHANGED = "unchanged"
    UPDATED = "updated"
    DRY_RUN = "dry-run"


@dataclass(frozen=True)
class SyncResult:
    outcome: Outcome
    backends: tuple[Member, ...]
    skipped: tuple[Skip, ...]
    diff: str = ""
    selection: Selection | None = field(default=None, compare=False)


def reconcile(settings: Settings, source: MemberSource, dry_run: bool = False,
              unhealthy: frozenset[str] = frozenset()) -> SyncResult:
    """Make the live upstream file equal to what the current membership renders to."""
    with locked(settings.lock_file, settings.lock_timeout):
        selection = select(source.members(), Policy.from_settings(settings))
        for skip in selection.skipped:
            log.warning("skipping member %s: %s", skip.name, skip.reason)
        result = _apply(settings, selection, dry_run, unhealthy)
    if not dry_run:
        save_state(settings, result)
    return result


def candidate_for(settings: Settings, selection: Selection, unhealthy: frozenset[str],
                  live: str | None = None) -> str | None:
    """The file to install, or None when `live` already is exactly that (Jinja2 not imported)."""
    context = {
        "upstream_name": settings.upstream_name,
        "algorithm": settings.algorithm,
        "hash_key": settings.hash_key,
        "keepalive": settings.keepalive,
        "backends": list(selection.backends),
        "unhealthy": sorted(unhealthy),
        "version": __version__,
    }
    inputs = fingerprint(settings.template, context)
    if live is not None and _header_matches(live, inputs):
        return None
    body = render(settings.template, context)
    return HEADER.format(inputs=inputs, body=_digest(body)) + body


def _apply(settings: Settings, selection: Selection, dry_run: bool,
           unhealthy: frozenset[str]) -> SyncResult:
    output = Path(settings.output)
    live = _read(output)
    candidate = candidate_for(settings, selection, unhealthy, live)
    done = dict(backends=selection.backends, skipped=selection.skipped, selection=selection)
    if candidate is None or candidate == live:
        if _reload_pending(output).exists():
            log.info("unchanged (%d backends); retrying the reload that failed last time",
                     len(selection.backends))
            _reload(settings, output)
        else:
            log.info("unchanged (%d backends); not reloading", len(selection.backends))
        return SyncResult(Outcome.UNCHANGED, **done)
    diff = unified_diff(live or "", candidate, str(output))
    if dry_run:
        log.info("dry run: would install %d backends; nothing written", len(selection.backends))
        return SyncResult(Outcome.DRY_RUN, diff=diff, **done)
    from . import nginx  # not on the unchanged path: it pulls in subprocess

    _check_or_keep_rejected(settings, output, candidate)
    install(output, candidate, lambda: nginx.test(settings.nginx_bin, settings.nginx_conf,
                                                  settings.nginx_prefix))
    _reload(settings, output)
    names = ", ".join(m.name for m in selection.backends) or "none"
    down = sorted(unhealthy & {m.name for m in selection.backends})
    health = f"; down by health checks: {', '.join(down)}" if down else ""
    log.info("updated %s (%d backends: %s%s); nginx reloaded", output, len(selection.backends),
             names, health)
    return SyncResult(Outcome.UPDATED, diff=diff, **done)


def _reload(settings: Settings, output: Path) -> None:
    """Reload nginx; until a reload succeeds, a marker makes every later run retry it.

    Without the marker a failed reload would be forgotten: the next run finds the file already
    current and, correctly for the file, does nothing, while nginx keeps serving the old pool.
    """
    from . import nginx

    marker = _reload_pending(output)
    marker.touch()
    nginx.reload(settings.reload_command)
    marker.unlink()


def _reload_pending(output: Path) -> Path:
    return output.with_name(f".{output.name}.reload-pending")


def _check_or_keep_rejected(settings: Settings, output: Path, candidate: str) -> None:
    """nginx -t on the candidate alone; when refused, keep it and nginx's words for the operator."""
    from . import nginx

    try:
        nginx.check(candidate, settings.nginx_bin)
    except NginxError as exc:
        rejected = output.with_name(output.name + ".rejected")
        with contextlib.suppress(OSError):
            write_atomic(rejected, candidate)
            write_atomic(rejected.with_name(rejected.name + ".err"), exc.output + "\n")
        log.error("%s; live file %s kept, candidate saved as %s", exc, output, rejected)
        raise


def install(output: Path, content: str, verify) -> None:
    """Swap `content` in atomically, keeping the previous file as `<output>.prev`.

    `verify()` runs with the new file in place (nginx -t on the real config); if it raises, the
    previous file is put back (or the new one removed) before the error propagates.
    """
    previous = output.with_name(output.name + ".prev")
    had_previous = output.exists()
    try:
        if had_previous:
            write_atomic(previous, output.read_bytes())
        write_atomic(output, content)
    except OSError as exc:
        raise InstallError(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        verify()
    except Exception:
        if had_previous:
            os.replace(previous, output)
        else:
            output.unlink(missing_ok=True)
        log.error("nginx refused the installed %s; previous version restored", output)
        raise


def write_atomic(path: Path, content: str | bytes, durable: bool = True) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old or the new file whole.

    `durable=False` skips the fsyncs, for advisory files (state) written on every run.
    """
    import tempfile

    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(path: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on `path`, waiting at most `timeout` seconds for it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LockError(f"cannot open lock file {path}: {exc.strerror}") from None
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


def save_state(settings: Settings, result: SyncResult) -> None:
    """Record the last result for `lbsync status`; a failure here never fails the sync."""
    state = {
        "time": time.time(),
        "outcome": result.outcome.value,
        "backends": [m.name for m in result.backends],
        "skipped": {s.name: s.reason for s in result.skipped},
    }
    try:
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(settings.state_dir) / "last_sync.json", json.dumps(state, indent=1), durable=False)
    except OSError as exc:
        log.warning("cannot save state in %s: %s", settings.state_dir, exc.strerror or exc)


def load_state(settings: Settings, name: str = "last_sync.json") -> dict | None:
    """A state file from `state_dir` (this module's, the daemon's or the autoscaler's), if readable."""
    try:
        return json.loads((Path(settings.state_dir) / name).read_text())
    except (OSError, ValueError):
        return None


def unified_diff(old: str, new: str, name: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        f"{name} (live)", f"{name} (candidate)"))


def _header_matches(live: str, inputs: str) -> bool:
    first, _, body = live.partition("\n")
    return first + "\n" == HEADER.format(inputs=inputs, body=_digest(body))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(f"cannot read {path}: {exc}") from None


class SerfSource:
    """Members from the local Serf agent over RPC: one connection per snapshot."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def members(self) -> list[dict]:
        from .serf import SerfClient

        settings = self.settings
        with SerfClient(settings.rpc_addr, settings.rpc_auth, settings.rpc_timeout) as client:
            return client.members_filtered(tags={"role": settings.role})
