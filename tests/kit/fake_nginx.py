"""The fake of nginx for unit tests: an executable that records its arguments and exits as told.

Why: the pipeline's promises (test the candidate, install, test the live config, reload, retry a
failed reload) are about which nginx commands run and what happens when one fails. A recording
stand-in shows that in milliseconds; integration tests run the real nginx.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lbsync.config import Settings


def fake_nginx(directory: Path, exit_code: int = 0) -> Path:
    """An executable that appends each invocation's arguments to `<directory>/nginx-calls` and
    exits with `exit_code` (saying "[emerg]" on stderr when that is not 0)."""
    script = directory / "fake-nginx"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{directory}/nginx-calls"\n'
                      f'[ {exit_code} -eq 0 ] || echo "nginx: [emerg] fake refusal" >&2\n'
                      f"exit {exit_code}\n")
    script.chmod(0o755)
    return script


def nginx_calls(directory: Path) -> list[str]:
    """The argument lines the fake nginx in `directory` was called with, oldest first."""
    path = directory / "nginx-calls"
    return path.read_text().splitlines() if path.exists() else []


def pipeline_settings(directory: Path, nginx: Path | None = None, **changes) -> Settings:
    """Settings whose every file (upstream, lock, state) is under `directory`, and whose nginx
    (tests and reloads) is `nginx`, by default a fake one made there."""
    nginx = nginx or fake_nginx(directory)
    return dataclasses.replace(Settings(), output=str(directory / "up.conf"), nginx_bin=str(nginx),
                               reload_command=f"{nginx} -s reload", lock_file=str(directory / "lock"),
                               state_dir=str(directory / "state"), data_plane="reload",
                               nginx_pid=str(directory / "nginx.pid"), **changes)
