"""Contract tests for the cloudstack and openstack providers: libcloud's real drivers over HTTP
against small stateful fakes on loopback, written from the APIs' documentation. They check the
requests lbsync makes (command names, parameters, user data, tags/metadata, CloudStack's HMAC-SHA1
signature, Keystone v3 auth) and that launch -> list ours -> destroy hangs together; they are
not the clouds themselves (no scheduler, no real boot).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import yaml

from lbsync.autoscale import Node
from lbsync.config import AutoscaleSettings, Settings
from lbsync.providers import ProviderError, open_provider
from lbsync.providers.base import with_retries

pytestmark = pytest.mark.integration
import libcloud  # noqa: E402,F401  (lbsync[cloud]; the test extra installs it: missing is a failure)

KEY, SECRET = "cs-api-key", "cs-secret-key"


class Fake:
    """A ThreadingHTTPServer on 127.0.0.1 with a handler calling `self.handle(method, path, query, body)`."""

    def __init__(self):
        fake = self
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.fail_next: list[int] = []  # HTTP statuses to answer the next requests with

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                query = dict(parse_qsl(parts.query, keep_blank_values=True))
                fake.requests.append((self.command, parts.path, query, body))
                if fake.fail_next:
                    status, reply, headers = fake.fail_next.pop(0), {"error": "slow down"}, {}
                else:
                    status, reply, headers = fake.handle(self.command, parts.path, query, body, self.headers)
                data = b"" if reply is None else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# -- CloudStack ------------------------------------------------------------------------------------

def cloudstack_signature(params: dict, secret: str) -> str:
    """As CloudStack documents it: parameters sorted by name, values URL-encoded, the whole string
    lower-cased, HMAC-SHA1 with the secret key, base64."""
    pairs = sorted((k.lower(), v) for k, v in params.items())
    text = "&".join(f"{quote(k, safe='[]')}={quote(v, safe='[]*')}" for k, v in pairs).lower().replace("+", "%20")
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()).decode()


class FakeCloudStack(Fake):
    def __init__(self):
        super().__init__()
        self.vms: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}

    def job(self, result: dict) -> str:
        job = str(uuid.uuid4())
        self.jobs[job] = result
        return job

    def handle(self, method, path, q, body, headers):
        signature = q.pop("signature", "")
        if q.get("apiKey") != KEY or signature != cloudstack_signature(q, SECRET):
            return 401, {"errorresponse": {"errorcode": 401, "errortext": "unable to verify user credentials"}}, {}
        command = q["command"]
        answer = lambda body: (200, {command.lower() + "response": body}, {})
        if command == "deployVirtualMachine":
            vm = {"id": str(uuid.uuid4()), "name": q["name"], "displayname": q.get("displayname", ""),
                  "state": "Running", "nic": [{"ipaddress": "10.1.1.5", "networkid": q.get("networkids", "")}],
                  "zoneid": q["zoneid"], "templateid": q["templateid"], "serviceofferingid": q["serviceofferingid"],
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime()), "tags": [],
                  "userdata": q.get("userdata", ""), "keypair": q.get("keypair", "")}
            self.vms[vm["id"]] = vm
            return answer({"id": vm["id"], "jobid": self.job({"virtualmachine": vm})})
        if command == "createTags":
            for vm_id in q["resourceids"].split(","):
                i = 0
                while f"tags[{i}].key" in q:
                    self.vms[vm_id]["tags"].append({"key": q[f"tags[{i}].key"], "value": q[f"tags[{i}].value"],
                                                    "resourcetype": "UserVm"})
                    i += 1
            return answer({"jobid": self.job({"success": True})})
        if command == "listVirtualMachines":
            vms = [vm for vm in self.vms.values() if q.get("zoneid") in (None, vm["zoneid"])]
            return answer({"count": len(vms), "virtualmachine": vms} if vms else {})
        if command == "destroyVirtualMachine":
            if q["id"] not in self.vms:
                return 431, {command.lower() + "response": {"errorcode": 431,
                                                            "errortext": f"Unable to find VM {q['id']}"}}, {}
            vm = self.vms.pop(q["id"])
            return answer({"jobid": self.job({"virtualmachine": {**vm, "state": "Destroyed"}})})
        if command == "queryAsyncJobResult":
            return answer({"jobid": q["jobid"], "jobstatus": 1, "jobresult": self.jobs[q["jobid"]]})
        if command in ("listPublicIpAddresses", "listPortForwardingRules", "listIpForwardingRules"):
            return answer({})  # libcloud's list_nodes asks for these too; we have none
        return 432, {"errorresponse": {"errorcode": 432, "errortext": f"unknown command {command}"}}, {}


@pytest.fixture
def secrets(tmp_path):
    path = tmp_path / "secrets"
    path.mkdir()
    (path / "serf.key").write_text("c2VjcmV0c2VjcmV0c2VjcmV0\n")
    (path / "rpc.token").write_text("token\n")
    return path


def settings(tmp_path, secrets, **conf) -> Settings:
    base = {"cluster_id": "prod", "join": ("10.0.0.10",), "image": "tmpl-1", "size": "offering-1",
            "secrets_dir": str(secrets), "api_retries": 2, "key_name": "ops"}
    return Settings(state_dir=str(tmp_path / "state"), autoscale=AutoscaleSettings(**{**base, **conf}))


@pytest.fixture
def cloudstack(monkeypatch):
    fake = FakeCloudStack()
    monkeypatch.setenv("CLOUDSTACK_KEY", KEY)
    monkeypatch.setenv("CLOUDSTACK_SECRET", SECRET)
    yield fake
    fake.close()


def test_contract_cloudstack_deploy_tag_list_destroy_signed(cloudstack, tmp_path, secrets):
    provider = open_provider(settings(tmp_path, secrets, provider="cloudstack", zone="zone-1", network="net-1",
                                      endpoint_url=f"{cloudstack.url}/client/api"))
    provider.driver.connection.poll_interval = 0.05
    launched = provider.launch(Node("web1", 1, time.time()))
    deploy = next(q for _, _, q, _ in cloudstack.requests if q.get("command") == "deployVirtualMachine")
    assert (deploy["zoneid"], deploy["templateid"], deploy["serviceofferingid"], deploy["networkids"],
            deploy["keypair"], deploy["name"]) == ("zone-1", "tmpl-1", "offering-1", "net-1", "ops", "web1")
    assert base64.b64decode(deploy["userdata"]).decode().startswith("#cloud-config")
    assert deploy["displayname"] == "web1 lbsync:prod:web"

    ours = provider.instances()
    assert [(i.name, i.id) for i in ours] == [("web1", launched.id)] and ours[0].created is not None
    tags = {t["key"]: t["value"] for t in cloudstack.vms[launched.id]["tags"]}
    assert tags == {"lbsync-cluster": "prod", "lbsync-pool": "web", "lbsync-node": "web1"}

    provider.destroy(ours[0])
    assert provider.instances() == [] and cloudstack.vms == {}
    destroy = next(q for _, _, q, _ in cloudstack.requests if q.get("command") == "destroyVirtualMachine")
    assert destroy["expunge"] == "True"
    provider.destroy(ours[0])  # already gone: CloudStack's 431 "Unable to find" is fine


def test_contract_cloudstack_vm_untagged_by_a_crash_is_still_ours_and_bad_keys_are_not_retried(
        cloudstack, tmp_path, secrets, monkeypatch):
    provider = open_provider(settings(tmp_path, secrets, provider="cloudstack", zone="zone-1",
                                      endpoint_url=f"{cloudstack.url}/client/api"))
    provider.driver.connection.poll_interval = 0.05
    launched = provider.launch(Node("web2", 2, time.time()))
    cloudstack.vms[launched.id]["tags"] = []  # as if the autoscaler died between deploy and createTags
    assert [i.name for i in provider.instances()] == ["web2"]
    monkeypatch.setenv("CLOUDSTACK_SECRET", "wrong")
    wrong = open_provider(settings(tmp_path, secrets, provider="cloudstack", zone="zone-1",
                                   endpoint_url=f"{cloudstack.url}/client/api"))
    with pytest.raises(ProviderError) as caught:
        with_retries("listing", wrong.instances, 3, lambda s: None)
    assert not caught.value.retry and "credentials" in str(caught.value) and "wrong" not in str(caught.value)


def test_contract_cloudstack_throttling_is_retried_with_the_providers_message(cloudstack, tmp_path, secrets, caplog):
    provider = open_provider(settings(tmp_path, secrets, provider="cloudstack", zone="zone-1",
                                      endpoint_url=f"{cloudstack.url}/client/api"))
    cloudstack.fail_next = [503]
    waits: list[float] = []
    assert with_retries("listing instances", provider.instances, 2, waits.append) == []
    assert len(waits) == 1 and "listing instances failed (try 1 of 3)" in caplog.text


# -- OpenStack -------------------------------------------------------------------------------------

class FakeOpenStack(Fake):
    TOKEN = "tok-123"

    def __init__(self):
        super().__init__()
        self.servers: dict[str, dict] = {}

    def handle(self, method, path, q, body, headers):
        if path == "/v3/auth/tokens" and method == "POST":
            auth = json.loads(body)["auth"]
            user = auth["identity"]["password"]["user"]
            if (user["name"], user["password"], user["domain"]["name"]) != ("ops", "pw", "Default"):
                return 401, {"error": {"code": 401, "message": "The request requires authentication."}}, {}
            assert auth["scope"]["project"]["name"] == "web"
            catalog = [{"type": "compute", "name": "nova", "endpoints": [
                {"interface": "public", "region": "RegionOne", "region_id": "RegionOne",
                 "url": f"{self.url}/compute/v2.1"}]}]
            token = {"expires_at": "2099-01-01T00:00:00.000000Z", "catalog": catalog,
                     "project": {"id": "p1", "name": "web", "domain": {"id": "default", "name": "Default"}},
                     "user": {"id": "u1", "name": "ops", "domain": {"id": "default", "name": "Default"}},
                     "roles": [{"id": "r1", "name": "member"}], "methods": ["password"]}
            return 201, {"token": token}, {"X-Subject-Token": self.TOKEN}
        if headers.get("X-Auth-Token") != self.TOKEN:
            return 401, {"error": {"message": "no token"}}, {}
        prefix = "/compute/v2.1/servers"
        if path == prefix and method == "POST":
            server = json.loads(body)["server"]
            sid = str(uuid.uuid4())
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.servers[sid] = {"id": sid, "name": server["name"], "status": "BUILD", "addresses": {},
                                 "hostId": "", "tenant_id": "p1", "user_id": "u1", "metadata": server["metadata"],
                                 "created": now, "updated": now, "image": {"id": server["imageRef"]},
                                 "flavor": {"id": server["flavorRef"]}, "key_name": server.get("key_name"),
                                 "links": [{"rel": "self", "href": f"{self.url}{prefix}/{sid}"}],
                                 "request": server}
            return 202, {"server": {"id": sid, "adminPass": "x"}}, {}
        if path == f"{prefix}/detail":
            return 200, {"servers": list(self.servers.values())}, {}
        sid = path.rsplit("/", 1)[-1]
        if sid not in self.servers:
            return 404, {"itemNotFound": {"code": 404, "message": f"Instance {sid} could not be found."}}, {}
        if method == "DELETE":
            del self.servers[sid]
            return 204, None, {}
        return 200, {"server": self.servers[sid]}, {}


@pytest.fixture
def openstack(tmp_path, monkeypatch):
    fake = FakeOpenStack()
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump({"clouds": {"lab": {"region_name": "RegionOne", "auth": {
        "auth_url": f"{fake.url}/v3", "username": "ops", "password": "pw", "project_name": "web",
        "user_domain_name": "Default"}}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    yield fake
    fake.close()


def test_contract_openstack_keystone_v3_create_with_metadata_list_delete(openstack, tmp_path, secrets):
    provider = open_provider(settings(tmp_path, secrets, provider="openstack", cloud="lab", image="img-1",
                                      size="flavor-1", network="net-1", security_groups=("web",)))
    launched = provider.launch(Node("web3", 3, time.time()))
    request = openstack.servers[launched.id]["request"]
    assert (request["imageRef"], request["flavorRef"], request["networks"], request["key_name"]) == \
        ("img-1", "flavor-1", [{"uuid": "net-1"}], "ops")
    assert request["security_groups"] == [{"name": "web"}]
    assert base64.b64decode(request["user_data"]).decode().startswith("#cloud-config")
    assert request["metadata"] == {"lbsync-cluster": "prod", "lbsync-pool": "web", "lbsync-node": "web3"}
    ours = provider.instances()
    assert [(i.name, i.id) for i in ours] == [("web3", launched.id)]
    provider.destroy(ours[0])
    assert provider.instances() == [] and openstack.servers == {}
    provider.destroy(ours[0])  # 404 "could not be found": already gone
