"""decide() as tables of plain data: thresholds, hysteresis, sustain, cooldowns, warm-up, min/max,
silent nodes, the empty fleet; plus the state round trip, the command helpers and bad config."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from lbsync.autoscale import HOLD, IN, OUT, Node, Sample, ScaleState, begin, decide, finish
from lbsync.commands import command_env, expand, one_line, run_command
from lbsync.config import AutoscaleSettings
from lbsync.errors import ConfigError
from lbsync.scaler import parse_load

P = AutoscaleSettings(min_size=1, max_size=4, scale_out_threshold=0.8, scale_in_threshold=0.3, sustain=3,
           cooldown_out=60, cooldown_in=120, warmup=30, step=1)
T = 10_000.0  # "now" in every table


def samples(*loads_per_sample, interval=10.0):
    """samples({"web1": 0.9}, {"web1": 0.95}) -> Samples ending at T, `interval` apart."""
    count = len(loads_per_sample)
    return [Sample(T - (count - 1 - i) * interval, loads) for i, loads in enumerate(loads_per_sample)]


def fleet(load, names=("web1", "web2")):
    return {name: load for name in names}


def high(names=("web1", "web2")):
    return samples(*[fleet(0.9, names)] * 3)


def low(names=("web1", "web2")):
    return samples(*[fleet(0.1, names)] * 3)


@pytest.mark.parametrize("window, action, reason", [
    (samples(*[fleet(0.9)] * 3), OUT, "load 0.90 > 0.80 for 3 samples"),
    (samples(*[fleet(0.8)] * 3), HOLD, "load within thresholds"),  # strictly above
    (samples(fleet(0.5), fleet(0.9), fleet(0.9)), HOLD, "above 0.80 for 2/3"),  # not sustained
    (samples(fleet(0.9), fleet(0.5), fleet(0.9)), HOLD, "above 0.80 for 1/3"),  # streak broken
    (samples(*[fleet(0.9)] * 2), HOLD, "above 0.80 for 2/3"),  # too few samples yet
    (samples(*[fleet(0.1)] * 3), IN, "load 0.10 < 0.30 for 3 samples"),
    (samples(*[fleet(0.3)] * 3), HOLD, "load within thresholds"),
    (samples(*[fleet(0.5)] * 3), HOLD, "load within thresholds"),  # in the hysteresis band
    (samples(fleet(0.1), fleet(0.5), fleet(0.1)), HOLD, "below 0.30 for 1/3"),
    (samples({"web1": 1.0, "web2": 0.7}, {"web1": 1.0, "web2": 0.7}, {"web1": 1.0, "web2": 0.7}),
     OUT, "load 0.85 > 0.80"),  # the fleet's mean, not one node
])
def test_thresholds_hysteresis_and_sustain(window, action, reason):
    decision = decide(ScaleState(), window, P)
    assert (decision.action, decision.size) == (action, 2)
    assert reason in decision.reason


@pytest.mark.parametrize("state, window, action, reason", [
    (ScaleState(last_out=T - 59), high(), HOLD, "scale-out cooling down for 1.0 s more"),
    (ScaleState(last_out=T - 60), high(), OUT, ""),
    (ScaleState(last_in=T - 1), high(), OUT, ""),  # a scale-in does not delay an urgent scale-out
    (ScaleState(last_in=T - 119), low(), HOLD, "scale-in cooling down for 1.0 s more"),
    (ScaleState(last_out=T - 119), low(), HOLD, "scale-in cooling down"),  # no scale-in right after out
    (ScaleState(last_in=T - 120, last_out=T - 500), low(), IN, ""),
])
def test_cooldowns(state, window, action, reason):
    decision = decide(state, window, P)
    assert decision.action == action and reason in decision.reason


def test_scale_out_names_the_lowest_free_index_and_step_is_capped_by_max():
    decision = decide(ScaleState(), high(("web1", "web3")), dataclasses.replace(P, step=3))
    assert [(n.name, n.index) for n in decision.nodes] == [("web2", 2), ("web4", 4)]


def test_scale_in_picks_the_newest_managed_node():
    window = low(("web2", "web10", "web3", "base"))
    decision = decide(ScaleState(), window, P)
    assert decision.action == IN and [n.name for n in decision.nodes] == ["web10"]
    reason = decide(ScaleState(), low(("base", "db")), P).reason
    assert reason.endswith("no removable node (names like 'web1', not warming)")


@pytest.mark.parametrize("names, policy, action, count, reason", [
    ((), P, OUT, 1, "size 0 is below min_size 1"),  # empty fleet at start
    ((), dataclasses.replace(P, min_size=0), HOLD, 0, "no web node"),
    (("web1",), dataclasses.replace(P, min_size=3), OUT, 2, "size 1 is below min_size 3"),
    (("web1", "web2", "web3"), dataclasses.replace(P, max_size=2), IN, 1, "above max_size 2"),
])
def test_min_and_max_enforced_even_at_start_without_load_data(names, policy, action, count, reason):
    window = samples({name: None for name in names})  # one sample, nobody answered
    decision = decide(ScaleState(), window, policy)
    assert (decision.action, len(decision.nodes)) == (action, count) and reason in decision.reason


def test_below_min_respects_the_cooldown_of_a_failed_attempt():
    decision = decide(ScaleState(last_out=T - 5), samples({}), P)
    assert decision.action == HOLD and "below min_size" in decision.reason and "cooling" in decision.reason


def test_at_max_and_at_min_hold():
    assert "at max_size 4" in decide(ScaleState(), high(("web1", "web2", "web3", "web4")), P).reason
    assert "at min_size 1" in decide(ScaleState(), low(("web1",)), P).reason


def test_warming_node_counts_toward_size_but_not_load():
    state = ScaleState(last_out=T - 100, warming=(Node("web3", 3, T - 10),))
    window = samples(*[{"web1": 0.9, "web2": 0.9, "web3": 0.0}] * 3)
    decision = decide(state, window, dataclasses.replace(P, max_size=3))
    assert decision.action == HOLD and decision.size == 3 and decision.fleet_load == pytest.approx(0.9)
    assert "at max_size 3" in decision.reason
    booting = decide(state, samples(*[fleet(0.1)] * 3), P)  # not alive yet: still counted
    assert booting.size == 3 and booting.state.warming


def test_warm_node_counts_and_a_node_that_never_came_up_is_given_up():
    state = ScaleState(last_out=T - 100, warming=(Node("web3", 3, T - 30),))
    warm = decide(state, samples(*[{"web1": 0.9, "web2": 0.0, "web3": 0.0}] * 3), P)
    assert warm.state.warming == () and warm.fleet_load == 0.0  # web3 counts: the median of 0.9, 0, 0
    never = decide(state, high(), P)
    assert never.state.warming == () and never.size == 2 and never.action == OUT
    assert never.nodes[0].name == "web3"  # the name is free again


def test_node_that_stops_answering_counts_in_size_not_in_load():
    window = samples(*[{"web1": 0.9, "web2": None}] * 3)
    decision = decide(ScaleState(), window, P)
    assert decision.action == OUT and decision.size == 2 and decision.fleet_load == pytest.approx(0.9)
    silent = decide(ScaleState(), samples(*[{"web1": None, "web2": None}] * 3), P)
    assert silent.action == HOLD and silent.reason == "no node answered the load query"
    gap = decide(ScaleState(), samples(fleet(0.9), fleet(None), fleet(0.9)), P)
    assert gap.action == HOLD  # a sample without data breaks the sustained window


def test_removing_node_is_neither_size_nor_load_and_stays_until_the_scaler_finishes_it():
    """Gone from Serf is not done: destroy and force-leave may still be ahead (a crash between
    them is finished by the next autoscaler, tests/unit/test_autoscale_scaler.py)."""
    state = ScaleState(last_in=T - 500, removing=(Node("web2", 2, T - 5, "destroy"),))
    during = decide(state, samples(*[{"web1": 0.5, "web2": 0.0}] * 3), P)
    assert during.size == 1 and during.fleet_load == 0.5 and during.state.removing
    after = decide(state, samples({"web1": 0.5}), P)
    assert after.state.removing == state.removing and after.size == 1
    interrupted = ScaleState(last_in=T - 500, removing=(Node("web2", 2, T - 1200, "drain"),))
    assert decide(interrupted, samples({"web1": 0.5}), P).state.removing == interrupted.removing


def test_pending_instances_count_in_size_and_take_their_names_and_only_owned_nodes_are_scaled_in():
    booting = [Sample(t.time, t.loads, pending=frozenset({"web2"})) for t in samples(*[fleet(0.9, ("web1",))] * 3)]
    decision = decide(ScaleState(), booting, P)
    assert decision.size == 2 and [n.name for n in decision.nodes] == ["web3"]
    at_min = dataclasses.replace(P, min_size=2)
    assert decide(ScaleState(), [Sample(T, {}, pending=frozenset({"web1", "web2"}))], at_min).action == HOLD
    foreign = [Sample(t.time, t.loads, owned=frozenset({"web1", "web2"})) for t in low(("web1", "web2", "web3"))]
    assert [n.name for n in decide(ScaleState(), foreign, P).nodes] == ["web2"]  # web3: no instance of ours


def test_begin_and_finish_record_attempts_so_failures_wait_for_the_cooldown():
    decision = decide(ScaleState(), high(), P)
    started = begin(decision.state, decision, T - 10)
    assert started.last_out == T - 10 and [n.name for n in started.warming] == ["web3"]
    failed = finish(started, decision, [], T - 5)  # cooldown from the end of the attempt
    assert failed.warming == () and failed.last_out == T - 5
    assert "cooling down for 55.0 s" in decide(failed, samples(*[fleet(0.9)] * 3), P).reason
    booted = finish(started, decision, ["web3"], T + 5)
    assert booted.warming == (Node("web3", 3, T + 5),)
    removal = decide(ScaleState(), low(), P)
    removing = begin(ScaleState(), removal, T)
    assert removing.last_in == T and [n.name for n in removing.removing] == ["web2"]
    removed = finish(removing, removal, ["web2"], T + 8)
    assert removed.last_in == T + 8 and removed.removing == ()


def test_state_round_trips_through_json():
    state = ScaleState(1.5, None, (Node("web3", 3, 2.0),), (Node("web2", 2, 3.0),))
    assert ScaleState.from_json(state.to_json()) == state
    assert ScaleState.from_json({}) == ScaleState()


def test_no_sample_yet():
    assert decide(ScaleState(), [], P).action == HOLD


@pytest.mark.parametrize("raw, load", [(b"0.42", 0.42), (b" 1.5\n", 1.5), (None, None), (b"64", 64.0)])
def test_parse_load(raw, load):
    assert parse_load(raw) == load


@pytest.mark.parametrize("raw", [b"", b"nan", b"inf", b"-1", b"+1", b"high", b"\xff", b"1000", b"1_000",
                                 b"1e2", b"0x10", b"64.5"])
def test_a_load_answer_that_is_not_a_plain_decimal_in_range_is_refused_with_a_reason(raw):
    with pytest.raises(ValueError, match="plain decimal|above 64"):
        parse_load(raw)


def test_one_hostile_node_cannot_steer_the_fleet():
    """Three nodes, one answering the highest load it may: the median stays with the other two."""
    window = samples(*[{"web1": 0.1, "web2": 0.1, "web3": 64.0}] * 3)
    decision = decide(ScaleState(), window, P)
    assert decision.action == IN and decision.fleet_load == 0.1


def test_expand_fills_placeholders_per_word_without_a_shell():
    node = Node("web3", 3, 0.0)
    assert expand("lab/boot_web.sh {index} --name '{name} x' ; rm", node) == [
        "lab/boot_web.sh", "3", "--name", "web3 x", ";", "rm"]


def test_commands_do_not_inherit_the_autoscalers_lbsync_settings():
    env = command_env({"PATH": "/bin", "LBSYNC_RPC_ADDR": "127.0.0.1:1", "LBSYNC_CONFIG": "/x"}, Node("web3", 3, 0))
    assert env == {"PATH": "/bin", "AUTOSCALE_NAME": "web3", "AUTOSCALE_INDEX": "3"}


def test_run_command_reports_output_exit_status_and_timeout(tmp_path):
    code, output = run_command([sys.executable, "-c", "print('quota exceeded'); raise SystemExit(3)"],
                               dict(os.environ), 30)
    assert (code, output.strip()) == (3, "quota exceeded")
    assert run_command([str(tmp_path / "missing")], {}, 5)[0] == 127
    code, _ = run_command([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), 0.5)
    assert code is None
    assert one_line("a\n\n b \n") == "a | b"


@pytest.mark.parametrize("values, message", [
    ({"min_size": 3, "max_size": 2}, "autoscale.min_size: 3 must not exceed autoscale.max_size (2)"),
    ({"scale_out_threshold": 0.3, "scale_in_threshold": 0.3}, "hysteresis"),
    ({"sustain": 0}, "autoscale.sustain: 0 is not an integer in 1..100"),
    ({"step": 0}, "autoscale.step: 0 is not an integer"),
    ({"cooldown_in": -1}, "autoscale.cooldown_in: -1 is not a finite number in [0,"),
    ({"interval": 0}, "autoscale.interval: 0 is not a finite number in (0,"),
    ({"name_template": "web"}, "needs exactly one {index}"),
    ({"name_template": "web {index}"}, "needs exactly one {index}"),
    ({"scale_in_command": "lab/stop_web.sh '{index}"}, "scale_in_command: No closing quotation"),
])
def test_bad_policy_is_a_config_error(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        AutoscaleSettings(**values)


def test_cli_bad_policy_is_one_line_exit_78_and_commands_are_required(tmp_path):
    env = {**os.environ, "LBSYNC_CONFIG": str(tmp_path / "none.toml"), "LBSYNC_SYSLOG": "false"}
    (tmp_path / "none.toml").write_text("")
    lbsync = [sys.executable, "-m", "lbsync"]
    bad = subprocess.run([*lbsync, "--set", "autoscale.min_size=5", "--set", "autoscale.max_size=2",
                          "autoscale"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 78 and len(bad.stderr.splitlines()) == 1
    assert "autoscale.min_size (from flag --set autoscale.min_size): 5 must not exceed" in bad.stderr
    bare = subprocess.run([*lbsync, "autoscale"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert bare.returncode == 78 and "scale_out_command" in bare.stderr
    assert len(bare.stderr.splitlines()) == 1
