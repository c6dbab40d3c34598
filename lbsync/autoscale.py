"""Autoscaling policy: a pure `decide(state, samples, policy) -> Decision`, no I/O.

Kept pure so every rule (thresholds, hysteresis, sustain, cooldowns, warm-up, min/max) is a table
test with plain data; `lbsync.scaler` gathers the samples, holds the lock, runs the operator's
commands and persists the `ScaleState` this module returns. Times are wall-clock seconds (time.time())
because the state outlives a restart of the autoscaler.

Rules, in order: stay within min_size..max_size (also at start: below min -> scale out); scale out
when the fleet load stayed above `scale_out_threshold` for `sustain` consecutive samples; scale in
when it stayed below `scale_in_threshold` as long. Each direction waits its cooldown after an
attempt, failed or not, counted from the attempt's end, so a failing command is never retried in
a tight loop; scale-in also waits `cooldown_in` after a scale-out, so the fleet does not flap.
The knobs are `AutoscaleSettings` itself: decide() reads them, nothing re-declares them.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .config import AutoscaleSettings

OUT, IN, HOLD = "scale-out", "scale-in", "hold"


def index_of(policy: AutoscaleSettings, name: str) -> int | None:
    """The index in a node name built from `name_template`, or None: not ours to remove."""
    before, _, after = policy.name_template.partition("{index}")
    found = re.fullmatch(re.escape(before) + r"([1-9][0-9]{0,5})" + re.escape(after), name)
    return int(found.group(1)) if found else None


def name_of(policy: AutoscaleSettings, index: int) -> str:
    return policy.name_template.replace("{index}", str(index))


@dataclass(frozen=True)
class Node:
    """A node the autoscaler is launching (warming) or removing, and since when.

    A removal records the `step` it has reached (drain, destroy, forget) before taking it, so an
    autoscaler that restarts after a crash finishes what it began (see `scaler.Scaler.resume`).
    """

    name: str
    index: int | None
    since: float
    step: str = ""

    def to_json(self) -> dict:
        data: dict = {"name": self.name, "index": self.index, "since": round(self.since, 3)}
        return data | ({"step": self.step} if self.step else {})

    @classmethod
    def from_json(cls, data: Mapping) -> Node:
        index = data.get("index")
        return cls(str(data["name"]), None if index is None else int(index), float(data["since"]),
                   str(data.get("step", "")))


@dataclass(frozen=True)
class ScaleState:
    """What must survive a restart so the autoscaler does not double-fire."""

    last_out: float | None = None  # end of the last scale-out attempt, failed or not
    last_in: float | None = None
    warming: tuple[Node, ...] = ()  # launched; counted in size, load ignored until warm
    removing: tuple[Node, ...] = ()  # being drained/destroyed; neither size nor load; until finished

    def to_json(self) -> dict:
        nodes = lambda group: [node.to_json() for node in group]
        opt = lambda t: None if t is None else round(t, 3)
        return {"last_out": opt(self.last_out), "last_in": opt(self.last_in),
                "warming": nodes(self.warming), "removing": nodes(self.removing)}

    @classmethod
    def from_json(cls, data: Mapping) -> ScaleState:
        """Raises ValueError (or TypeError/KeyError) on a state file that is not ours."""
        nodes = lambda key: tuple(Node.from_json(n) for n in data.get(key, ()))
        opt = lambda key: None if data.get(key) is None else float(data[key])
        return cls(opt("last_out"), opt("last_in"), nodes("warming"), nodes("removing"))

    def overlay(self, other: ScaleState) -> ScaleState:
        """This state with `other`'s later attempts and extra warming nodes on top: a dry run's
        own simulated actions over the live autoscaler's persisted state, which it never writes."""
        later = lambda a, b: b if a is None else a if b is None else max(a, b)
        known = {node.name for node in self.warming + self.removing}
        return replace(self, last_out=later(self.last_out, other.last_out),
                       last_in=later(self.last_in, other.last_in),
                       warming=self.warming + tuple(n for n in other.warming if n.name not in known))


@dataclass(frozen=True)
class Sample:
    """One gathering: every alive web node -> its normalised load, None if it did not answer.

    With a provider that lists its instances: `pending` names our instances that are not alive in
    Serf (booting, or never joined): they count in size, so a crash between launch and join never
    launches twice; `owned` names every instance of ours: only those may be scaled in (a Serf
    member with no instance is never destroyed by us). None: the provider cannot tell (commands
    without list_command), and `name_template` alone decides.
    """

    time: float
    loads: Mapping[str, float | None] = field(default_factory=dict)
    pending: frozenset[str] = frozenset()
    owned: frozenset[str] | None = None


