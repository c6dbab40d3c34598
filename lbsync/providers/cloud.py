"""What the three clouds share, on apache-libcloud's one compute API: tags that mark our
instances, cloud-init user data, libcloud's errors turned into ProviderError (retry or not).

libcloud is imported here, so only by the autoscaler with a cloud provider configured.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ..autoscale import Node
from ..config import Settings
from ..errors import ConfigError
from .base import CLUSTER_TAG, NODE_TAG, POOL_TAG, Instance, ProviderError
from .userdata import UserData

log = logging.getLogger("lbsync")

T = TypeVar("T")

# Error codes that another try will not fix (EC2's words; CloudStack and OpenStack say it by status).
FATAL_CODES = ("AuthFailure", "UnauthorizedOperation", "InvalidAMIID", "InvalidParameter", "InvalidKeyPair",
               "InvalidGroup", "InvalidSubnet", "InvalidInstanceType", "Unsupported", "InstanceLimitExceeded",
               "InsufficientInstanceCapacity", "OptInRequired", "Blocked", "MissingParameter")
GONE_STATES = ("terminated", "destroyed", "expunging", "deleted")  # listed for a while, but gone
GONE_CODES = ("InvalidInstanceID.NotFound", "does not exist", "Unable to find", "could not be found", "404")


class LibcloudProvider:
    """A libcloud NodeDriver behind the provider interface; subclasses build the driver, the
    create_node arguments and read an instance's tags."""

    kind = "cloud"
    drains_by_query = True  # the user data installs the node's handler for `drain_query`

    def __init__(self, settings: Settings, driver: Any):
        self.settings, self.conf, self.driver = settings, settings.autoscale, driver
        self.userdata = UserData(settings)

    def tags(self, node: Node) -> dict[str, str]:
        return {CLUSTER_TAG: self.conf.cluster_id, POOL_TAG: self.settings.role, NODE_TAG: node.name}

    # -- the interface ---------------------------------------------------------------------------

    def launch(self, node: Node) -> Instance:
        user_data = self.userdata.render(node)
        created = self.api(f"launch {node.name}", lambda: self.create(node, user_data))
        return Instance(node.name, str(created.id), str(created.state), created_time(created))

    def instances(self) -> list[Instance]:
        nodes = self.api("list instances", self.list_nodes)
        return [inst for inst in map(self.instance, nodes) if inst is not None and inst.state not in GONE_STATES]

    def destroy(self, instance: Instance) -> None:
        if not instance.id:
            raise ProviderError(f"{instance.name}: no instance id to destroy", retry=False)
        try:
            self.api(f"destroy {instance.name} ({instance.id})", lambda: self.destroy_node(instance.id))
        except ProviderError as exc:
            if any(code in str(exc) for code in GONE_CODES):
                log.info("autoscale: %s (%s) is already gone: %s", instance.name, instance.id, exc)
                return
            raise

    # -- per cloud -------------------------------------------------------------------------------

    def create(self, node: Node, user_data: str) -> Any:
        raise NotImplementedError

    def list_nodes(self) -> list:
        return self.driver.list_nodes()

    def destroy_node(self, instance_id: str) -> None:
        if not self.driver.destroy_node(node_ref(instance_id, self.driver)):
            raise ProviderError(f"the API did not confirm destroying {instance_id}")

    def tags_of(self, node: Any) -> dict[str, str]:
        return dict(node.extra.get("tags") or {})

    def instance(self, node: Any) -> Instance | None:
        """Ours (our cluster and pool, a node name) or None."""
        tags = self.tags_of(node)
        if tags.get(CLUSTER_TAG) != self.conf.cluster_id or tags.get(POOL_TAG) != self.settings.role:
            return None
        name = tags.get(NODE_TAG, "")
        if not name:
            return None
        return Instance(name, str(node.id), str(node.state), created_time(node))

    # -- errors ----------------------------------------------------------------------------------

    def api(self, what: str, call: Callable[[], T]) -> T:
        """One API call; libcloud's and the network's errors become ProviderError."""
        from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
        from libcloud.common.types import InvalidCredsError, LibcloudError

        try:
            return call()
        except RateLimitReachedError as exc:
            raise ProviderError(f"{what}: rate limited: {_message(exc)}", wait=_retry_after(exc)) from None
        except InvalidCredsError as exc:
            raise ProviderError(f"{what}: credentials refused: {_message(exc)}", retry=False) from None
        except BaseHTTPError as exc:
            code = getattr(exc, "code", 0) or 0
            retry = code >= 500 or code in (408, 409, 429) or not code
            raise ProviderError(f"{what}: HTTP {code}: {_message(exc)}", retry=retry) from None
        except OSError as exc:  # timeouts, refused connections; requests' errors are OSError too
            raise ProviderError(f"{what}: {type(exc).__name__}: {exc}") from None
        except ProviderError:
            raise
        except (LibcloudError, Exception) as exc:  # libcloud raises plain Exception("Code: message") too
            text = _message(exc)
            if _is_network(exc):
                raise ProviderError(f"{what}: {text}") from None
            raise ProviderError(f"{what}: {text}", retry=not any(code in text for code in FATAL_CODES)) from None


def created_time(node: Any) -> float | None:
    """When the instance was made (EC2 launch_time, CloudStack/OpenStack created), as epoch."""
    value = getattr(node, "created_at", None) or node.extra.get("launch_time") or node.extra.get("created")
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def image_ref(image_id: str, driver: Any) -> Any:
    """An image by id, without an API call to list images."""
    from libcloud.compute.base import NodeImage

    return NodeImage(image_id, image_id, driver)


def size_ref(size_id: str, driver: Any) -> Any:
    """An instance type / service offering / flavor by id, without an API call."""
    from libcloud.compute.base import NodeSize

    return NodeSize(size_id, size_id, 0, 0, 0, 0.0, driver)


def node_ref(instance_id: str, driver: Any) -> Any:
    from libcloud.compute.base import Node as LibcloudNode
    from libcloud.compute.types import NodeState

    return LibcloudNode(instance_id, instance_id, NodeState.UNKNOWN, [], [], driver)


def need(value: str, key: str, kind: str) -> str:
    if not value:
        raise ConfigError(f"autoscale.{key} must be set for provider {kind}")
    return value


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    try:
        return None if value is None else max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def _is_network(exc: BaseException) -> bool:
    """requests' connection errors and timeouts, without importing requests for the isinstance."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout", "SSLError"})
