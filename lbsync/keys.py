"""The cluster's shared secrets: the Serf gossip key and the RPC token.

Made once, on the LB, in a directory every web host gets a copy of; a web host never makes its
own (it would silently form a second cluster). Files are created with O_EXCL, so two
provisioners racing on a shared folder agree.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError, InstallError, NoPermission
from .rules import gossip_key

SECRET_FILES = ("serf.key", "rpc.token")


PLACEHOLDERS = {"serf.key": "A" * 43 + "=", "rpc.token": "(made by the real install)"}


def secrets_for(directory: Path, create: bool, serf_bin: str = "serf", dry_run: bool = False) -> dict[str, str]:
    """The cluster's gossip key and RPC token, made once (on the LB) and then only read.

    Files are created with O_EXCL, so two provisioners racing on a shared folder agree. A dry run
    makes nothing: missing secrets it would make are placeholders in what it reports.
    """
    if dry_run and create and not all((directory / name).exists() for name in SECRET_FILES):
        return dict(PLACEHOLDERS)
    out = {}
    for name in SECRET_FILES:
        path = directory / name
        if create and not path.exists():
            _make(path, _keygen(serf_bin) if name == "serf.key" else _token())
        try:
            out[name] = path.read_text().strip()
        except OSError:
            raise ConfigError(f"{path} is missing: copy the secrets directory from the LB") from None
        if not out[name]:
            raise ConfigError(f"{path} is empty")
    try:
        gossip_key(out["serf.key"])
    except ValueError as exc:
        raise ConfigError(f"{directory}/serf.key {exc}") from None
    return out


def _make(path: Path, value: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
    except FileExistsError:
        pass  # another provisioner made it first: read theirs
    except PermissionError:
        raise NoPermission.on(path, "creating") from None


def _token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def _keygen(serf_bin: str) -> str:
    """`serf keygen`: the same base64 32-byte key Serf's docs tell operators to make."""
    import subprocess

    try:
        done = subprocess.run([serf_bin, "keygen"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"cannot run `{serf_bin} keygen`: {exc}") from None
    if done.returncode != 0:
        raise InstallError(f"`{serf_bin} keygen` failed: {done.stderr.strip()}")
    return done.stdout.strip()
