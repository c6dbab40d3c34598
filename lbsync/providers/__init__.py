"""Where the autoscaler's nodes come from: one small interface, one module per kind.

`open_provider(settings)` picks the module named by `[autoscale] provider` and imports it only
then: the cloud SDK (apache-libcloud, the `lbsync[cloud]` extra) is imported by the autoscaler
alone, never on Serf's hook path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .base import DryRun, Instance, Provider, ProviderError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["DryRun", "Instance", "Provider", "ProviderError", "open_provider"]

MODULES = {"command": "command", "ec2": "ec2", "cloudstack": "cloudstack", "openstack": "openstack"}


def open_provider(settings: Settings) -> Provider:
    """The configured provider, wrapped so a dry run can never reach a mutating call."""
    kind = settings.autoscale.provider
    module = importlib.import_module(f"{__name__}.{MODULES[kind]}")
    provider: Provider = module.make(settings)
    return DryRun(provider) if settings.autoscale.dry_run else provider
