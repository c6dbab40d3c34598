"""Providers without a network: the hook never imports a cloud SDK, user data renders to valid
cloud-init that joins the node, credentials and endpoints are found as the clouds' own tools
find them, the command provider lists what its list_command prints.

The clouds' APIs themselves: tests/integration/test_cloud_ec2.py (moto over HTTP) and
tests/integration/test_cloud_contracts.py (fake CloudStack and OpenStack servers)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lbsync.autoscale import Node
from lbsync.config import AutoscaleSettings, SettingError, Settings
from lbsync.errors import ConfigError
from lbsync.providers import Instance, ProviderError, open_provider
from lbsync.providers.base import CLUSTER_TAG, NODE_TAG, POOL_TAG
from lbsync.providers.command import CommandProvider
from lbsync.providers.ec2 import credentials, endpoint
from lbsync.providers.openstack import driver_args, load_cloud
from lbsync.providers.userdata import UserData

ROOT = Path(__file__).resolve().parents[2]
CLOUD_ONLY = {"libcloud", "yaml", "boto3", "botocore", "cs", "openstack"}


def test_no_module_off_the_providers_imports_a_cloud_sdk():
    """Static: libcloud and yaml appear only in lbsync/providers/ (the autoscaler's)."""
    for path in (ROOT / "lbsync").rglob("*.py"):
        if path.parent.name == "providers":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not {n.split(".")[0] for n in names} & CLOUD_ONLY, f"{path}: {names}"


def test_the_hook_path_imports_neither_providers_nor_cloud_sdks():
    """At run time, with the SDKs installed: everything `lbsync handle` loads stays clean."""
    code = ("import sys, lbsync.cli, lbsync.sync, lbsync.serf, lbsync.drivers.live, lbsync.drivers.reload\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(CLOUD_ONLY)!r}"
            " or m.startswith(('lbsync.providers', 'lbsync.scaler')))\nprint(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# -- settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"provider": "ec2"}, "autoscale.cluster_id: '' must be set for autoscale.provider ('ec2')"),
    ({"provider": "ec2", "cluster_id": "prod", "image": "ami-1", "size": "t3.micro"}, "autoscale.join"),
    ({"provider": "cloudstack", "cluster_id": "c", "join": ("lb",), "image": "t", "size": "s"}, "autoscale.zone"),
    ({"provider": "openstack", "cluster_id": "c", "join": ("lb",), "image": "i", "size": "f"}, "autoscale.cloud"),
    ({"provider": "gce"}, "is not one of command, ec2, cloudstack, openstack"),
    ({"cluster_id": "has space"}, "autoscale.cluster_id"),
])
def test_cloud_providers_name_what_they_still_need(values, message):
    with pytest.raises(SettingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AutoscaleSettings(**values)


# -- user data ---------------------------------------------------------------------------------

def cloud_settings(tmp_path, **extra) -> Settings:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "serf.key").write_text("c2VjcmV0c2VjcmV0c2VjcmV0\n")
    (secrets / "rpc.token").write_text("token-123\n")
    conf = {"provider": "ec2", "cluster_id": "prod", "join": ("10.0.0.10:7946",), "image": "ami-1",
            "size": "t3.micro", "secrets_dir": str(secrets), "install_source": "lbsync[cloud]==0.2 ; x", **extra}
    return Settings(state_dir=str(tmp_path / "state"), autoscale=AutoscaleSettings(**conf))


def test_user_data_is_cloud_config_that_installs_joins_and_answers_the_drain_query(tmp_path):
    text = UserData(cloud_settings(tmp_path)).render(Node("web7", 7, 0.0))
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    files = {f["path"]: f for f in data["write_files"]}
    assert files["/etc/lbsync/secrets/serf.key"]["content"] == "c2VjcmV0c2VjcmV0c2VjcmV0"
    assert files["/etc/lbsync/secrets/rpc.token"]["permissions"] == "0600"
    handlers = json.loads(files["/etc/serf/lbsync-drain.json"]["content"])["event_handlers"]
    assert handlers == ["query:lbsync-drain=systemctl stop --no-block lbsync-agent.service && echo draining"]
    shell = " ".join(" ".join(cmd) for cmd in data["runcmd"])
    assert "pip install --quiet 'lbsync[cloud]==0.2 ; x'" in shell  # quoted: no shell injection
    assert "--role web --node-name web7" in shell and "--join 10.0.0.10:7946" in shell
    assert ["systemctl", "enable", "--now", "serf.service", "lbsync-agent.service"] in data["runcmd"]


def test_user_data_errors_name_the_file_never_a_secret(tmp_path):
    settings = cloud_settings(tmp_path, secrets_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="cannot read .*nowhere/serf.key"):
        UserData(settings).render(Node("web1", 1, 0.0))
    template = tmp_path / "mine.j2"
    template.write_text("#cloud-config\n{{ no_such_thing }}\n")
    with pytest.raises(ConfigError, match="no_such_thing"):
        UserData(cloud_settings(tmp_path, user_data_template=str(template))).render(Node("web1", 1, 0.0))


# -- ec2: where and who --------------------------------------------------------------------------

