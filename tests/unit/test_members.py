"""The tag schema at the network boundary: every bad value is a Skip with a reason."""

import ipaddress

import pytest
from kit.records import decoded
from kit.records import record as wire_record

from lbsync.config import Settings
from lbsync.members import Member, parse, select


def record(name="web1", addr="10.0.0.1", status="alive", **tags):
    """A web member as the RPC client hands it to select(): Addr already decoded."""
    return decoded(wire_record(name, addr, status, **tags))


def test_defaults_and_typed_fields():
    member = parse(record(port="8080", weight="5", drain="true", backup="1", max_fails="3",
                          fail_timeout="10s", max_conns="100"))
    assert member == Member("web1", ipaddress.ip_address("10.0.0.1"), "alive", "web", 8080, 5,
                            draining=True, backup=True, max_fails=3, fail_timeout=10, max_conns=100)
    plain = parse(record())
    assert (plain.port, plain.weight, plain.draining, plain.backup) == (80, 1, False, False)


@pytest.mark.parametrize("tags, reason", [
    ({"port": "8080; } server { listen 9999"}, "tag port="),
    ({"port": "80\n"}, "tag port="),
    ({"port": "0"}, "1..65535"),
    ({"port": "65536"}, "1..65535"),
    ({"port": "-1"}, "tag port="),
    ({"port": "８０"}, "tag port="),  # full-width digits are not ASCII digits
    ({"port": ""}, "tag port="),
    ({"weight": "0"}, "1..256"),
    ({"weight": "257"}, "1..256"),
    ({"weight": "1.5"}, "tag weight="),
    ({"drain": "maybe"}, "tag drain="),
    ({"backup": "2"}, "tag backup="),
    ({"max_fails": "1001"}, "0..1000"),
    ({"fail_timeout": "0"}, "1..3600"),
    ({"fail_timeout": "10m"}, "tag fail_timeout="),
    ({"max_conns": "x"}, "tag max_conns="),
])
def test_bad_tags_are_skipped_with_reason(tags, reason):
    selection = select([record(**tags), record("web2", "10.0.0.2")], Settings())
    assert [m.name for m in selection.backends] == ["web2"]
    assert len(selection.skipped) == 1 and selection.skipped[0].name == "web1"
    assert reason in selection.skipped[0].reason


@pytest.mark.parametrize("name", ["web.;", "web 1", "web\n1", "", "-web", "w" * 129, "wéb"])
def test_bad_names_are_skipped(name):
    selection = select([record(name=name)], Settings())
    assert selection.backends == () and "name" in selection.skipped[0].reason


def test_only_alive_members_of_our_role():
    records = [record("web1"), record("web2", "10.0.0.2", status="left"),
               record("web3", "10.0.0.3", status="failed"), {**record("lb", "10.0.0.9"),
                                                             "Tags": {"role": "lb"}}]
    selection = select(records, Settings())
    assert [m.name for m in selection.backends] == ["web1"]
    assert selection.by_status == {"alive": ("web1",), "left": ("web2",), "failed": ("web3",)}
    assert selection.skipped == ()


def test_sorted_by_name_and_duplicate_endpoint_kept_by_its_holder_not_by_name():
    records = [record("web2", "10.0.0.1"), record("web1", "10.0.0.1"), record("web0", "10.0.0.3")]
    selection = select(records, Settings(), held={"10.0.0.1:80": "web2"})
    assert [m.name for m in selection.backends] == ["web0", "web2"]
    assert [s.name for s in selection.skipped] == ["web1"]
    assert "already served by web2" in selection.skipped[0].reason


def test_allowed_networks_and_own_listen_address():
    policy = Settings(allowed_networks=("10.0.0.0/24",), lb_listen=("10.0.0.5:80",))
    selection = select([record("in", "10.0.0.1"), record("out", "10.0.1.1"),
                        record("self", "10.0.0.5")], policy)
    assert [m.name for m in selection.backends] == ["in"]
    reasons = {s.name: s.reason for s in selection.skipped}
    assert "outside allowed_networks" in reasons["out"]
    assert "own listen address" in reasons["self"]


def test_backup_refused_with_hash_algorithms():
    selection = select([record(backup="1")], Settings(algorithm="ip_hash"))
    assert selection.backends == () and "ip_hash" in selection.skipped[0].reason


def test_address_from_serf_bytes_including_ipv4_mapped():
    raw = record()
    raw["Addr"] = b"\x00" * 10 + b"\xff\xff" + bytes([192, 0, 2, 7])
    assert str(parse(raw).addr) == "192.0.2.7"
    raw["Addr"] = bytes(range(16))
    assert parse(raw).endpoint.startswith("[")


def test_unusable_address_skipped():
    selection = select([record(addr="0.0.0.0")], Settings())
    assert "cannot receive traffic" in selection.skipped[0].reason
