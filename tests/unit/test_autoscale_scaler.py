"""The scaler's I/O around decide(), with the kit's fake Serf and a recording provider: what a
crash leaves behind is finished, a dry run reads (never writes) the live state, the state file
tells a live autoscaler from a dead one, provider errors are retried with backoff and logged.

Each of the issue's findings (a scale-in interrupted by a crash never force-left; --dry-run
ignoring the persisted cooldowns; log lines without a time; status unable to tell a running
autoscaler) has its reproduction here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time

import pytest
from kit.fake_serf import FakeSerf
from kit.records import record

from lbsync import state as state_files
from lbsync.autoscale import Node, Sample, ScaleState
from lbsync.config import AutoscaleSettings, Settings
from lbsync.providers import DryRun, Instance, ProviderError
from lbsync.providers.base import with_retries
from lbsync.scaler import LOG_FORMAT, Scaler, timestamped_logs

POLICY = {"min_size": 1, "max_size": 4, "sustain": 1, "interval": 1, "cooldown_in": 120, "cooldown_out": 60,
          "warmup": 0, "command_timeout": 1, "query_timeout": 0.1, "api_retries": 2}


class Recording:
    """A provider that records every call; `fail` makes a call raise the given errors in turn."""

    kind = "recording"
    drains_by_query = False

    def __init__(self, listed: list[Instance] | None = None):
        self.listed = listed
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, list[ProviderError]] = {}

    def _maybe_fail(self, what: str) -> None:
        if self.fail.get(what):
            raise self.fail[what].pop(0)

    def launch(self, node: Node) -> Instance:
        self.calls.append(("launch", node.name))
        self._maybe_fail("launch")
        return Instance(node.name, f"i-{node.name}", "pending")

    def instances(self) -> list[Instance] | None:
        self.calls.append(("list", ""))
        self._maybe_fail("list")
        return self.listed

    def destroy(self, instance: Instance) -> None:
        self.calls.append(("destroy", instance.name))
        self._maybe_fail("destroy")


class FixedScaler(Scaler):
    """The real scaler, with the load query answered by the test (the fake Serf has no queries)."""

    loads: dict[str, float | None] = {}

    def sample(self) -> Sample:
        return Sample(time.time(), dict(self.loads))


@pytest.fixture
def serf():
    fake = FakeSerf([record("lb", "10.0.0.100", role="lb"), record("web1", "10.0.0.1"),
                     record("web2", "10.0.0.2", status="left")])
    yield fake
    fake.close()


def settings_for(tmp_path, serf: FakeSerf, **policy) -> Settings:
    return Settings(rpc_addr=serf.addr, state_dir=str(tmp_path / "state"), syslog=False,
                    autoscale=AutoscaleSettings(**{**POLICY, **policy}))


def scaler(settings: Settings, provider, loads: dict) -> FixedScaler:
    made = FixedScaler(settings, provider, sleep=lambda s: None)
    made.loads = loads
    return made


def persist(settings: Settings, state: ScaleState, **extra) -> None:
    state_files.write(settings.state_dir, state_files.AUTOSCALE, {"state": state.to_json(), **extra})


def saved(settings: Settings) -> dict:
    return json.loads((state_files.path(settings.state_dir, state_files.AUTOSCALE)).read_text())


def force_leaves(serf: FakeSerf) -> list[dict]:
    return [body for header, body in serf.requests if header["Command"] == "force-leave"]


# -- a scale-in interrupted by a crash is finished after the restart --------------------------

@pytest.mark.parametrize("step", ["", "drain", "destroy", "forget"])
def test_a_restarted_autoscaler_finishes_an_interrupted_scale_in_with_force_leave_prune(tmp_path, serf, step):
    """Before: the node had left, so decide() dropped it from `removing` and nobody ever ran
    force-leave -prune (nor the destroy): a `left` member stayed until its name was reused."""
    settings = settings_for(tmp_path, serf)
    persist(settings, ScaleState(last_in=time.time() - 5, removing=(Node("web2", 2, time.time() - 5, step),)))
    provider = Recording()
    scaler(settings, provider, {"web1": 0.5}).tick()
    assert force_leaves(serf) == [{"Node": "web2", "Prune": True}]
    assert (("destroy", "web2") in provider.calls) == (step != "forget")
    state = saved(settings)["state"]
    assert state["removing"] == [] and state["last_in"] > time.time() - 5


def test_an_interrupted_drain_whose_node_stays_alive_is_given_up_and_counts_again(tmp_path, serf):
    settings = settings_for(tmp_path, serf)
    persist(settings, ScaleState(removing=(Node("web1", 1, time.time() - 5, "drain"),)))
    provider = Recording()
    scaler(settings, provider, {"web1": 0.5}).tick()
    assert provider.calls == [("list", "")] and force_leaves(serf) == []
    assert saved(settings)["state"]["removing"] == [] and saved(settings)["decision"]["size"] == 1


def test_a_failed_destroy_stays_recorded_and_is_retried_next_time(tmp_path, serf):
    settings = settings_for(tmp_path, serf, api_retries=0)
    persist(settings, ScaleState(removing=(Node("web2", 2, time.time() - 5, "destroy"),)))
    provider = Recording()
    provider.fail["destroy"] = [ProviderError("RequestLimitExceeded: slow down")]
    run = scaler(settings, provider, {"web1": 0.5})
    run.tick()
    data = saved(settings)
    assert data["state"]["removing"][0]["step"] == "destroy" and "RequestLimitExceeded" in data["error"]
    assert force_leaves(serf) == []
    run.tick()
    assert force_leaves(serf) == [{"Node": "web2", "Prune": True}] and saved(settings)["state"]["removing"] == []


def test_scale_in_records_each_step_before_taking_it(tmp_path, serf):
    settings = settings_for(tmp_path, serf, min_size=0, cooldown_in=0)
    seen = []

    class Watching(Recording):
        def destroy(self, instance):
            seen.append(saved(settings)["state"]["removing"])
            super().destroy(instance)

    provider = Watching([Instance("web1", "i-1")])
    scaler(settings, provider, {"web1": 0.0}).tick()
    assert seen == [[{"name": "web1", "index": 1, "since": pytest.approx(time.time(), abs=5), "step": "destroy"}]]
    assert force_leaves(serf) == [{"Node": "web1", "Prune": True}]
    assert saved(settings)["state"]["removing"] == []


# -- --dry-run reads the live state, writes nothing, mutates nothing --------------------------

def test_dry_run_reads_the_persisted_cooldown_instead_of_claiming_a_scale_in(tmp_path, serf, caplog):
    """Before: a dry run started from an empty state and said "would scale-in" while the live
    autoscaler, 10 s after its last scale-in, was cooling down for 110 s more."""
    settings = settings_for(tmp_path, serf, dry_run=True)
    persist(settings, ScaleState(last_in=time.time() - 10), heartbeat=1.0)
    path = state_files.path(settings.state_dir, state_files.AUTOSCALE)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    provider = Recording([Instance("web1", "i-1"), Instance("web3", "i-3")])
    caplog.set_level(logging.INFO, logger="lbsync")
    run = scaler(settings, DryRun(provider), {"web1": 0.05, "web3": 0.05})
    run.tick()
    assert "decision: hold" in caplog.text and "scale-in cooling down for 1" in caplog.text
    assert "would scale-in" not in caplog.text
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert {what for what, _ in provider.calls} == {"list"}


def test_dry_run_layers_its_own_simulated_actions_on_the_live_state(tmp_path, serf, caplog):
    settings = settings_for(tmp_path, serf, dry_run=True, min_size=2)
    caplog.set_level(logging.INFO, logger="lbsync")
    provider = Recording([Instance("web1", "i-1")])
    run = scaler(settings, DryRun(provider), {"web1": 0.5})
    run.tick()
    assert "dry run: would scale-out web2; nothing launched or destroyed" in caplog.text
    run.tick()
    assert "scale-out cooling down" in caplog.text or "size 2" in caplog.text
    assert not state_files.path(settings.state_dir, state_files.AUTOSCALE).exists()
    assert {what for what, _ in provider.calls} == {"list"}


def test_dry_run_guard_refuses_mutating_calls():
    guard = DryRun(Recording())
    with pytest.raises(ProviderError, match="dry run"):
        guard.launch(Node("web1", 1, 0.0))
    with pytest.raises(ProviderError, match="dry run"):
        guard.destroy(Instance("web1", "i-1"))
    assert guard.inner.calls == []


# -- the state file says who is running, and since when ---------------------------------------

def test_state_file_carries_pid_start_and_heartbeat_and_no_float_noise(tmp_path, serf):
    settings = settings_for(tmp_path, serf)
    scaler(settings, Recording([Instance("web1", "i-1")]), {"web1": 0.123456789}).tick()
    data = saved(settings)
    assert data["pid"] == os.getpid() and data["provider"] == "recording" and data["interval"] == 1
    assert abs(data["heartbeat"] - time.time()) < 5 and data["started"] <= data["heartbeat"]
    assert data["loads"] == {"web1": 0.123} and data["error"] is None
    assert data["instances"] == [{"name": "web1", "id": "i-1", "state": "", "joined": True}]
    for number in re.findall(r"\d+\.\d+", json.dumps(data)):
        assert len(number.split(".")[1]) <= 3, number


def test_a_clean_stop_is_recorded_so_status_tells_it_from_a_crash(tmp_path, serf):
    import threading

    settings = settings_for(tmp_path, serf)
    run = scaler(settings, Recording([Instance("web1", "i-1")]), {"web1": 0.5})
    stop = threading.Event()
    stop.set()
    run.tick()
    assert saved(settings)["stopped"] is None
    run.run(stop)
    assert saved(settings)["stopped"] >= saved(settings)["heartbeat"] - 1


def test_a_tick_without_a_sample_still_beats_and_says_why(tmp_path, serf):
    settings = settings_for(tmp_path, serf)
    provider = Recording()
    provider.fail["list"] = [ProviderError("AuthFailure: bad key", retry=False)]
    scaler(settings, provider, {"web1": 0.5}).tick()
    data = saved(settings)
    assert data["pid"] == os.getpid() and "AuthFailure" in data["error"] and "state" not in data


def test_log_lines_carry_their_time_outside_the_journal():
    """Before: `autoscale.log` lines read "lbsync: INFO: decision: ..." with no time at all."""
    logger = logging.getLogger("lbsync")
    saved_handlers = logger.handlers[:]
    stream = io.StringIO()
    logger.handlers[:] = [logging.StreamHandler(stream)]
    try:
        timestamped_logs({})
        logger.warning("hello")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} lbsync: WARNING: hello\n", stream.getvalue())
        journal = logging.StreamHandler(io.StringIO())
        logger.handlers[:] = [journal]
        info = os.fstat(2)  # stderr really is the journal (systemd names it by device:inode)
        timestamped_logs({"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert journal.formatter is None  # the journal stamps lines itself
    finally:
        logger.handlers[:] = saved_handlers
    assert "%(asctime)s" in LOG_FORMAT


# -- the provider's inventory: counts, ownership, unjoined instances, errors ------------------

def test_an_instance_launched_before_a_crash_counts_so_nothing_launches_twice(tmp_path, serf):
    settings = settings_for(tmp_path, serf, min_size=2)
    provider = Recording([Instance("web1", "i-1"), Instance("web2", "i-2", "pending")])
    scaler(settings, provider, {"web1": 0.5}).tick()
    assert ("launch", "web2") not in provider.calls and saved(settings)["decision"]["size"] == 2


def test_scale_out_launches_through_the_provider_and_a_failure_waits_for_the_cooldown(tmp_path, serf, caplog):
    settings = settings_for(tmp_path, serf, min_size=3)
    provider = Recording([Instance("web1", "i-1")])
    provider.fail["launch"] = [ProviderError("InstanceLimitExceeded: quota", retry=False)]
    caplog.set_level(logging.INFO, logger="lbsync")
    run = scaler(settings, provider, {"web1": 0.5})
    run.tick()
    assert [c for c in provider.calls if c[0] == "launch"] == [("launch", "web2")]
    assert "scale-out web2 failed: InstanceLimitExceeded: quota; next try after the cooldown" in caplog.text
    state = saved(settings)["state"]
    assert state["warming"] == [] and state["last_out"] is not None
    run.tick()
    assert len([c for c in provider.calls if c[0] == "launch"]) == 1 and "cooling down" in caplog.text


def test_unjoined_instances_are_reported_and_destroyed_only_when_asked(tmp_path, serf, caplog):
    old = time.time() - 1000
    caplog.set_level(logging.INFO, logger="lbsync")
    settings = settings_for(tmp_path, serf, boot_timeout=600)
    provider = Recording([Instance("web1", "i-1"), Instance("web3", "i-3", "running", old)])
    scaler(settings, provider, {"web1": 0.5}).tick()
    assert "instance i-3 (web3, running) is not in the cluster" in caplog.text and "destroy" not in dict(provider.calls)
    settings = settings_for(tmp_path, serf, boot_timeout=600, destroy_unjoined=True)
    scaler(settings, provider, {"web1": 0.5}).tick()
    assert ("destroy", "web3") in provider.calls and {"Node": "web3", "Prune": True} in force_leaves(serf)


def test_a_member_without_an_instance_of_ours_is_never_scaled_in(tmp_path, serf):
    settings = settings_for(tmp_path, serf, min_size=0, cooldown_in=0)
    provider = Recording([])
    scaler(settings, provider, {"web1": 0.0}).tick()
    assert "destroy" not in dict(provider.calls) and force_leaves(serf) == []


def test_retries_back_off_log_the_providers_message_and_give_up_on_fatal_errors(caplog):
    waits: list[float] = []
    errors = [ProviderError("Throttling: Rate exceeded"), ProviderError("HTTP 503: busy", wait=7.0)]

    def flaky():
        if errors:
            raise errors.pop(0)
        return "ok"

    caplog.set_level(logging.INFO, logger="lbsync")
    assert with_retries("listing instances", flaky, 4, waits.append) == "ok"
    assert 1.0 <= waits[0] <= 1.25 and 7.0 <= waits[1] <= 8.75
    assert "listing instances failed (try 1 of 5): Throttling: Rate exceeded; again in" in caplog.text
    fatal = [ProviderError("AuthFailure: no", retry=False)]
    with pytest.raises(ProviderError, match="AuthFailure"):
        with_retries("x", lambda: (_ for _ in ()).throw(fatal[0]), 4, waits.append)
    assert len(waits) == 2


def test_drain_sync_forces_a_push_pull_with_a_node_until_the_lb_sees_its_drain_tag(serf):
    """The 11 s delay: gossip can miss the LB, which then learns drain=1 only at Serf's next
    push-pull (~15 s). During a removal the scaler joins the node (a push-pull at once) until the
    LB's own agent shows the tag."""
    from lbsync.scaler import DrainSync

    settings = Settings(rpc_addr=serf.addr)
    joins = lambda: [body["Existing"] for header, body in serf.requests if header["Command"] == "join"]
    with DrainSync(settings, "web1", every=0.05):
        wait = time.monotonic() + 5
        while not joins() and time.monotonic() < wait:
            time.sleep(0.02)
    assert joins()[0] == ["10.0.0.1:7946"]
    serf.members[1] = record("web1", "10.0.0.1", drain="1")
    count = len(joins())
    with DrainSync(settings, "web1", every=0.05):
        time.sleep(0.3)
    assert len(joins()) == count  # the LB sees drain=1: nothing to repair
