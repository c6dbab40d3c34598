"""`lbsync autoscale`: the loop around `autoscale.decide` and all of its I/O.

Every `interval`: one Serf RPC connection lists the alive web nodes and asks them all the `load`
query at once (nodes that do not answer are logged and simply carry no load); the sample joins a
short history; then, under an flock in state_dir, the state is re-read from
state_dir/autoscale.json, `decide` runs, and its action runs. The state is written atomically
before a command starts (cooldown and the launched node recorded) and again after it ends, so
neither a restart nor a second autoscaler on the same state_dir can double-fire. The commands
themselves run through `lbsync.commands`.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
import time
from collections import deque
from pathlib import Path

from . import autoscale
from . import state as state_files
from .autoscale import IN, OUT, Decision, Node, Sample, ScaleState
from .commands import command_env, expand, one_line, run_command
from .config import AutoscaleSettings, Settings
from .errors import ConfigError, LockError, SourceError
from .files import locked
from .members import select
from .rules import DECIMAL_RE, printable
from .serf import connect

log = logging.getLogger("lbsync")

MAX_LOAD = 64.0  # load per CPU: above this an answer is broken or hostile, not a busy node
GONE_POLL = 0.5  # how often to look whether a drained node has left


def run_autoscaler(settings: Settings, args: object) -> int:
    conf = settings.autoscale
    if not conf.dry_run and not (shlex.split(conf.scale_out_command) and shlex.split(conf.scale_in_command)):
        raise ConfigError("autoscale needs autoscale.scale_out_command and autoscale.scale_in_command "
                          "(or --dry-run)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Scaler(settings).run(stop)
    return 0


class Scaler:
    """One autoscaler: its sample history and (in dry-run) its in-memory state."""

    def __init__(self, settings: Settings):
        self.settings, self.conf = settings, settings.autoscale
        self.history: deque[Sample] = deque(maxlen=self.conf.sustain)
        self.state_path = state_files.path(settings.state_dir, state_files.AUTOSCALE)
        self.dry_state = ScaleState()

    def run(self, stop: threading.Event) -> None:
        """Tick every `interval` (start to start) until `stop` is set; an action always finishes."""
        try:
            Path(self.settings.state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"state_dir {self.settings.state_dir}: {exc.strerror or exc}") from None
        mode = "dry run, no command will run" if self.conf.dry_run else "acting"
        log.info("autoscale: %s; sizes %d..%d, out > %.2f, in < %.2f, sustain %d x %g s",
                 mode, self.conf.min_size, self.conf.max_size, self.conf.scale_out_threshold,
                 self.conf.scale_in_threshold, self.conf.sustain, self.conf.interval)
        while not stop.is_set():
            started = time.monotonic()
            self.tick()
            stop.wait(max(0.0, self.conf.interval - (time.monotonic() - started)))
        log.info("autoscale: stopped")

    def tick(self) -> None:
        try:
            sample = self.sample()
        except SourceError as exc:
            log.warning("autoscale: no sample this time: %s", exc)
            return
        self.history.append(sample)
        try:
            with locked(str(self.state_path.with_suffix(".lock")), timeout=1.0):
                self.decide_and_act(sample)
        except LockError as exc:  # another autoscaler is acting; its state is re-read next time
            log.info("autoscale: %s; deciding next time", exc)

    def decide_and_act(self, sample: Sample) -> None:
        state = self.dry_state if self.conf.dry_run else self.load_state()
        decision = autoscale.decide(state, list(self.history), self.conf)
        log.info("sample: %s", describe_sample(sample, decision.state))
        log.info("decision: %s", describe_decision(decision, self.conf))
        state = decision.state
        if decision.action in (OUT, IN):
            state = self.act(decision, state)
            self.history.clear()  # the next decision must be sustained by what the fleet is now
        if self.conf.dry_run:
            self.dry_state = state
        else:
            self.save(state, decision, sample)

    def act(self, decision: Decision, state: ScaleState) -> ScaleState:
        state = autoscale.begin(state, decision, time.time())
        if self.conf.dry_run:
            names = ", ".join(node.name for node in decision.nodes)
            log.info("dry run: would %s %s; nothing run", decision.action, names)
            return state
        self.save(state, decision, None)
        step = self.boot if decision.action == OUT else self.remove
        done = []
        for node in decision.nodes:
            if not step(node):
                break
            done.append(node.name)
        return autoscale.finish(state, decision, done, time.time())

    # -- sampling -----------------------------------------------------------------------------

    def sample(self) -> Sample:
        """Alive web nodes (validated like the LB does) and their answers to one load query."""
        s = self.settings
        with connect(s) as client:
            records = client.members_filtered(tags={"role": s.role}, status="alive")
            answers = client.query(s.agent.load_query, timeout=self.conf.query_timeout,
                                   filter_tags={"role": s.role})
        selection = select(records, s)
        for skip in selection.skipped:
            log.warning("autoscale: not counting member %s: %s", skip.name, skip.reason)
        return Sample(time.time(), {m.name: self.load_of(m.name, answers.get(m.name))
                                    for m in selection.backends if not m.draining})

    @staticmethod
    def load_of(name: str, raw: bytes | None) -> float | None:
        """One node's answer, or None with a warning naming the node when it is not a load."""
        try:
            return parse_load(raw)
        except ValueError as exc:
            log.warning("autoscale: ignoring the load answer of %s: %s", name, exc)
            return None

    # -- actions ------------------------------------------------------------------------------

    def boot(self, node: Node) -> bool:
        return self.command("scale-out", self.conf.scale_out_command, node)

    def remove(self, node: Node) -> bool:
        """drain (-> leave) -> wait until not alive -> destroy -> force-leave -prune."""
        if self.conf.drain_command:
            if not self.command("drain", self.conf.drain_command, node):
                return False
            if not self.wait_gone(node.name):
                log.error("autoscale: %s is still alive %g s after its drain; not destroying it",
                          node.name, self.conf.command_timeout)
                return False
        if not self.command("scale-in", self.conf.scale_in_command, node):
            return False
        self.forget(node.name)
        return True

    def command(self, what: str, template: str, node: Node) -> bool:
        """Run one operator command; log its outcome (with its output when it fails)."""
        argv = expand(template, node)
        env = command_env(os.environ, node)
        started = time.monotonic()
        code, output = run_command(argv, env, self.conf.command_timeout)
        took = time.monotonic() - started
        if code == 0:
            log.info("autoscale: %s %s: ok in %.1f s (%s)", what, node.name, took, shlex.join(argv))
            return True
        why = "timed out" if code is None else f"exited {code}"
        log.error("autoscale: %s %s failed: %s %s after %.1f s; output: %s; next try after the cooldown",
                  what, node.name, shlex.join(argv), why, took, one_line(output) or "(none)")
        return False

    def wait_gone(self, name: str) -> bool:
        """Poll (bounded by command_timeout) until Serf no longer reports `name` alive."""
        deadline = time.monotonic() + self.conf.command_timeout
        while time.monotonic() < deadline:
            try:
                with connect(self.settings) as client:
                    if not client.members_filtered(name=_anchored(name), status="alive"):
                        return True
            except SourceError as exc:
                log.warning("autoscale: waiting for %s to leave: %s", name, exc)
            time.sleep(GONE_POLL)
        return False

    def forget(self, name: str) -> None:
        """Remove a destroyed node from Serf's member list so its name can be reused at once."""
        try:
            with connect(self.settings) as client:
                client.force_leave(name, prune=True)
        except SourceError as exc:
            log.warning("autoscale: force-leave %s: %s (Serf reaps it later)", name, exc)

    # -- state --------------------------------------------------------------------------------

    def load_state(self) -> ScaleState:
        if not self.state_path.exists():
            return ScaleState()
        data = state_files.read(self.settings.state_dir, state_files.AUTOSCALE) or {}
        try:
            return ScaleState.from_json(data["state"])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("autoscale: ignoring unreadable %s (%s); starting afresh", self.state_path, exc)
            return ScaleState()

    def save(self, state: ScaleState, decision: Decision, sample: Sample | None) -> None:
        """Atomically; `lbsync status` prints this file."""
        data = {"state": state.to_json(), "updated": time.time(),
                "decision": {"action": decision.action, "reason": decision.reason,
                             "size": decision.size, "fleet_load": decision.fleet_load}}
        if sample is not None:
            data["loads"] = dict(sample.loads)
        try:
            state_files.write(self.settings.state_dir, state_files.AUTOSCALE, data, durable=True)
        except OSError as exc:
            log.error("autoscale: cannot save %s: %s", self.state_path, exc.strerror or exc)


