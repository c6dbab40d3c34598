"""nginx: validate a candidate, test the live config, reload. nginx's own words travel in the errors.

`check` tests a candidate inside a throwaway wrapper config, so a file nginx would refuse is
never written where nginx (or anyone reloading it) could pick it up.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from .errors import ConfigError, NginxError, ReloadError

TIMEOUT = 30.0

WRAPPER = """\
{modules}pid {tmp}/nginx.pid;
error_log stderr;
events {{ }}
{main}http {{
    access_log off;
    include {candidate};
}}
"""


def check(candidate: str, nginx_bin: str, scratch: Path, modules: tuple[str, ...] = (), main: str = "") -> None:
    """Raise NginxError unless nginx accepts `candidate` as an http-level include, and `main` (TCP
    pools' stream{} file) as a main-context one, with `modules` loaded as the real config's main
    context loads them.

    `scratch` is emptied and reused (the caller holds the run lock), so a run killed mid-check
    leaves one directory behind, never a pile of them in /tmp.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700, parents=True)
    path = scratch / "candidate.conf"
    path.write_text(candidate)
    included = ""
    if main:
        (scratch / "main.conf").write_text(main)
        included = f"include {scratch}/main.conf;\n"
    wrapper = scratch / "wrapper.conf"
    loads = "".join(f"load_module {module};\n" for module in modules)
    wrapper.write_text(WRAPPER.format(modules=loads, tmp=scratch, candidate=path, main=included))
    _run([nginx_bin, "-t", "-q", "-e", "stderr", "-p", str(scratch), "-c", str(wrapper)],
         NginxError, "nginx rejected the candidate config")


def test(nginx_bin: str, conf: str, prefix: str = "") -> None:
    """Raise NginxError unless nginx accepts its whole live configuration."""
    command = [nginx_bin, "-t", "-q", "-e", "stderr"]
    if prefix:
        command += ["-p", prefix]
    _run(command + ["-c", conf], NginxError, f"nginx rejected {conf}")


def reload(command: str, pid_file: str = "", wait: float = 2.0) -> bool:
    """Run the configured reload command (e.g. `systemctl reload nginx`) and check its status.

    A reload is asynchronous: the command returns while the old workers still accept requests
    for the old pool. With the master's `pid_file`, wait (at most `wait` s) until every old worker
    has stopped accepting; False when some still did at the deadline.
    """
    old = accepting_workers(pid_file)
    _run(shlex.split(command), ReloadError, f"reload command `{command}` failed")
    deadline = time.monotonic() + wait
    while old & accepting_workers(pid_file):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def accepting_workers(pid_file: str) -> set[int]:
    """PIDs of the nginx master's workers that still accept connections.

    A worker told to quit retitles itself "worker process is shutting down" as it closes its
    listening sockets, so its title tells an old generation that still accepts from one that
    only finishes its requests. Empty when the master is unknown (no pid file, no /proc).
    """
    try:
        master = int(Path(pid_file).read_text().split()[0])
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return set()
    accepting = set()
    for pid in children:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # it exited meanwhile
        if title.startswith(b"nginx: worker process") and b"shutting down" not in title:
            accepting.add(int(pid))
    return accepting


def _run(command: list[str], error: type[NginxError], message: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    except (FileNotFoundError, PermissionError) as exc:  # not nginx's verdict: lbsync cannot run it
        raise ConfigError(f"cannot run {command[0]}: {exc.strerror} (check nginx_bin / reload_command)") from None
    except subprocess.TimeoutExpired:
        raise error(f"{message}: no answer within {TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise error(message, (done.stderr + done.stdout).strip())
