"""`lbsync autoscale`: the loop around `autoscale.decide` and all of its I/O.

Every `interval`: one Serf RPC connection lists the alive web nodes and asks them all the `load`
query at once; the provider lists our instances (when it can), so instances that have not joined
yet count; then, under an flock in state_dir, the state is re-read from state_dir/autoscale.json,
a removal a crashed autoscaler left half done is finished, `decide` runs, and its action runs
through the provider (`lbsync.providers`). The state is written atomically before each step of
an action (cooldown, the launched node, the step a removal reached) and after it, so neither a
restart nor a second autoscaler on the same state_dir double-fires or forgets a step.

A dry run reads the same state file (never writes it), lists but never launches or destroys,
and layers its own simulated actions on top, so it says what the live autoscaler would do.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import autoscale
from . import state as state_files
from .autoscale import IN, OUT, Decision, Node, Sample, ScaleState
from .config import AutoscaleSettings, Settings
from .errors import ConfigError, LockError, SourceError
from .files import locked
from .members import select
from .providers import Instance, Provider, ProviderError, open_provider
from .providers.base import with_retries
from .rules import DECIMAL_RE, printable
from .sdnotify import notify, stderr_is_journal
from .serf import connect

log = logging.getLogger("lbsync")

MAX_LOAD = 64.0  # load per CPU: above this an answer is broken or hostile, not a busy node
GONE_POLL = 0.5  # how often to look whether a drained node has left
LOG_FORMAT = "%(asctime)s.%(msecs)03d lbsync: %(levelname)s: %(message)s"


def run_autoscaler(settings: Settings, args: object) -> int:
    conf = settings.autoscale
    if conf.provider == "command" and not conf.dry_run and \
            not (shlex.split(conf.scale_out_command) and shlex.split(conf.scale_in_command)):
        raise ConfigError("autoscale needs autoscale.scale_out_command and autoscale.scale_in_command "
                          "(or another autoscale.provider, or --dry-run)")
    timestamped_logs()
    provider = open_provider(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Scaler(settings, provider).run(stop)
    return 0


def timestamped_logs(environ: dict | os._Environ = os.environ) -> None:
    """A long-running autoscaler's log is read later (a file under the lab, cron's mail): every
    line carries its time. Under systemd the journal stamps lines itself; syslog does too."""
    if stderr_is_journal(environ):
        return
    from logging.handlers import SysLogHandler

    for handler in logging.getLogger("lbsync").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, SysLogHandler):
            handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))


class Scaler:
    """One autoscaler: its sample history, its provider and (in dry-run) its simulated actions."""

    def __init__(self, settings: Settings, provider: Provider, sleep: Callable[[float], None] = time.sleep):
        self.settings, self.conf, self.provider, self.sleep = settings, settings.autoscale, provider, sleep
        self.history: deque[Sample] = deque(maxlen=self.conf.sustain)
        self.state_path = state_files.path(settings.state_dir, state_files.AUTOSCALE)
        self.dry_state = ScaleState()  # a dry run's own simulated actions, never written
        self.inventory: list[Instance] | None = None
        self.first_seen: dict[str, float] = {}
        self.error = ""  # the last failure of this tick, for the state file
        self.started = _process_start()

    def run(self, stop: threading.Event) -> None:
        """Tick every `interval` (start to start) until `stop` is set; an action always finishes."""
        try:
            Path(self.settings.state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"state_dir {self.settings.state_dir}: {exc.strerror or exc}") from None
        mode = "dry run, nothing will be launched or destroyed" if self.conf.dry_run else "acting"
        log.info("autoscale: %s through provider %s; sizes %d..%d, out > %.2f, in < %.2f, sustain %d x %g s",
                 mode, self.provider.kind, self.conf.min_size, self.conf.max_size, self.conf.scale_out_threshold,
                 self.conf.scale_in_threshold, self.conf.sustain, self.conf.interval)
        ready = False
        while not stop.is_set():
            started = time.monotonic()
            self.tick()
            if not ready:
                notify("READY=1")
                ready = True
            stop.wait(max(0.0, self.conf.interval - (time.monotonic() - started)))
        notify("STOPPING=1")
        self.beat(stopped=True)
        log.info("autoscale: stopped")

    def tick(self) -> None:
        self.error = ""
        try:
            sample = self.sample()
            self.inventory = self.list_instances()
        except (SourceError, ProviderError) as exc:
            self.error = str(exc)
            log.warning("autoscale: no decision this time: %s", exc)
            self.beat()
            return
        sample = self.with_inventory(sample)
        self.history.append(sample)
        if self.conf.dry_run:  # reads the state file without the lock: it is replaced atomically
            self.decide_and_act(sample)
            return
        try:
            with locked(str(self.state_path.with_suffix(".lock")), timeout=1.0):
                self.decide_and_act(sample)
        except LockError as exc:  # another autoscaler is acting; its state is re-read next time
            log.info("autoscale: %s; deciding next time", exc)

    def decide_and_act(self, sample: Sample) -> None:
        if self.conf.dry_run:
            state = self.load_state().overlay(self.dry_state)
        else:
            state = self.resume(self.load_state(), sample)
            self.reap_unjoined(sample, state)
        decision = autoscale.decide(state, list(self.history), self.conf)
        log.info("sample: %s", describe_sample(sample, decision.state))
        log.info("decision: %s", describe_decision(decision, self.conf))
        notify(f"STATUS={decision.action}: {decision.reason}"[:200])
        state = decision.state
        if decision.action in (OUT, IN):
            state = self.act(decision, state)
            self.history.clear()  # the next decision must be sustained by what the fleet is now
        if self.conf.dry_run:
            self.dry_state = replace(state, removing=())
        else:
            self.save(state, decision, sample)

    def act(self, decision: Decision, state: ScaleState) -> ScaleState:
        now = time.time()
        state = autoscale.begin(state, decision, now)
        if self.conf.dry_run:
            names = ", ".join(node.name for node in decision.nodes)
            log.info("dry run: would %s %s; nothing launched or destroyed", decision.action, names)
            done = [node.name for node in decision.nodes]
            return autoscale.finish(state, decision, done, now)
        self.save(state, decision, None)
        if decision.action == OUT:
            done = []
            for node in decision.nodes:
                if not self.launch(node):
                    break
                done.append(node.name)
            return autoscale.finish(state, decision, done, time.time())
        for node in decision.nodes:
            state, ok = self.remove(node, state, decision)
            if not ok:
                break
        return state

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

    def list_instances(self) -> list[Instance] | None:
        """Our instances as the provider reports them (None: it cannot list), with retries."""
        return with_retries("listing instances", self.provider.instances, self.conf.api_retries, self.sleep)

    def with_inventory(self, sample: Sample) -> Sample:
        """The sample with the provider's view: instances not alive in Serf count (pending);
        only instances of ours may be scaled in (owned)."""
        if self.inventory is None:
            return sample
        names = {inst.name for inst in self.inventory}
        for name in names:
            self.first_seen.setdefault(name, sample.time)
        return replace(sample, pending=frozenset(names - set(sample.loads)), owned=frozenset(names))

    @staticmethod
    def load_of(name: str, raw: bytes | None) -> float | None:
        """One node's answer, or None with a warning naming the node when it is not a load."""
        try:
            return parse_load(raw)
        except ValueError as exc:
            log.warning("autoscale: ignoring the load answer of %s: %s", name, exc)
            return None

    # -- scale-out ----------------------------------------------------------------------------

    def launch(self, node: Node) -> bool:
        started = time.monotonic()
        try:
            instance = with_retries(f"launching {node.name}", lambda: self.provider.launch(node),
                                    self.conf.api_retries, self.sleep)
        except ProviderError as exc:
            self.error = f"scale-out {node.name}: {exc}"
            log.error("autoscale: scale-out %s failed: %s; next try after the cooldown", node.name, exc)
            return False
        log.info("autoscale: scale-out %s: ok in %.1f s (%s%s)", node.name, time.monotonic() - started,
                 self.provider.kind, f" instance {instance.id}" if instance.id else "")
        return True

    # -- scale-in -----------------------------------------------------------------------------

    def remove(self, node: Node, state: ScaleState, decision: Decision | None = None) -> tuple[ScaleState, bool]:
        """drain -> wait until not alive -> destroy -> force-leave -prune, each step recorded in
        the state file before it is taken. Returns the state and whether the node is gone.
        A node still alive after its drain is not destroyed: its removal is given up (it counts
        again). A failed destroy stays recorded and is retried next time (`resume`)."""
        state = self.step(state, node, "drain", decision)
        with DrainSync(self.settings, node.name):  # the LB must see drain=1 within about a second
            if not self.drain(node):
                return self.give_up(state, node, decision), False
            return self.destroy_and_forget(state, node, decision)

    def destroy_and_forget(self, state: ScaleState, node: Node,
                           decision: Decision | None) -> tuple[ScaleState, bool]:
        state = self.step(state, node, "destroy", decision)
        instance = self.instance_named(node.name)
        try:
            started = time.monotonic()
            with_retries(f"destroying {node.name}", lambda: self.provider.destroy(instance),
                         self.conf.api_retries, self.sleep)
            log.info("autoscale: scale-in %s: destroyed in %.1f s (%s%s)", node.name, time.monotonic() - started,
                     self.provider.kind, f" instance {instance.id}" if instance.id else "")
        except ProviderError as exc:
            self.error = f"scale-in {node.name}: {exc}"
            log.error("autoscale: scale-in %s failed: %s; the destroy is tried again next time", node.name, exc)
            return state, False
        state = self.step(state, node, "forget", decision)
        self.forget(node.name)
        state = autoscale.done_removing(state, node.name, time.time())
        self.save(state, decision, None)
        return state, True

    def give_up(self, state: ScaleState, node: Node, decision: Decision | None) -> ScaleState:
        state = autoscale.done_removing(state, node.name, time.time())
        self.save(state, decision, None)
        return state

    def step(self, state: ScaleState, node: Node, step: str, decision: Decision | None) -> ScaleState:
        state = autoscale.at_step(state, node.name, step)
        self.save(state, decision, None)
        return state

    def drain(self, node: Node) -> bool:
        """Ask the node to drain and leave, then wait until Serf no longer reports it alive.
        Without a drain_command or a provider that drains by query, the destroy drains (the
        command provider's scale_in_command, e.g. lab/stop_web.sh, drains and leaves itself)."""
        if self.conf.drain_command:
            from .providers.command import CommandProvider

            try:
                CommandProvider(self.conf).run_for(self.conf.drain_command, node)
            except ProviderError as exc:
                self.error = f"drain {node.name}: {exc}"
                log.error("autoscale: drain %s failed: %s; next try after the cooldown", node.name, exc)
                return False
        elif self.provider.drains_by_query:
            self.ask_to_drain(node.name)
        else:
            return True
        if not self.wait_gone(node.name):
            self.error = f"{node.name} still alive after its drain"
            log.error("autoscale: %s is still alive %g s after its drain; not destroying it",
                      node.name, self.conf.command_timeout)
            return False
        return True

    def ask_to_drain(self, name: str) -> None:
        try:
            with connect(self.settings) as client:
                answers = client.query(self.conf.drain_query, timeout=self.conf.query_timeout, filter_nodes=[name])
        except SourceError as exc:
            log.warning("autoscale: drain query to %s: %s", name, exc)
            return
        if name in answers:
            log.info("autoscale: %s drains: %s", name, printable(answers[name].decode(errors="replace").strip(), 80))
        else:
            log.warning("autoscale: %s did not answer the drain query %r; waiting for it to leave anyway",
                        name, self.conf.drain_query)

    def wait_gone(self, name: str) -> bool:
        """Poll one connection (bounded by command_timeout) until Serf no longer reports `name` alive."""
        deadline = time.monotonic() + self.conf.command_timeout
        while time.monotonic() < deadline:
            try:
                with connect(self.settings) as client:
                    while time.monotonic() < deadline:
                        if not client.members_filtered(name=_anchored(name), status="alive"):
                            return True
                        time.sleep(GONE_POLL)
            except SourceError as exc:
                log.warning("autoscale: waiting for %s to leave: %s", name, exc)
                time.sleep(GONE_POLL)
        return False

    def forget(self, name: str) -> None:
        """Remove a destroyed node from Serf's member list so its name can be reused at once."""
        try:
            with connect(self.settings) as client:
                client.force_leave(name, prune=True)
            log.info("autoscale: %s forgotten (force-leave -prune)", name)
        except SourceError as exc:
            log.warning("autoscale: force-leave %s: %s (Serf reaps it later)", name, exc)

    def instance_named(self, name: str) -> Instance:
        for instance in self.inventory or ():
            if instance.name == name:
                return instance
        return Instance(name)

    # -- what a crash left behind, instances that never joined --------------------------------

    def resume(self, state: ScaleState, sample: Sample) -> ScaleState:
        """Finish the removals a previous autoscaler began and did not end (it died, or its
        destroy failed): we hold the lock, so nobody else is working on them. A node still alive
        gets the bounded wait for its drain; if it stays, its removal is given up."""
        for node in state.removing:
            log.warning("autoscale: finishing the removal of %s, interrupted at step %s",
                        node.name, node.step or "drain")
            gone = self.wait_gone(node.name)  # a drain (or a destroy that drains) may still be under way
            if node.step in ("", "drain") and not gone:
                log.error("autoscale: %s is still alive; giving its removal up (it counts again)", node.name)
                state = self.give_up(state, node, None)
                continue
            if node.step == "forget":
                self.forget(node.name)
                state = autoscale.done_removing(state, node.name, time.time())
                self.save(state, None, None)
                continue
            state, _ = self.destroy_and_forget(state, node, None)
        return state

    def reap_unjoined(self, sample: Sample, state: ScaleState) -> None:
        """Report (and with destroy_unjoined destroy) instances of ours not in the cluster
        `boot_timeout` after they were made: a broken image or user data must not cost forever.
        They still count in size meanwhile, so the autoscaler never launches around them."""
        removing = {node.name for node in state.removing}
        for instance in self.inventory or ():
            if instance.name in sample.loads or instance.name in removing:
                continue
            age = sample.time - (instance.created or self.first_seen.get(instance.name, sample.time))
            if age < self.conf.boot_timeout:
                continue
            what = f"instance {instance.id or '?'} ({instance.name}, {instance.state or 'state unknown'})"
            if not self.conf.destroy_unjoined:
                log.warning("autoscale: %s is not in the cluster %.0f s after launch (boot_timeout %g s); "
                            "it still counts; destroy it, or set autoscale.destroy_unjoined", what, age,
                            self.conf.boot_timeout)
                continue
            log.warning("autoscale: %s is not in the cluster %.0f s after launch: destroying it", what, age)
            try:
                with_retries(f"destroying {instance.name}", lambda: self.provider.destroy(instance),
                             self.conf.api_retries, self.sleep)
            except ProviderError as exc:
                self.error = f"destroy unjoined {instance.name}: {exc}"
                log.error("autoscale: destroying %s failed: %s", what, exc)
                continue
            self.forget(instance.name)

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

    def save(self, state: ScaleState, decision: Decision | None, sample: Sample | None) -> None:
        """Atomically, under the lock; never in a dry run. `lbsync status` reads this file."""
        if self.conf.dry_run:
            return
        old = state_files.read(self.settings.state_dir, state_files.AUTOSCALE) or {}
        data = {**old, **self.liveness(), "state": state.to_json()}
        if decision is not None:
            load = decision.fleet_load
            data["decision"] = {"action": decision.action, "reason": decision.reason, "size": decision.size,
                                "fleet_load": None if load is None else round(load, 3), "time": _t(time.time())}
        if sample is not None:
            data["loads"] = {name: None if load is None else round(load, 3) for name, load in sample.loads.items()}
            data["instances"] = None if self.inventory is None else [
                {"name": i.name, "id": i.id, "state": i.state, "joined": i.name in sample.loads}
                for i in self.inventory]
        self.write(data)

    def beat(self, stopped: bool = False) -> None:
        """A tick without a decision still says this autoscaler is alive, and why it did not
        decide; a clean stop says so (`stopped`), so status tells it from a crash."""
        if self.conf.dry_run:
            return
        try:
            with locked(str(self.state_path.with_suffix(".lock")), timeout=1.0):
                old = state_files.read(self.settings.state_dir, state_files.AUTOSCALE) or {}
                self.write({**old, **self.liveness(), **({"stopped": _t(time.time())} if stopped else {})})
        except LockError:
            pass

    def liveness(self) -> dict:
        now = time.time()
        return {"pid": os.getpid(), "started": _t(self.started), "heartbeat": _t(now), "updated": _t(now),
                "stopped": None, "interval": self.conf.interval, "provider": self.provider.kind,
                "error": printable(self.error, 300) if self.error else None}

    def write(self, data: dict) -> None:
        try:
            state_files.write(self.settings.state_dir, state_files.AUTOSCALE, data, durable=True)
        except OSError as exc:
            log.error("autoscale: cannot save %s: %s", self.state_path, exc.strerror or exc)


