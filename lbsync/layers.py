"""Build Settings from its layers: defaults <- TOML file <- lbsync.d/*.toml <- LBSYNC_* environment
<- flags.

`lbsync install` owns lbsync.toml; an operator's own settings go in lbsync.d/ beside it (read in
name order), which install never touches.

Unknown keys are an error (a typo must never silently fall back to a default on a load
balancer). Environment variables are `LBSYNC_<KEY>` for top-level keys and
`LBSYNC_<TABLE>_<KEY>` for the tables; list values in the environment are comma-separated.
Every value remembers where it came from, so an error names the file, the variable or the flag
that set it, once. `[[pool]]` tables come from files only, and every file's pools are added to
the ones before (one file per pool in lbsync.d/ works).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import POOLS, SECTIONS, PoolSettings, SettingError, Settings, build, check_pools, fields_of
from .errors import ConfigError
from .rules import IDENTIFIER_RE

DEFAULT_CONFIG = Path("/etc/lbsync/lbsync.toml")


def config_path(path: str | os.PathLike | None, env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file to read, and whether it was asked for (then it must exist)."""
    explicit = path or env.get("LBSYNC_CONFIG")
    return (Path(explicit), True) if explicit else (DEFAULT_CONFIG, False)


def load(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from the layers. `overrides` uses dotted keys for tables ("agent.port"); `flags`
    names the flag that set each override (default: `--set KEY`)."""
    return load_with_sources(path, env, overrides, flags)[0]


def load_with_sources(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Settings, and where each key that is not a default came from (for `lbsync config`)."""
    env = os.environ if env is None else env
    file, required = config_path(path, env)
    values: dict = {}
    sources: dict[str, str] = {}
    for toml in (file, *sorted(file.with_name("lbsync.d").glob("*.toml"))):
        _merge(values, sources, _read_toml(toml, required and toml == file), f"file {toml}")
    _merge(values, sources, _from_env(env), "environment")
    _merge(values, sources, _nest(overrides or {}), "flag")
    for key in list(sources):
        if sources[key] == "environment":
            sources[key] = f"environment variable {_env_name(key)}"
        elif sources[key] == "flag":
            sources[key] = (flags or {}).get(key) or f"flag --set {key}"
    try:
        return _build(values), sources
    except SettingError as exc:
        source = sources.get(exc.key) or sources.get(exc.key.rpartition(".")[0])  # a pool's key: its table
        raise ConfigError(f"{exc.key} (from {where(source, exc.key)}): {exc.reason}") from None


def where(source: str | None, key: str) -> str:
    """A source as an operator finds it: a file with the line that sets `key`, a variable, a flag."""
    if source is None:
        return "default"
    if not source.startswith("file "):
        return source
    path = Path(source[len("file "):])
    table, _, name = key.rpartition(".")
    if table.startswith(POOLS + " "):
        line, header = _pool_line_of(path, table[len(POOLS) + 1:].strip('"'), name)
        return f"{path}:{line}" if line else f"default (the pool's table: {path}:{header or '?'})"
    return f"{path}:{_line_of(path, table, name) or '?'}"


def _line_of(path: Path, table: str, key: str) -> int | None:
    """The line of `key = ...` inside `[table]` (top level when empty); TOML parsers keep none."""
    current = ""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped.strip("[] ")
        elif current == table and stripped.split("=", 1)[0].strip().strip('"') == key:
            return number
    return None


def _pool_line_of(path: Path, pool: str, key: str) -> tuple[int | None, int | None]:
    """The lines of `key = ...` and of the header of the `[[pool]]` whose name is `pool`."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None, None
    blocks: list[dict[str, int]] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("["):
            blocks.append({"[": number} if stripped.replace(" ", "") == f"[[{POOLS}]]" else {})
        elif blocks and blocks[-1] and "=" in stripped:
            name, _, value = stripped.partition("=")
            blocks[-1][name.strip().strip('"')] = number
            if name.strip() == "name":
                blocks[-1]["=" + value.split("#")[0].strip().strip('"\'')] = number
    for block in reversed(blocks):  # two pools of one name: the second is the mistake
        if "=" + pool in block:
            return block.get(key), block["["]
    return None, None


def load_text(text: str) -> Settings:
    """Settings from TOML text alone (no environment, no flags): how `install` checks what it writes."""
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"generated config: {exc}") from None
    try:
        return _build(values)
    except SettingError as exc:
        raise ConfigError(f"{exc.key}: {exc.reason}") from None


def _read_toml(path: Path, required: bool) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except (OSError, ValueError) as exc:  # ValueError: tomllib's TOMLDecodeError, or not UTF-8
        raise ConfigError(f"config file {path}: {exc}") from None


def _from_env(env: Mapping[str, str]) -> dict:
    """LBSYNC_* variables as a nested dict of strings (parsed later like the other layers)."""
    out: dict = {}
    for name, value in env.items():
        if not name.startswith("LBSYNC_") or name == "LBSYNC_CONFIG":
            continue
        key = name[len("LBSYNC_"):].lower()
        table = next((t for t in SECTIONS if key.startswith(t + "_")), None)
        if table and key[len(table) + 1:] in fields_of(SECTIONS[table]):
            out.setdefault(table, {})[key[len(table) + 1:]] = value
        else:
            out[key] = value
    return out


def _env_name(key: str) -> str:
    return "LBSYNC_" + key.replace(".", "_").upper()


def _nest(overrides: Mapping[str, Any]) -> dict:
    out: dict = {}
    for key, value in overrides.items():
        if value is None:
            continue
        table, _, sub = key.rpartition(".")
        (out.setdefault(table, {}) if table else out)[sub] = value
    return out


def _merge(base: dict, sources: dict[str, str], top: dict, source: str, prefix: str = "") -> None:
    """Lay `top` over `base`, noting `source` for every dotted key it sets."""
    for key, value in top.items():
        if key == POOLS and not prefix:
            if not isinstance(value, list) or not all(isinstance(pool, dict) for pool in value):
                raise ConfigError(f"{source}: pools are [[pool]] tables in a config file")
            base.setdefault(POOLS, [])
            for pool in value:
                sources[_pool_key(pool, len(base[POOLS]))] = source
                base[POOLS].append(pool)
        elif isinstance(value, dict) and key in SECTIONS and not prefix:
            base.setdefault(key, {})
            if not isinstance(base[key], dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
            _merge(base[key], sources, value, source, f"{key}.")
        else:
            base[key] = value
            sources[prefix + key] = source


def _build(values: dict) -> Settings:
    tables: dict[str, Any] = {}
    for table, cls in SECTIONS.items():
        raw = values.pop(table, {})
        if not isinstance(raw, dict):
            raise SettingError(table, "must be a table")
        tables[table] = build(cls, raw)
    tables["pools"] = _pools(values.pop(POOLS, []))
    return build(Settings, values, tables)


def _pools(raws: list[dict]) -> tuple[PoolSettings, ...]:
    """Each [[pool]] built on its own, errors keyed `pool "NAME".KEY` (or `pool[INDEX]` when it
    has no usable name), so the message leads to the table that holds the mistake."""
    pools = []
    for index, raw in enumerate(raws):
        label = _pool_key(raw, index)
        if "name" not in raw:
            raise SettingError(f"{label}.name", "is required")
        try:
            pools.append(build(PoolSettings, raw))
        except SettingError as exc:
            raise SettingError(f"{label}.{exc.key.partition('.')[2]}", exc.reason) from None
    try:
        check_pools(tuple(pools))
    except SettingError as exc:
        index = int(exc.key[len(POOLS) + 1:].partition("]")[0])
        raise SettingError(f"{_pool_key(raws[index], index)}.{exc.key.partition('.')[2]}", exc.reason) from None
    return tuple(pools)


def _pool_key(raw: dict, index: int) -> str:
    name = raw.get("name")
    named = isinstance(name, str) and IDENTIFIER_RE.fullmatch(name)
    return f'{POOLS} "{name}"' if named else f"{POOLS}[{index}]"
