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

import os
from typing import Any
from urllib.parse import urlsplit

from ..autoscale import Node
from ..config import Settings
from ..errors import ConfigError
from .base import CLUSTER_TAG, NODE_TAG, POOL_TAG
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
        from libcloud.compute.base import NodeLocation

        return self.driver.list_nodes(location=NodeLocation(self.conf.zone, self.conf.zone, "", self.driver))

    def destroy_node(self, instance_id: str) -> None:
        self.driver.destroy_node(node_ref(instance_id, self.driver), ex_expunge=True)

    def tags_of(self, node: Any) -> dict[str, str]:
        tags = dict(node.extra.get("tags") or {})
        if CLUSTER_TAG not in tags:  # launched, then the autoscaler died before createTags
            name, _, mark = str(node.extra.get("displayname") or "").partition(" ")
            if mark == f"lbsync:{self.conf.cluster_id}:{self.settings.role}":
                tags = {CLUSTER_TAG: self.conf.cluster_id, POOL_TAG: self.settings.role, NODE_TAG: name}
        return tags
