#!/usr/bin/env python3
"""The lab's figures, printed (never asserted): how fast the LB follows the lab's own scripts.

* boot: from starting `lab/boot_web.sh N` to the first request nginx answers from webN;
* graceful stop: from starting `lab/stop_web.sh N` under a steady request loop to the last
  request webN served (out of rotation), the script's own duration, and failed requests.

Runs a private lab (temporary LAB_DIR, its own loopback network; up.sh moves the LB off any port
already taken) and takes it down at the end. Usage: lab/measure.py [ROUNDS]   (LAB_MODE=run measures the daemon instead)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from labtool import get  # beside this script, so on sys.path when it runs

LAB = Path(__file__).resolve().parent
NET = "127.0.78"
PORTS = ("LB_SERF_PORT", "LB_RPC_PORT", "HTTP_PORT", "API_PORT", "TCP_PORT", "STATUS_PORT", "WEB_PORT",
         "CACHE_PORT", "WEB_SERF_PORT", "WEB_RPC_PORT")


def lab_env(lab_dir: str) -> dict:
    """The environment of the private lab: the LB's ports are up.sh's to choose (it skips taken
    ones and records them in lab.env); web nodes keep the default ports on their own addresses."""
    env = {key: value for key, value in os.environ.items() if key not in PORTS}
    return {**env, "LAB_DIR": lab_dir, "LAB_NET": NET, "LB_IP": "127.0.0.1",
            "PYTHON": os.environ.get("PYTHON", sys.executable)}


def lb_port(lab_dir: str) -> int:
    """The HTTP port up.sh settled on (lab.env)."""
    for line in (Path(lab_dir) / "lab.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "HTTP_PORT":
            return int(value)
    raise SystemExit("lab.env names no HTTP_PORT")


def script(env: dict, name: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(LAB / name), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"{proc.args[0]} failed: {err.strip()}")


def time_boot(env: dict, n: int, port: int, timeout: float = 30) -> float:
    """Seconds from starting boot_web.sh N to webN's first answer through the LB."""
    start = time.monotonic()
    proc = script(env, "boot_web.sh", str(n))
    name = f"serf-web{n}"
    while get("127.0.0.1", port)[1] != name:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{name} not served after {timeout} s")
        time.sleep(0.005)
    took = time.monotonic() - start
    finish(proc)
    return took


def time_stop(env: dict, n: int, port: int) -> tuple[float, float, int, int]:
    """(out of rotation s, stop_web.sh s, failed requests, requests) under a steady request loop."""
    results: list[tuple[float, int, str]] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            status, body, _ = get("127.0.0.1", port)
            results.append((time.monotonic(), status, body))
            done.wait(0.005)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.3)  # a steady loop before the stop (pacing, not correctness)
    start = time.monotonic()
    finish(script(env, "stop_web.sh", str(n)))
    took = time.monotonic() - start
    time.sleep(0.5)
    done.set()
    thread.join(10)
    name = f"serf-web{n}"
    last = max((t for t, status, body in results if body == name), default=start)
    failed = sum(1 for _, status, _ in results if status != 200)
    return last - start, took, failed, len(results)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="lbsync-lab-") as tmp:
        env = lab_env(str(Path(tmp) / "lab"))
        boots, stops = [], []
        try:
            finish(script(env, "up.sh"))
            port = lb_port(env["LAB_DIR"])
            for _ in range(rounds):
                boots += [time_boot(env, n, port) for n in (1, 2, 3)]
                stops.append(time_stop(env, 2, port))
                for proc in [script(env, "stop_web.sh", str(n)) for n in (1, 3)]:
                    finish(proc)
        finally:
            subprocess.run([str(LAB / "down.sh")], env=env, capture_output=True, timeout=120, check=False)
    mode = env.get("LAB_MODE", "hook")
    print(f"lab figures ({mode} mode, {rounds} rounds)")
    print(f"  boot_web.sh N -> first request served by webN: median {statistics.median(boots):.2f} s, "
          f"min {min(boots):.2f} s, max {max(boots):.2f} s (n={len(boots)})")
    outs, takes = [s[0] for s in stops], [s[1] for s in stops]
    print(f"  stop_web.sh N -> webN out of rotation: median {statistics.median(outs):.2f} s, "
          f"max {max(outs):.2f} s; script done after median {statistics.median(takes):.2f} s")
    print(f"  failed requests during graceful stops: {sum(s[2] for s in stops)} of {sum(s[3] for s in stops)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
