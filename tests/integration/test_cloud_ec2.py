"""The ec2 provider against a real EC2 API over HTTP: moto's EC2 backend in server mode on
loopback (scripts/moto_ec2.py, started here and stopped by PID even when a test fails).

Both drivers are exercised: an AWS-style endpoint (SigV4, EC2NodeDriver) and a Eucalyptus-style
EC2_URL with a path (SigV2, EucNodeDriver). Every list is asserted non-empty first: the traps of
this pairing answer empty lists without an error (see the shim's docstring).
"""

from __future__ import annotations

import base64
import logging
import sys
import time
from pathlib import Path

import pytest
from kit.net import wait_until
from kit.serfnode import start_serf

from lbsync.autoscale import Node
from lbsync.config import AutoscaleSettings, Settings
from lbsync.providers import open_provider
from lbsync.scaler import Scaler

pytestmark = pytest.mark.integration
import libcloud  # noqa: E402,F401  (the test extra installs libcloud and moto: missing is a failure)
import moto.server  # noqa: E402,F401

SHIM = Path(__file__).resolve().parent / "scripts" / "moto_ec2.py"
AMI = "ami-12c6146b"  # one of the images moto ships


class Moto:
    def __init__(self, procs, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        portfile, self.log = workdir / "port", workdir / "actions.log"
        self.proc = procs.start("moto", [sys.executable, str(SHIM), str(portfile), str(self.log)])
        wait_until(lambda: portfile.exists() and portfile.read_text(), 30, "moto's EC2 API to listen")
        self.url = f"http://127.0.0.1:{portfile.read_text()}"

    def actions(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def moto(procs, tmp_path):
    return Moto(procs, tmp_path / "moto")


@pytest.fixture
def secrets(tmp_path) -> Path:
    path = tmp_path / "secrets"
    path.mkdir()
    (path / "serf.key").write_text("c2VjcmV0c2VjcmV0c2VjcmV0\n")
    (path / "rpc.token").write_text("token\n")
    return path


def settings(tmp_path, secrets: Path, **extra) -> Settings:
    conf = {"provider": "ec2", "cluster_id": "prod", "join": ("10.0.0.10",), "image": AMI, "size": "t2.micro",
            "secrets_dir": str(secrets), "api_retries": 1, "api_timeout": 10, **extra}
    return Settings(state_dir=str(tmp_path / "state"), syslog=False, autoscale=AutoscaleSettings(**conf))


@pytest.fixture
def aws_keys(monkeypatch):
    for key in ("EC2_URL", "EC2_ACCESS_KEY", "EC2_SECRET_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


def user_data(provider, instance_id: str) -> str:
    params = {"Action": "DescribeInstanceAttribute", "InstanceId": instance_id, "Attribute": "userData"}
    body = provider.driver.connection.request(provider.driver.path, params=params).object
    value = next(el.text for el in body.iter() if el.tag.endswith("value"))
    return base64.b64decode(value).decode()


def test_ec2_launches_with_user_data_and_tags_lists_ours_and_destroys(moto, tmp_path, secrets, aws_keys):
    provider = open_provider(settings(tmp_path, secrets, endpoint_url=moto.url))
    assert type(provider.driver).__name__ == "EC2NodeDriver"
    launched = provider.launch(Node("web1", 1, time.time()))
    assert launched.id.startswith("i-") and launched.name == "web1"
    other = open_provider(settings(tmp_path, secrets, endpoint_url=moto.url, cluster_id="staging"))
    other.launch(Node("web1", 1, time.time()))  # same name, another cluster: never ours

    ours = provider.instances()
    assert [(i.name, i.id) for i in ours] == [("web1", launched.id)]
    assert ours[0].created is not None and abs(ours[0].created - time.time()) < 300
    text = user_data(provider, launched.id)
    assert text.startswith("#cloud-config") and "--node-name web1" in text and "lbsync-drain" in text
    tags = provider.driver.list_nodes(ex_node_ids=[launched.id])[0].extra["tags"]
    assert tags == {"Name": "web1", "lbsync-cluster": "prod", "lbsync-pool": "web", "lbsync-node": "web1"}

    provider.destroy(ours[0])
    assert provider.instances() == []
    assert len(other.instances()) == 1  # the other cluster's instance is untouched
    provider.destroy(ours[0])  # destroying one already gone is fine
    assert moto.actions().count("RunInstances") == 2 and "TerminateInstances" in moto.actions()


def test_eucalyptus_style_ec2_url_with_a_path_and_eucarc_keys(moto, tmp_path, secrets, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("EC2_URL", f"{moto.url}/services/Eucalyptus")
    monkeypatch.setenv("EC2_ACCESS_KEY", "EUCAKEY")
    monkeypatch.setenv("EC2_SECRET_KEY", "eucasecret")
    provider = open_provider(settings(tmp_path, secrets))
    assert type(provider.driver).__name__ == "EucNodeDriver"
    launched = provider.launch(Node("web2", 2, time.time()))
    ours = provider.instances()
    assert [(i.name, i.id) for i in ours] == [("web2", launched.id)]
    provider.destroy(ours[0])
    assert provider.instances() == []


def test_the_scale_loop_counts_launched_instances_across_a_restart_and_a_dry_run_mutates_nothing(
        moto, procs, tmp_path, secrets, aws_keys, caplog):
    """min_size 2 with no web node in Serf: two launches, then the provider's count holds the
    fleet at 2 while the instances boot, also for a restarted autoscaler (no double launch)."""
    caplog.set_level(logging.INFO, logger="lbsync")
    lb = start_serf(procs, "lb", "127.0.0.1", tags={"role": "lb"})
    conf = settings(tmp_path, secrets, endpoint_url=moto.url, min_size=2, interval=0.2, query_timeout=0.2)
    conf = Settings(rpc_addr=lb.rpc_addr, state_dir=conf.state_dir, syslog=False, autoscale=conf.autoscale)
    Scaler(conf, open_provider(conf)).tick()
    assert moto.actions().count("RunInstances") == 2
    restarted = Scaler(conf, open_provider(conf))
    restarted.tick()
    assert moto.actions().count("RunInstances") == 2 and "size 2 (2..4)" in caplog.text
    assert {i.name for i in restarted.inventory or []} == {"web1", "web2"}

    import dataclasses

    dry = dataclasses.replace(conf, autoscale=dataclasses.replace(conf.autoscale, min_size=3, dry_run=True))
    before = len(moto.actions())
    Scaler(dry, open_provider(dry)).tick()
    assert "size 2 is below min_size 3; scale-out cooling down" in caplog.text  # the live state's cooldown
    assert set(moto.actions()[before:]) <= {"DescribeInstances", "DescribeAddresses"}
