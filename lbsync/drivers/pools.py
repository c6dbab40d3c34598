"""The pools driver: several pools on one LB (`[[pool]]`), HTTP and TCP, through nginx's gates.

Two managed files hold every pool: HTTP pools (upstream + server block each) in `output`, at
http level, and TCP pools in `stream_output`, a main-context `stream {}` file. A file that must
change is rendered (fingerprint header: the unchanged path renders nothing), both are checked
together by `nginx -t` in a throwaway wrapper, installed (nginx -t on the real config, refused:
both put back) and nginx is reloaded, with the reload driver's pending mark.

On the live data plane the HTTP file holds only the structure (Lua balancers, listeners) and
each HTTP pool's members are pushed through its own `Channel`, as the single-pool live driver
does; TCP pools always take the render + reload path (Debian ships no stream Lua module).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..config import PACKAGE_TEMPLATES
from ..errors import LbsyncError
from ..files import read_text
from ..plan import PUSHED, RELOADED, Applied, Outcome, Served
from ..render import fingerprint, managed, replacement
from .base import data_plane
from .live import Channel, Pool, control_dir, log_update, push_or_reload
from .reload import ReloadDriver, server_lines, unified_diff

if TYPE_CHECKING:
    from ..config import Settings
    from ..pools import PoolPlan

log = logging.getLogger("lbsync")

HTTP_TEMPLATE = PACKAGE_TEMPLATES / "lbs_pools.conf.j2"
LIVE_TEMPLATE = PACKAGE_TEMPLATES / "lbs_pools_live.conf.j2"
STREAM_TEMPLATE = PACKAGE_TEMPLATES / "lbs_stream.conf.j2"


def context(plans: tuple[PoolPlan, ...], protocol: str) -> dict:
    """What the pools templates may use: checked pool settings and validated members only."""
    return {"version": __version__, "pools": [
        {"name": p.pool.name, "role": p.pool.follows, "upstream": p.pool.upstream,
         "listen": list(p.pool.listen), "server_name": list(p.pool.server_name), "path": p.pool.path,
         "algorithm": p.pool.algorithm, "hash_key": p.pool.key, "keepalive": p.pool.keepalive,
         "timeout_ms": round(p.pool.timeout * 1000), "backends": list(p.plan.backends),
         "unhealthy": p.plan.down(), "static": sorted(m.name for m in p.plan.backends if m.source == "static")}
        for p in plans if p.pool.protocol == protocol]}


def render_pools(settings: Settings, plans: tuple[PoolPlan, ...]) -> str:
    """Both files as they would be installed, each under a comment naming its path."""
    out = []
    for path, template, protocol in ((settings.output, HTTP_TEMPLATE, "http"),
                                     (settings.stream_output, STREAM_TEMPLATE, "tcp")):
        values = context(plans, protocol)
        out.append(f"# ---- {path}\n" + managed(template, values, fingerprint(template, values)))
    return "".join(out)


class PoolsDriver:
    """Applies every pool of an LB with [[pool]] tables: on the live data plane HTTP pools'
    members are pushed (structure through the gates and a reload), otherwise, and for TCP pools
    always, by render + check + reload."""

    def __init__(self, settings: Settings):
        from ..pools import settings_for

        self.settings = settings
        self.live = data_plane(settings) == "live"
        self.name = "live" if self.live else "reload"
        tcp = any(pool.protocol == "tcp" for pool in settings.pools)
        modules = ((settings.stream_module,) if tcp else ()) + (settings.lua_modules if self.live else ())
        self.files = ReloadDriver(settings, modules=modules)
        self.http, self.stream = Path(settings.output), Path(settings.stream_output)
        self.channels = {pool.name: Channel(settings_for(settings, pool, own=()))
                         for pool in settings.pools if self.live and pool.protocol == "http"}

    def apply(self, plans: tuple[PoolPlan, ...], dry_run: bool) -> Applied:
        live = {self.http: read_text(self.http), self.stream: read_text(self.stream)}
        template, values = (LIVE_TEMPLATE, self._live_context(plans)) if self.live else \
            (HTTP_TEMPLATE, context(plans, "http"))
        wanted = {self.http: replacement(template, values, live[self.http]),
                  self.stream: replacement(STREAM_TEMPLATE, context(plans, "tcp"), live[self.stream])}
        changed = {path: text for path, text in wanted.items() if text is not None}
        pushes = [(self.channels[p.pool.name], Pool.of(p.plan), p.plan) for p in plans if p.pool.name in self.channels]
        if changed:
            diff = "".join(unified_diff(live[path] or "", text, str(path)) for path, text in changed.items())
            if dry_run:
                log.info("dry run: would install %s and reload; nothing written", ", ".join(map(str, changed)))
                return Applied(Outcome.DRY_RUN, diff)
            self._restructure(changed, wanted[self.http] or live[self.http] or "",
                              wanted[self.stream] or live[self.stream] or "", pushes)
            summary = "; ".join(f"{p.pool.name}: {', '.join(m.name for m in p.plan.backends) or 'none'}"
                                for p in plans)
            log.info("updated pools (%s); nginx reloaded", summary)
            return Applied(Outcome.UPDATED, diff, RELOADED)
        if not self.live:
            return self.files.unchanged(sum(len(p.plan.backends) for p in plans), dry_run)
        return self._push(pushes, dry_run)

    def _restructure(self, changed: dict[Path, str], http: str, stream: str, pushes: list) -> None:
        """Pool files first (the new master loads them), both gates, install, reload, confirm."""
        if pushes:
            control_dir(self.settings.control_socket)
        for channel, pool, _ in pushes:
            channel.write(pool)
        self.files.check(http, (self.stream, stream))
        self.files.put_in_place(changed)
        for channel, pool, _ in pushes:
            channel.converge(pool)

    def _push(self, pushes: list, dry_run: bool) -> Applied:
        """Every live pool nginx does not hold yet, pushed (a push nginx refuses: a reload)."""
        retried = not dry_run and self.files.retry_pending()
        stale = [(channel, pool, plan) for channel, pool, plan in pushes if channel.held() != pool.digest]
        if not stale:
            log.info("unchanged (%s); nginx holds every pool%s",
                     ", ".join(f"{plan.structure.upstream_name} {len(pool.backends)}" for _, pool, plan in pushes),
                     "; retried the reload that failed last time" if retried else "")
            return Applied(Outcome.UNCHANGED, action=RELOADED if retried else "")
        diff = "".join(channel.diff(pool) for channel, pool, _ in stale)
        if dry_run:
            log.info("dry run: would push %s; nothing written", ", ".join(c.upstream for c, _, _ in stale))
            return Applied(Outcome.DRY_RUN, diff)
        actions = set()
        for channel, pool, plan in stale:
            how, action = push_or_reload(channel, pool, self.files)
            log_update(plan, how)
            actions.add(action)
        return Applied(Outcome.UPDATED, diff, RELOADED if RELOADED in actions else PUSHED)

    def _live_context(self, plans: tuple[PoolPlan, ...]) -> dict:
        """The live file's inputs: structure only (members are pushed), plus where each pool lives."""
        values = context(plans, "http")
        for pool in values["pools"]:
            del pool["backends"], pool["unhealthy"], pool["static"]
            pool["hash_var"] = f"lbsync_hash_{pool['name'].replace('-', '_')}"
            pool["pool_file"] = str(self.channels[pool["name"]].pool_file)
        return {**values, "lua_dir": self.settings.lua_dir, "control_socket": self.settings.control_socket}

    def served_pools(self) -> dict[str, Served]:
        """pool name -> what nginx serves for it: a live pool read back from nginx, the others'
        servers as their upstream lists them in the installed files."""
        out = {name: channel.served() for name, channel in self.channels.items()}
        pending = " (reload pending)" if self.files.pending.exists() else ""
        for path in (self.http, self.stream):
            try:
                text = read_text(path) or ""
            except LbsyncError as exc:
                return {pool.name: Served(f"file {path}", error=str(exc)) for pool in self.settings.pools}
            for pool in self.settings.pools:
                block = _upstream_block(text, pool.upstream)
                if pool.name not in out and block is not None:
                    out[pool.name] = Served(f"file {path}{pending}", tuple(server_lines(block)))
        for pool in self.settings.pools:
            out.setdefault(pool.name, Served("files", error=f"no upstream {pool.upstream} installed yet"))
        return out


def _upstream_block(text: str, upstream: str) -> str | None:
    start = text.find(f"upstream {upstream} {{")
    if start < 0:
        return None
    end = text.find("\n}", start)
    return text[start:end if end >= 0 else len(text)]
