"""OpenStack (Nova): servers from an image and a flavor on a network, with user data and our
tags as server metadata (set in the create call itself); libcloud's OpenStack driver.

Who and where come from clouds.yaml, as every OpenStack client reads it: the entry named by
`[autoscale] cloud`, in OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack/clouds.yaml or
/etc/openstack/clouds.yaml (the first that exists). Password and application-credential auth
(Keystone v3) are understood. The password stays in that file: lbsync never logs or stores it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..autoscale import Node
from ..config import Settings
from ..errors import ConfigError
from .cloud import LibcloudProvider, image_ref, need, size_ref


def make(settings: Settings) -> OpenStackProvider:
    conf = settings.autoscale
    need(conf.image, "image", "openstack")
    need(conf.size, "size", "openstack")
    return OpenStackProvider(settings, load_cloud(conf.cloud, os.environ))


def clouds_files(env: os._Environ | dict) -> list[Path]:
    home = Path(env.get("HOME") or Path.home())
    first = [Path(env["OS_CLIENT_CONFIG_FILE"])] if env.get("OS_CLIENT_CONFIG_FILE") else []
    return first + [Path("clouds.yaml"), home / ".config/openstack/clouds.yaml", Path("/etc/openstack/clouds.yaml")]


def load_cloud(name: str, env: os._Environ | dict) -> dict:
    """The clouds.yaml entry `name`; ConfigError naming the file (never a secret) otherwise."""
    import yaml

    for path in clouds_files(env):
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or type(exc).__name__}") \
                from None
        cloud = (data.get("clouds") or {}).get(name)
        if not isinstance(cloud, dict):
            raise ConfigError(f"{path} has no cloud {name!r} (autoscale.cloud)")
        return cloud
    raise ConfigError(f"no clouds.yaml found for cloud {name!r}: looked in "
                      + ", ".join(str(p) for p in clouds_files(env)))


def driver_args(cloud: dict, region: str, timeout: float) -> tuple[tuple, dict]:
    """libcloud OpenStack_2_NodeDriver arguments for one clouds.yaml entry."""
    auth = cloud.get("auth") or {}
    if not auth.get("auth_url"):
        raise ConfigError("the clouds.yaml entry has no auth.auth_url")
    kwargs: dict = {"ex_force_auth_url": auth["auth_url"].rstrip("/").removesuffix("/v3"),
                    "timeout": int(timeout)}
    if auth.get("application_credential_id"):
        args: tuple = (auth["application_credential_id"], auth.get("application_credential_secret", ""))
        kwargs["ex_force_auth_version"] = "3.x_appcred"
    else:
        args = (auth.get("username", ""), auth.get("password", ""))
        kwargs["ex_force_auth_version"] = "3.x_password"
        kwargs["ex_tenant_name"] = auth.get("project_name", "")
        kwargs["ex_domain_name"] = auth.get("user_domain_name") or auth.get("domain_name") or "Default"
        if auth.get("project_domain_id"):
            kwargs["ex_tenant_domain_id"] = auth["project_domain_id"]
    region = region or cloud.get("region_name", "")
    if region:
        kwargs["ex_force_service_region"] = region
    return args, kwargs


class OpenStackProvider(LibcloudProvider):
    kind = "openstack"

    def __init__(self, settings: Settings, cloud: dict):
        from libcloud.compute.drivers.openstack import OpenStack_2_NodeDriver

        conf = settings.autoscale
        args, kwargs = driver_args(cloud, conf.region, conf.api_timeout)
        super().__init__(settings, OpenStack_2_NodeDriver(*args, **kwargs))

    def create(self, node: Node, user_data: str) -> Any:
        from libcloud.compute.drivers.openstack import OpenStackNetwork, OpenStackSecurityGroup

        conf, driver = self.conf, self.driver
        kwargs: dict = {"ex_userdata": user_data, "ex_metadata": self.tags(node)}
        if conf.network:
            kwargs["networks"] = [OpenStackNetwork(conf.network, conf.network, None, driver)]
        if conf.key_name:
            kwargs["ex_keyname"] = conf.key_name
        if conf.security_groups:
            kwargs["ex_security_groups"] = [OpenStackSecurityGroup(None, None, group, "", driver=driver)
                                            for group in conf.security_groups]
        if conf.zone:
            kwargs["ex_availability_zone"] = conf.zone
        return driver.create_node(name=node.name, size=size_ref(conf.size, driver),
                                  image=image_ref(conf.image, driver), **kwargs)

    def tags_of(self, node: Any) -> dict[str, str]:
        return dict(node.extra.get("metadata") or {})
