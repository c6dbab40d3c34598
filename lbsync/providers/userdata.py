"""The user data a new instance boots with: cloud-init that makes it join by itself.

Rendered with Jinja2 (StrictUndefined) from `autoscale.user_data_template` or the package's
templates/cloud-init.yaml.j2: install serf and lbsync (`install_source`: a pip requirement or a
wheel URL), `lbsync install --role web` with the node's name and the LB to join, the cluster's
secrets (from `secrets_dir`, as every web node gets them), a Serf handler for `drain_query`,
then start the agent. The Serf node name is the instance's lbsync-node tag, so scale-in finds it.

User data is readable from inside the instance (its metadata service) and by whoever may read
the instance's attributes in the cloud: it carries the gossip key and RPC token because every
web node needs them anyway; it never reaches lbsync's logs or state file.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..autoscale import Node
from ..config import PACKAGE_TEMPLATES, Settings
from ..errors import ConfigError

DEFAULT_TEMPLATE = PACKAGE_TEMPLATES / "cloud-init.yaml.j2"
MAX_BYTES = 16384  # EC2's limit for user data (before base64); CloudStack's default is smaller for GET


class UserData:
    def __init__(self, settings: Settings):
        self.settings, self.conf = settings, settings.autoscale
        self.path = Path(self.conf.user_data_template or DEFAULT_TEMPLATE)

    def secrets(self) -> dict[str, str]:
        """serf.key and rpc.token from secrets_dir (what `lbsync install` made on the LB)."""
        found = {}
        for name in ("serf.key", "rpc.token"):
            path = Path(self.conf.secrets_dir) / name
            try:
                found[name] = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"autoscale.secrets_dir: cannot read {path}: {exc.strerror or exc}") from None
        return found

    def context(self, node: Node) -> dict:
        conf, secrets = self.conf, self.secrets()
        return {"node_name": node.name, "index": node.index, "join": list(conf.join), "role": self.settings.role,
                "port": conf.node_port, "install_source": conf.install_source, "drain_query": conf.drain_query,
                "cluster_id": conf.cluster_id, "encrypt_key": secrets["serf.key"], "rpc_auth": secrets["rpc.token"],
                "load_query": self.settings.agent.load_query}

    def render(self, node: Node) -> str:
        import jinja2

        try:
            source = self.path.read_text()
        except OSError as exc:
            raise ConfigError(f"autoscale.user_data_template {self.path}: {exc.strerror or exc}") from None
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
        env.filters["sh"] = lambda value: shlex.quote(str(value))
        try:
            text = env.from_string(source).render(self.context(node))
        except jinja2.TemplateError as exc:
            raise ConfigError(f"autoscale.user_data_template {self.path}: {exc}") from None
        if len(text.encode()) > MAX_BYTES:
            raise ConfigError(f"user data from {self.path} is {len(text.encode())} bytes; clouds take {MAX_BYTES}")
        return text
