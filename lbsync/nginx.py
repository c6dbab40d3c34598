"""nginx: validate a candidate, test the live config, reload. nginx's own words travel in the errors.

`check` tests a candidate inside a throwaway wrapper config, so a file nginx would refuse is
never written where nginx (or anyone reloading it) could pick it up.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from .errors import ConfigError, NginxError, ReloadError

TIMEOUT = 30.0

WRAPPER = """\
{modules}pid {tmp}/nginx.pid;
error_log stderr;
events {{ }}
http {{
    access_log off;
    include {candidate};
}}
"""


def check(candidate: str, nginx_bin: str, scratch: Path, modules: tuple[str, ...] = ()) -> None:
    """Raise NginxError unless nginx accepts `candidate` as an http-level include (with `modules`
    loaded, as the real config's main context loads them).

    `scratch` is emptied and reused (the caller holds the run lock), so a run killed mid-check
    leaves one directory behind, never a pile of them in /tmp.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700, parents=True)
    path = scratch / "candidate.conf"
    path.write_text(candidate)
    wrapper = scratch / "wrapper.conf"
    loads = "".join(f"load_module {module};\n" for module in modules)
    wrapper.write_text(WRAPPER.format(modules=loads, tmp=scratch, candidate=path))
    _run([nginx_bin, "-t", "-q", "-e", "stderr", "-p", str(scratch), "-c", str(wrapper)],
         NginxError, "nginx rejected the candidate config")


def test(nginx_bin: str, conf: str, prefix: str = "") -> None:
    """Raise NginxError unless nginx accepts its whole live configuration."""
    command = [nginx_bin, "-t", "-q", "-e", "stderr"]
    if prefix:
        command += ["-p", prefix]
    _run(command + ["-c", conf], NginxError, f"nginx rejected {conf}")


def reload(command: str) -> None:
    """Run the configured reload command (e.g. `systemctl reload nginx`) and check its status."""
    _run(shlex.split(command), ReloadError, f"reload command `{command}` failed")


def _run(command: list[str], error: type[NginxError], message: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    except (FileNotFoundError, PermissionError) as exc:  # not nginx's verdict: lbsync cannot run it
        raise ConfigError(f"cannot run {command[0]}: {exc.strerror} (check nginx_bin / reload_command)") from None
    except subprocess.TimeoutExpired:
        raise error(f"{message}: no answer within {TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise error(message, (done.stderr + done.stdout).strip())