def test_eucarc_and_aws_style_endpoints():
    euca = endpoint("http://cloud.example:8773/services/Eucalyptus")
    assert (euca.host, euca.port, euca.secure, euca.path) == ("cloud.example", 8773, False, "/services/Eucalyptus")
    plain = endpoint("https://ec2.internal/")
    assert (plain.host, plain.port, plain.secure, plain.path) == ("ec2.internal", None, True, "")
    assert endpoint("") is None
    with pytest.raises(ConfigError, match="not an http"):
        endpoint("ftp://x")


def test_credentials_chain_eucarc_then_environment_then_shared_file(tmp_path):
    eucarc = {"EC2_ACCESS_KEY": "EK", "EC2_SECRET_KEY": "ES", "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "AS"}
    assert (credentials(eucarc).key, credentials(eucarc).source) == ("EK", "EC2_ACCESS_KEY (eucarc)")
    aws = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "AS", "AWS_SESSION_TOKEN": "T"}
    assert (credentials(aws).key, credentials(aws).token) == ("AK", "T")
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\naws_access_key_id = FK\naws_secret_access_key = FS\n"
                                                   "[ops]\naws_access_key_id = OK\naws_secret_access_key = OS\n")
    assert credentials({"HOME": str(tmp_path)}).key == "FK"
    assert credentials({"HOME": str(tmp_path), "AWS_PROFILE": "ops"}).key == "OK"
    nothing = {"HOME": str(tmp_path / "none"), "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}
    with pytest.raises(ConfigError, match="no EC2 credentials") as caught:
        credentials(nothing)
    assert "FS" not in str(caught.value)


def test_open_provider_builds_the_eucalyptus_driver_from_eucarc(tmp_path, monkeypatch):
    monkeypatch.setenv("EC2_URL", "http://127.0.0.1:8773/services/Eucalyptus")
    monkeypatch.setenv("EC2_ACCESS_KEY", "EK")
    monkeypatch.setenv("EC2_SECRET_KEY", "ES")
    provider = open_provider(cloud_settings(tmp_path))
    assert type(provider.driver).__name__ == "EucNodeDriver" and provider.driver.path == "/services/Eucalyptus"
    dry = open_provider(cloud_settings(tmp_path, dry_run=True))
    assert type(dry).__name__ == "DryRun" and dry.kind == "ec2"


# -- openstack: clouds.yaml --------------------------------------------------------------------------

def test_clouds_yaml_entry_becomes_keystone_v3_driver_arguments(tmp_path):
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": {"prod": {"region_name": "RegionOne", "auth": {
        "auth_url": "https://keystone.example:5000/v3", "username": "u", "password": "p", "project_name": "web",
        "user_domain_name": "Default"}}}}))
    cloud = load_cloud("prod", {"OS_CLIENT_CONFIG_FILE": str(path), "HOME": str(tmp_path)})
    args, kwargs = driver_args(cloud, "", 30)
    assert args == ("u", "p") and kwargs["ex_force_auth_url"] == "https://keystone.example:5000"
    assert kwargs["ex_force_auth_version"] == "3.x_password" and kwargs["ex_tenant_name"] == "web"
    assert kwargs["ex_force_service_region"] == "RegionOne"
    with pytest.raises(ConfigError, match="has no cloud 'dev'"):
        load_cloud("dev", {"OS_CLIENT_CONFIG_FILE": str(path), "HOME": str(tmp_path)})


# -- command ----------------------------------------------------------------------------------------

def test_command_provider_launches_lists_and_destroys_with_the_operators_commands(tmp_path):
    log = tmp_path / "log"
    script = f"{sys.executable} -c 'import sys; open(\"{log}\", \"a\").write(\" \".join(sys.argv[1:]) + \"\\n\")'"
    conf = AutoscaleSettings(scale_out_command=f"{script} boot {{index}}", scale_in_command=f"{script} stop {{name}}",
                             list_command=f"{sys.executable} -c 'print(\"web1 id-1\\nweb3\")'")
    provider = CommandProvider(conf)
    assert provider.launch(Node("web2", 2, 0.0)).name == "web2"
    provider.destroy(Instance("web2"))
    assert log.read_text() == "boot 2\nstop web2\n"
    assert provider.instances() == [Instance("web1", "id-1", "listed"), Instance("web3", "", "listed")]
    assert CommandProvider(AutoscaleSettings()).instances() is None


def test_command_provider_failures_carry_the_command_and_its_output():
    conf = AutoscaleSettings(scale_out_command=f"{sys.executable} -c 'print(\"quota exceeded\"); exit(3)'",
                             list_command=f"{sys.executable} -c 'print(\"b@d name\")'")
    with pytest.raises(ProviderError, match="exited 3 after .* output: quota exceeded") as caught:
        CommandProvider(conf).launch(Node("web1", 1, 0.0))
    assert not caught.value.retry
    with pytest.raises(ProviderError, match="not NAME"):
        CommandProvider(conf).instances()


def test_tags_mark_cluster_pool_and_node():
    assert (CLUSTER_TAG, POOL_TAG, NODE_TAG) == ("lbsync-cluster", "lbsync-pool", "lbsync-node")
