"""CloudStack: deployVirtualMachine from a template and service offering into a zone (and a
network), with user data; our VMs carry resource tags, listVirtualMachines reads them back;
destroyVirtualMachine with expunge. libcloud's CloudStack driver signs every request (HMAC-SHA1).

Where and who: `endpoint_url` (or CLOUDSTACK_ENDPOINT, e.g. https://cloud.example/client/api)
and the API key pair from CLOUDSTACK_KEY / CLOUDSTACK_SECRET (the environment or the unit's
EnvironmentFile), never from lbsync's config.

deployVirtualMachine takes no tags, so tags follow in createTags; a crash between the two would
leave a VM without them. The display name carries the same marker, so such a VM is still ours.
"""

from __future__ import annotations

import datetime
import os
from typing import Any
from urllib.parse import urlsplit

from ..autoscale import Node
from ..config import Settings
from ..errors import ConfigError
from .base import CLUSTER_TAG, NODE_TAG, POOL_TAG, Instance
from .cloud import LibcloudProvider, image_ref, need, node_ref, size_ref


def make(settings: Settings) -> CloudStackProvider:
    conf = settings.autoscale
    for key in ("image", "size", "zone"):
        need(getattr(conf, key), key, "cloudstack")
    return CloudStackProvider(settings, os.environ)


class CloudStackProvider(LibcloudProvider):
    kind = "cloudstack"

    def __init__(self, settings: Settings, env: os._Environ | dict):
        conf = settings.autoscale
        url = conf.endpoint_url or env.get("CLOUDSTACK_ENDPOINT", "")
        key, secret = env.get("CLOUDSTACK_KEY", ""), env.get("CLOUDSTACK_SECRET", "")
        if not (key and secret):
            raise ConfigError("provider cloudstack needs CLOUDSTACK_KEY and CLOUDSTACK_SECRET in the environment")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"autoscale.endpoint_url (or CLOUDSTACK_ENDPOINT) {url!r} is not an http(s) URL")
        from libcloud.compute.drivers.cloudstack import CloudStackNodeDriver

        driver = CloudStackNodeDriver(key, secret, secure=parts.scheme == "https", host=parts.hostname,
                                      port=parts.port, path=parts.path or "/client/api",
                                      timeout=int(conf.api_timeout))
        super().__init__(settings, driver)

    def marker(self, name: str) -> str:
        return f"{name} lbsync:{self.conf.cluster_id}:{self.settings.role}"

    def create(self, node: Node, user_data: str) -> Any:
        from libcloud.compute.base import NodeLocation
        from libcloud.compute.drivers.cloudstack import CloudStackNetwork

        conf, driver = self.conf, self.driver
        kwargs: dict = {"ex_userdata": user_data, "ex_displayname": self.marker(node.name),
                        "location": NodeLocation(conf.zone, conf.zone, "", driver)}
        if conf.network:
            kwargs["networks"] = [CloudStackNetwork(conf.network, conf.network, "", conf.network, "", conf.zone,
                                                    driver)]
        if conf.key_name:
            kwargs["ex_keyname"] = conf.key_name
        if conf.security_groups:
            kwargs["ex_security_groups"] = list(conf.security_groups)
        created = driver.create_node(name=node.name, size=size_ref(conf.size, driver),
                                     image=image_ref(conf.image, driver), **kwargs)
        driver.ex_create_tags([created.id], "UserVm", self.tags(node))
        created.extra["tags"] = self.tags(node)
        return created

    def list_nodes(self) -> list:
        """listVirtualMachines as CloudStack answers it: libcloud's node drops the display name
        (our marker) and would ask for public addresses we never use."""
        result = self.driver._sync_request("listVirtualMachines", params={"zoneid": self.conf.zone})
        return list(result.get("virtualmachine") or [])

    def destroy_node(self, instance_id: str) -> None:
        self.driver.destroy_node(node_ref(instance_id, self.driver), ex_expunge=True)

    def instance(self, vm: Any) -> Instance | None:
        tags = {str(t.get("key")): str(t.get("value")) for t in vm.get("tags") or []}
        if CLUSTER_TAG not in tags:  # launched, then the autoscaler died before createTags
            name, _, mark = str(vm.get("displayname") or "").partition(" ")
            if mark == f"lbsync:{self.conf.cluster_id}:{self.settings.role}":
                tags = {CLUSTER_TAG: self.conf.cluster_id, POOL_TAG: self.settings.role, NODE_TAG: name}
        if tags.get(CLUSTER_TAG) != self.conf.cluster_id or tags.get(POOL_TAG) != self.settings.role:
            return None
        if not tags.get(NODE_TAG):
            return None
        created = str(vm.get("created") or "")
        when = None
        if created:
            try:  # 2026-01-01T00:00:00+0000
                when = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").timestamp()
            except ValueError:
                pass
        return Instance(tags[NODE_TAG], str(vm.get("id", "")), str(vm.get("state", "")).lower(), when)