def parse_load(raw: bytes | None) -> float | None:
    """A node's answer, b"0.42", as a float; None when it did not answer.

    Anything but a plain decimal in 0..MAX_LOAD raises ValueError with the reason: Python's
    float() would take "1_000", "1e3", "inf" and "nan", and one node must not steer the fleet.
    """
    if raw is None:
        return None
    text = raw.decode("ascii", errors="replace").strip()
    if not DECIMAL_RE.fullmatch(text):
        raise ValueError(f"{printable(text, 40)!r} is not a plain decimal")
    load = float(text)
    if load > MAX_LOAD:
        raise ValueError(f"{text} is above {MAX_LOAD:g} per CPU")
    return load


def describe_sample(sample: Sample, state: ScaleState) -> str:
    fleet = autoscale.fleet_load(sample, state)
    marks = {node.name: "warming" for node in state.warming} | {n.name: "removing" for n in state.removing}
    parts = [f"{name}={marks.get(name) or ('no answer' if load is None else f'{load:.2f}')}"
             for name, load in sorted(sample.loads.items())]
    parts += [f"{name}=booting" for name in sorted(marks) if name not in sample.loads and marks[name] == "warming"]
    shown = "none" if fleet is None else f"{fleet:.2f}"
    return f"fleet load {shown}; nodes {len(sample.loads)}: {' '.join(parts) or '-'}"


def describe_decision(decision: Decision, policy: AutoscaleSettings) -> str:
    what = decision.action
    if decision.nodes:
        what += " " + ",".join(node.name for node in decision.nodes)
    load = "none" if decision.fleet_load is None else f"{decision.fleet_load:.2f}"
    return (f"{what} | fleet load {load}, size {decision.size} ({policy.min_size}..{policy.max_size}), "
            f"out > {policy.scale_out_threshold:.2f}, in < {policy.scale_in_threshold:.2f} | "
            f"{decision.reason}")


def _anchored(name: str) -> str:
    """Serf filters are anchored Go regexps: escape the dots of a node name."""
    return name.replace(".", r"\.")
