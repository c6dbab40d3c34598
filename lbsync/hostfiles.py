"""Make a host's disk match a list of files: only what differs is written, each change reported.

`lbsync install` builds every file a role owns in memory (`Target`), then `apply` compares each
with the disk (bytes and mode) and writes only a difference, atomically. A second run with the
same input changes nothing, so provisioners restart a service only when one of its files changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InstallError, NoPermission
from .files import write_atomic


@dataclass(frozen=True)
class Target:
    """One file install owns: `content` None means it must not exist; `keep` means write once."""

    path: str
    content: bytes | None
    mode: int = 0o644
    keep: bool = False


def apply(targets: list[Target], root: Path, dry_run: bool = False) -> list[tuple[str, str]]:
    """Make the disk match `targets`; returns (action, path) for each file that differed."""
    changes = []
    for target in targets:
        path = root / target.path.lstrip("/")
        exists = os.path.lexists(path)
        if target.content is None:
            action = "removed" if exists else None
        elif not exists:
            action = "created"
        elif target.keep:
            action = None
        elif path.is_symlink() or path.read_bytes() != target.content:
            action = "updated"
        else:
            action = "updated" if (path.stat().st_mode & 0o7777) != target.mode else None
        if action is None:
            continue
        changes.append((action, target.path))
        if dry_run:
            continue
        try:
            if target.content is None:
                path.unlink()
            else:
                _write(path, target.content, target.mode)
        except PermissionError:
            raise NoPermission.on(path, "writing") from None
        except OSError as exc:
            raise InstallError(f"cannot write {path}: {exc.strerror or exc}") from None
    return changes


def _write(path: Path, content: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    write_atomic(path, content, mode=mode)
