"""Operator commands for the autoscaler: split like a shell (no shell runs), filled in, bounded.

Commands run in their own session with a timeout after which the whole process group is killed;
output goes to a temp file, not a pipe, so a command that leaves a daemon behind (a lab boot
script) does not keep the autoscaler waiting.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Mapping

from .autoscale import Node


def expand(template: str, node: Node) -> list[str]:
    """Split like a shell (no shell runs), then fill {index} and {name} (validated names only)."""
    index = "" if node.index is None else str(node.index)
    return [word.replace("{index}", index).replace("{name}", node.name) for word in shlex.split(template)]


def command_env(environ: Mapping[str, str], node: Node) -> dict[str, str]:
    """The autoscaler's environment minus its own LBSYNC_* settings (a command that starts
    `lbsync agent` must not inherit the LB's), plus AUTOSCALE_NAME and AUTOSCALE_INDEX."""
    env = {key: value for key, value in environ.items() if not key.startswith("LBSYNC_")}
    index = "" if node.index is None else str(node.index)
    return {**env, "AUTOSCALE_NAME": node.name, "AUTOSCALE_INDEX": index}


def run_command(argv: list[str], env: dict, timeout: float) -> tuple[int | None, str]:
    """(exit status or None on timeout, output). The whole process group dies at the timeout."""
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        except OSError as exc:
            return 127, f"cannot run {argv[0]}: {exc.strerror or exc}"
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        out.seek(0)
        return code, out.read(65536).decode(errors="replace")


def one_line(output: str, limit: int = 600) -> str:
    text = " | ".join(line.strip() for line in output.strip().splitlines() if line.strip())
    return text if len(text) <= limit else "..." + text[-limit:]
