"""Child processes that are always stopped, by PID, newest first, even when a test fails.

Why by PID: the machine is shared (a developer's lab, other test runs), so nothing here ever
stops a process by name. Every child gets its own session, so a Ctrl-C in the terminal reaches
pytest, which then runs the finaliser that stops them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def require(binary: str) -> str:
    """The path of `binary`; a missing one fails loudly (`make test` installs serf and nginx)."""
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        raise RuntimeError(f"{binary} is not installed: run `make test` (it installs serf and nginx)")
    return path


@dataclass
class Proc:
    """One child process, its log, and how to stop it by PID."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send `sig`, wait up to `timeout`, then SIGKILL. Returns the exit status."""
        if self.alive():
            os.kill(self.pid, sig)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return self.popen.wait(5)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def died(proc: Proc) -> bool:
    """False while `proc` runs; raises with its last output once it exited (ends a wait early)."""
    if not proc.alive():
        raise AssertionError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.output()[-2000:]}")
    return False


# run in the child's new session: that session's autogroup, then the process itself (and so
# every thread it starts); without autogroup scheduling the write fails quietly
NICE_SCRIPT = 'echo "$0" > /proc/self/autogroup 2>/dev/null; exec nice -n "$0" "$@"'


@dataclass
class Processes:
    """Starts processes (output to `<workdir>/<name>.log`) and stops every one of them."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict | None = None, nice: int = 0) -> Proc:
        """`argv` in its own session; `env` is added to this process's environment.

        `nice` (1-19) lowers the process's CPU priority, its session's autogroup's included: with
        the kernel's autogroup scheduling every session is one scheduling group, so without it a
        hundred benchmark agents (each standing for another host) get a hundred shares of this
        box's CPU against one for the LB under test."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if nice:
            argv = ["/bin/sh", "-c", NICE_SCRIPT, str(nice), *argv]
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as handle:
            popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            try:
                proc.stop(timeout=5)
            except Exception:  # keep stopping the others
                pass
