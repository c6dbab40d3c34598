"""EC2 and EC2-compatible clouds (Eucalyptus): RunInstances with tags and user data,
DescribeInstances filtered by our tags, TerminateInstances; libcloud's EC2 drivers.

The endpoint: `endpoint_url`, else eucarc's EC2_URL, else AWS in `region`. A URL with a path
(Eucalyptus: http://host:8773/services/Eucalyptus) gets libcloud's EucNodeDriver, which signs
with SigV2 as Eucalyptus expects; otherwise EC2NodeDriver (SigV4) at that host.

Credentials, first found wins: eucarc's EC2_ACCESS_KEY/EC2_SECRET_KEY; AWS_ACCESS_KEY_ID/
AWS_SECRET_ACCESS_KEY (+AWS_SESSION_TOKEN); the shared credentials file (AWS_SHARED_CREDENTIALS_FILE
or ~/.aws/credentials, profile AWS_PROFILE or default); the instance's role through IMDSv2.
None of them is ever logged or written to the state file.
"""

from __future__ import annotations

import configparser
import json
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..autoscale import Node
from ..config import Settings
from ..errors import ConfigError
from .cloud import LibcloudProvider, image_ref, need, size_ref

IMDS = "http://169.254.169.254"  # AWS_EC2_METADATA_SERVICE_ENDPOINT overrides it (as for AWS's SDKs)


@dataclass(frozen=True)
class Credentials:
    key: str
    secret: str
    token: str = ""
    source: str = ""  # where they came from, for the log (never the values)
    expires: float | None = None


@dataclass(frozen=True)
class Endpoint:
    host: str | None
    port: int | None
    secure: bool
    path: str  # "" for AWS-style endpoints; /services/Eucalyptus and the like for Eucalyptus


def make(settings: Settings) -> EC2Provider:
    conf = settings.autoscale
    need(conf.image, "image", "ec2")
    need(conf.size, "size", "ec2")
    return EC2Provider(settings, env=os.environ)


def endpoint(url: str) -> Endpoint | None:
    """`endpoint_url`/EC2_URL parsed; None for AWS itself (no URL)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"autoscale.endpoint_url (or EC2_URL) {url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    return Endpoint(parts.hostname, parts.port, parts.scheme == "https", path)


def credentials(env: os._Environ | dict, home: Path | None = None) -> Credentials:
    """The first credentials of the chain (see the module docstring); ConfigError when none."""
    if env.get("EC2_ACCESS_KEY") and env.get("EC2_SECRET_KEY"):
        return Credentials(env["EC2_ACCESS_KEY"], env["EC2_SECRET_KEY"], source="EC2_ACCESS_KEY (eucarc)")
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN", ""),
                           source="AWS_ACCESS_KEY_ID")
    home = home or Path(env.get("HOME") or Path.home())
    path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials")
    profile = env.get("AWS_PROFILE") or "default"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc.__class__.__name__}") from None
    if parser.has_option(profile, "aws_access_key_id") and parser.has_option(profile, "aws_secret_access_key"):
        return Credentials(parser[profile]["aws_access_key_id"], parser[profile]["aws_secret_access_key"],
                           parser[profile].get("aws_session_token", ""), source=f"{path} [{profile}]")
    found = instance_role(env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS)
    if found is None:
        raise ConfigError("no EC2 credentials: set EC2_ACCESS_KEY/EC2_SECRET_KEY (eucarc) or AWS_ACCESS_KEY_ID/"
                          f"AWS_SECRET_ACCESS_KEY, write {path}, or run on an instance with a role")
    return found


def instance_role(base: str, timeout: float = 1.0) -> Credentials | None:
    """The instance role's temporary credentials through IMDSv2; None off EC2 (or no role)."""
    def get(path: str, token: str) -> str:
        request = urllib.request.Request(base.rstrip("/") + path, headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - fixed http URL
            return response.read().decode()
    try:
        put = urllib.request.Request(base.rstrip("/") + "/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        with urllib.request.urlopen(put, timeout=timeout) as response:  # noqa: S310
            token = response.read().decode()
        role = get("/latest/meta-data/iam/security-credentials/", token).split()[0]
        data = json.loads(get(f"/latest/meta-data/iam/security-credentials/{role}", token))
        expires = data.get("Expiration", "")
        when = time.mktime(time.strptime(expires[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone if expires else None
        return Credentials(data["AccessKeyId"], data["SecretAccessKey"], data.get("Token", ""),
                           source=f"instance role {role}", expires=when)
    except (OSError, ValueError, KeyError, IndexError):
        return None


class EC2Provider(LibcloudProvider):
    kind = "ec2"

    def __init__(self, settings: Settings, env: os._Environ | dict):
        self.env = env
        self.conf = conf = settings.autoscale
        self.where = endpoint(conf.endpoint_url or env.get("EC2_URL", ""))
        self.region = conf.region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
        self.creds = credentials(env)
        super().__init__(settings, self.build_driver())

    def build_driver(self) -> Any:
        from libcloud.compute.drivers.ec2 import EC2NodeDriver, EucNodeDriver

        creds, where, timeout = self.creds, self.where, int(self.conf.api_timeout)
        if where is not None and where.path:
            driver = EucNodeDriver(creds.key, creds.secret, secure=where.secure, host=where.host, port=where.port,
                                   path=where.path)
            driver.connection.timeout = timeout  # EucNodeDriver takes no timeout argument
            return driver
        extra: dict = {"token": creds.token} if creds.token else {}
        if where is not None:
            extra |= {"host": where.host, "port": where.port, "secure": where.secure}
        try:
            return EC2NodeDriver(creds.key, creds.secret, region=self.region, timeout=timeout, **extra)
        except ValueError as exc:  # libcloud knows AWS's regions only
            raise ConfigError(f"autoscale.region: {exc}") from None

    def _fresh(self) -> None:
        """Temporary credentials (an instance role) are renewed a few minutes before they expire."""
        if self.creds.expires is not None and time.time() > self.creds.expires - 300:
            self.creds = credentials(self.env)
            self.driver = self.build_driver()

    def create(self, node: Node, user_data: str) -> Any:
        self._fresh()
        conf = self.conf
        image, size = image_ref(conf.image, self.driver), size_ref(conf.size, self.driver)
        kwargs: dict = {"ex_userdata": user_data, "ex_metadata": self.tags(node),
                        "ex_clienttoken": f"{conf.cluster_id}-{node.name}-{int(node.since)}"[:64]}
        if conf.key_name:
            kwargs["ex_keyname"] = conf.key_name
        if conf.network:
            from libcloud.compute.drivers.ec2 import EC2NetworkSubnet

            kwargs["ex_subnet"] = EC2NetworkSubnet(conf.network, conf.network, "available")
            if conf.security_groups:
                kwargs["ex_security_group_ids"] = list(conf.security_groups)
        elif conf.security_groups:
            kwargs["ex_security_groups"] = list(conf.security_groups)
        if conf.zone:
            from libcloud.compute.drivers.ec2 import ExEC2AvailabilityZone

            zone = ExEC2AvailabilityZone(conf.zone, "available", self.region)
            kwargs["location"] = type("Zone", (), {"availability_zone": zone})()
        return self.driver.create_node(name=node.name, image=image, size=size, **kwargs)

    def list_nodes(self) -> list:
        from .base import CLUSTER_TAG

        self._fresh()
        return self.driver.list_nodes(ex_filters={f"tag:{CLUSTER_TAG}": self.conf.cluster_id})

    def destroy_node(self, instance_id: str) -> None:
        self._fresh()
        super().destroy_node(instance_id)