class DrainSync:
    """While a node is being removed, make the LB's agent see its drain=1 within about `every` s.

    Measured in the lab (hook mode, no autoscaler running): the other web nodes had a node's
    drain=1 within the second, but the LB's agent only 10.7 s and 16.8 s later in 2 of 7
    scale-ins (0.35-0.6 s in the others): gossip that missed the LB, repaired only by Serf's
    periodic push-pull (every ~15 s with the local profile). The hook ran ~1.1 s after the LB's
    agent had the tag every time, so neither coalescing nor a queue of handlers was the cause.
    A Serf join to a member forces that push-pull at once: every `every` s, while the node is
    alive in the LB's view without drain=1, join it. With it: 6 of 6 under 0.6 s.
    """

    def __init__(self, settings: Settings, name: str, every: float = 1.0):
        self.settings, self.name, self.every = settings, name, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True, name=f"drain-sync-{name}")

    def __enter__(self) -> DrainSync:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)

    def run(self) -> None:
        try:
            with connect(self.settings) as client:
                while not self.done.wait(self.every):
                    found = client.members_filtered(name=_anchored(self.name), status="alive")
                    if found and found[0].get("Tags", {}).get("drain") != "1":
                        addr, port = found[0]["Addr"], found[0]["Port"]
                        host = f"[{addr}]" if getattr(addr, "version", 4) == 6 else str(addr)
                        client.join([f"{host}:{port}"])
        except (SourceError, OSError, KeyError, IndexError) as exc:
            log.debug("autoscale: drain sync for %s stopped: %s", self.name, exc)


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
    booting = {name for name in marks if marks[name] == "warming"} | set(sample.pending)
    parts += [f"{name}=booting" for name in sorted(booting) if name not in sample.loads]
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


def _t(value: float) -> float:
    return round(value, 3)


def _process_start() -> float:
    """This process's start time (epoch), so `status` can tell our PID from a reused one."""
    import psutil

    try:
        return psutil.Process().create_time()
    except psutil.Error:
        return time.time()
