"""`lbsync config`: the effective settings, each with where it came from; secrets masked.

What an operator runs when a setting does not do what they expect: the answer is the value in
force and the file line, environment variable or flag that set it (or "default").
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from .config import POOLS, SECTIONS, Settings
from .layers import load_with_sources, where

SECRETS = {"rpc_auth", "agent.rpc_auth", "agent.encrypt_key"}


def show_config(settings: Settings, args: argparse.Namespace) -> int:
    settings, sources = load_with_sources(args.config, overrides=args.overrides, flags=args.flags)
    for key, value in flatten(settings):
        shown = "(set, hidden)" if key in SECRETS and value else json.dumps(value)
        source = sources.get(key) or sources.get(key.rpartition(".")[0])  # a pool's key: its table's
        print(f"{key} = {shown}  # {where(source, key)}")
    return 0


def flatten(settings: Settings) -> list[tuple[str, object]]:
    """(dotted key, value) for every setting, tables after the top level, then each pool, in
    declaration order; a pool's keys read `pool "NAME".KEY`, as its errors name them."""
    objects = [("", settings), *((table, getattr(settings, table)) for table in SECTIONS),
               *((f'{POOLS} "{pool.name}"', pool) for pool in settings.pools)]
    rows: list[tuple[str, object]] = []
    for table, obj in objects:
        for field in dataclasses.fields(obj):
            if field.name not in SECTIONS and field.name != "pools":
                value = getattr(obj, field.name)
                rows.append((f"{table}.{field.name}" if table else field.name,
                             list(value) if isinstance(value, tuple) else value))
    return rows