@dataclass(frozen=True)
class Decision:
    """What to do now and why; `state` is the input state with finished warm-ups/removals pruned."""

    action: str
    reason: str
    size: int
    fleet_load: float | None
    state: ScaleState
    nodes: tuple[Node, ...] = ()


def decide(state: ScaleState, samples: list[Sample], policy: AutoscaleSettings) -> Decision:
    """The next action for the newest sample, given the recent ones (oldest first)."""
    if not samples:
        return Decision(HOLD, "no sample yet", 0, None, state)
    latest = samples[-1]
    state = _prune(state, latest, policy)
    size = _size(state, latest)
    window = [fleet_load(sample, state) for sample in samples[-policy.sustain:]]
    action, count, reason = wanted(size, window, policy)

    def hold(why: str) -> Decision:
        return Decision(HOLD, why, size, window[-1], state)

    if action == OUT:
        return (_out(state, latest, policy, size, window[-1], count, reason)
                or hold(f"{reason}; {_cooling(state, latest.time, policy, OUT)}"))
    if action == IN:
        return (_in(state, latest, policy, size, window[-1], count, reason)
                or hold(f"{reason}; {_blocked_in(state, latest, policy)}"))
    return hold(reason)


def wanted(size: int, window: list[float | None], policy: AutoscaleSettings) -> tuple[str, int, str]:
    """What size and load ask for before cooldowns: (action, how many nodes, why)."""
    if size < policy.min_size:
        return OUT, policy.min_size - size, f"size {size} is below min_size {policy.min_size}"
    if size > policy.max_size:
        return IN, size - policy.max_size, f"size {size} is above max_size {policy.max_size}"
    if window[-1] is None:
        return HOLD, 0, "no node answered the load query" if size else "no web node"
    high = _streak(window, lambda load: load > policy.scale_out_threshold)
    low = _streak(window, lambda load: load < policy.scale_in_threshold)
    if high == policy.sustain:
        reason = f"load {window[-1]:.2f} > {policy.scale_out_threshold:.2f} for {high} samples"
        if size >= policy.max_size:
            return HOLD, 0, f"{reason}, but size {size} is at max_size {policy.max_size}"
        return OUT, min(policy.step, policy.max_size - size), reason
    if low == policy.sustain:
        reason = f"load {window[-1]:.2f} < {policy.scale_in_threshold:.2f} for {low} samples"
        if size <= policy.min_size:
            return HOLD, 0, f"{reason}, but size {size} is at min_size {policy.min_size}"
        return IN, min(policy.step, size - policy.min_size), reason
    if high:
        return HOLD, 0, f"load above {policy.scale_out_threshold:.2f} for {high}/{policy.sustain} samples"
    if low:
        return HOLD, 0, f"load below {policy.scale_in_threshold:.2f} for {low}/{policy.sustain} samples"
    return HOLD, 0, "load within thresholds"


def fleet_load(sample: Sample, state: ScaleState) -> float | None:
    """The median load of the nodes that answered, leaving out warming and departing nodes.

    The median, not the mean: one node answering an absurd (but well-formed) number must not
    scale the fleet; a majority of busy nodes still does.
    """
    skip = {node.name for node in state.warming + state.removing}
    loads = [load for name, load in sample.loads.items() if load is not None and name not in skip]
    return statistics.median(loads) if loads else None


def begin(state: ScaleState, decision: Decision, now: float) -> ScaleState:
    """The state to persist *before* running commands: a crash mid-action cannot double-fire."""
    if decision.action == OUT:
        nodes = tuple(replace(node, since=now) for node in decision.nodes)
        return replace(state, last_out=now, warming=state.warming + nodes)
    if decision.action == IN:
        nodes = tuple(replace(node, since=now) for node in decision.nodes)
        return replace(state, last_in=now, removing=state.removing + nodes)
    return state


def finish(state: ScaleState, decision: Decision, done: list[str], now: float) -> ScaleState:
    """After the commands (`done`: the nodes whose commands succeeded). Cooldowns and warm-up
    count from the end of the action, as a long drain or boot has not changed the load yet."""
    names = {node.name for node in decision.nodes}
    if decision.action == OUT:
        warming = tuple(replace(n, since=now) if n.name in done else n
                        for n in state.warming if n.name not in names or n.name in done)
        return replace(state, last_out=now, warming=warming)
    if decision.action == IN:  # a failed removal counts again; the cooldown delays the retry
        return replace(state, last_in=now, removing=tuple(n for n in state.removing if n.name not in names))
    return state


def at_step(state: ScaleState, name: str, step: str) -> ScaleState:
    """`state` with the removal of `name` recorded at `step` (persisted before the step runs)."""
    return replace(state, removing=tuple(replace(n, step=step) if n.name == name else n for n in state.removing))


def done_removing(state: ScaleState, name: str, now: float) -> ScaleState:
    """The removal of `name` is over (finished or given up); the scale-in cooldown counts from now."""
    return replace(state, last_in=now, removing=tuple(n for n in state.removing if n.name != name))


def _out(state: ScaleState, latest: Sample, policy: AutoscaleSettings, size: int, load: float | None, count: int,
         reason: str) -> Decision | None:
    if _cooling(state, latest.time, policy, OUT):
        return None
    taken = {index_of(policy, name) for name in set(latest.loads) | latest.pending}
    taken |= {node.index for node in state.warming + state.removing}
    indexes = _free_indexes(taken, count)
    nodes = tuple(Node(name_of(policy, i), i, latest.time) for i in indexes)
    return Decision(OUT, reason, size, load, state, nodes)


def _in(state: ScaleState, latest: Sample, policy: AutoscaleSettings, size: int, load: float | None, count: int,
        reason: str) -> Decision | None:
    if _blocked_in(state, latest, policy):
        return None
    victims = _removable(state, latest, policy)[:count]
    return Decision(IN, reason, size, load, state, tuple(victims))


def _blocked_in(state: ScaleState, latest: Sample, policy: AutoscaleSettings) -> str:
    """Why scale-in cannot happen now ('' when it can)."""
    cooling = _cooling(state, latest.time, policy, IN)
    if cooling:
        return cooling
    if not _removable(state, latest, policy):
        return f"no removable node (names like {name_of(policy, 1)!r}, not warming)"
    return ""


def _removable(state: ScaleState, latest: Sample, policy: AutoscaleSettings) -> list[Node]:
    """Newest first: the highest index among nodes named by `name_template`."""
    busy = {node.name for node in state.warming + state.removing}
    nodes = [Node(name, index, latest.time) for name in latest.loads
             if name not in busy and (latest.owned is None or name in latest.owned)
             and (index := index_of(policy, name)) is not None]
    return sorted(nodes, key=lambda node: node.index or 0, reverse=True)


def _cooling(state: ScaleState, now: float, policy: AutoscaleSettings, action: str) -> str:
    """'' when `action` may run at `now`; else how long its cooldown still lasts."""
    if action == OUT:
        until = None if state.last_out is None else state.last_out + policy.cooldown_out
    else:  # scale-in also waits after a scale-out: the new node's load is not in yet
        last = max((t for t in (state.last_in, state.last_out) if t is not None), default=None)
        until = None if last is None else last + policy.cooldown_in
    if until is None or now >= until:
        return ""
    return f"{action} cooling down for {until - now:.1f} s more"


def _prune(state: ScaleState, latest: Sample, policy: AutoscaleSettings) -> ScaleState:
    """A warming node is warm once `warmup` passed and it is alive (given up if it is not; a
    provider's instance still counts while the provider reports it: `Sample.pending`).
    A removing node stays until the scaler has finished its removal, force-leave included:
    one left behind by a crash is finished by the next autoscaler (`scaler.Scaler.resume`)."""
    warming = tuple(n for n in state.warming if latest.time < n.since + policy.warmup)
    return replace(state, warming=warming)


def _size(state: ScaleState, latest: Sample) -> int:
    leaving = {node.name for node in state.removing}
    return len((set(latest.loads) | latest.pending | {node.name for node in state.warming}) - leaving)


def _streak(window: list[float | None], holds) -> int:
    """How many of the newest samples in a row satisfy `holds` (a None sample breaks it)."""
    count = 0
    for load in reversed(window):
        if load is None or not holds(load):
            break
        count += 1
    return count


def _free_indexes(taken: set[int | None], count: int) -> list[int]:
    """The lowest unused indexes, so names are reused after a scale-in (bounded lab addresses)."""
    out: list[int] = []
    index = 1
    while len(out) < count:
        if index not in taken:
            out.append(index)
        index += 1
    return out
