"""The pools driver: several pools on one LB (`[[pool]]`), HTTP and TCP, through nginx's gates.

Two managed files hold every pool: HTTP pools (upstream + server block each) in `output`, at
http level, and TCP pools in `stream_output`, a main-context `stream {}` file. Both are rendered
(fingerprint header: the unchanged path renders nothing), checked together by `nginx -t` in a
throwaway wrapper, installed (nginx -t on the real config, refused: both put back) and nginx is
reloaded, with the reload driver's pending mark. Every pool change costs a reload here; HTTP
pools on the live data plane are a later step (Debian ships no stream Lua module, so TCP pools
stay on this path anyway).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..config import PACKAGE_TEMPLATES
from ..errors import LbsyncError
from ..files import read_text
from ..plan import RELOADED, Applied, Outcome, Served
from ..render import fingerprint, managed, replacement
from .reload import ReloadDriver, server_lines, unified_diff

if TYPE_CHECKING:
    from ..config import Settings
    from ..pools import PoolPlan

log = logging.getLogger("lbsync")

HTTP_TEMPLATE = PACKAGE_TEMPLATES / "lbs_pools.conf.j2"
STREAM_TEMPLATE = PACKAGE_TEMPLATES / "lbs_stream.conf.j2"


def context(plans: tuple[PoolPlan, ...], protocol: str) -> dict:
    """What the pools templates may use: checked pool settings and validated members only."""
    return {"version": __version__, "pools": [
        {"name": p.pool.name, "role": p.pool.follows, "upstream": p.pool.upstream,
         "listen": list(p.pool.listen), "server_name": list(p.pool.server_name),
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
    """Applies every pool of an LB with [[pool]] tables by render + check + reload."""

    name = "reload"

    def __init__(self, settings: Settings):
        self.settings = settings
        tcp = any(pool.protocol == "tcp" for pool in settings.pools)
        self.files = ReloadDriver(settings, modules=(settings.stream_module,) if tcp else ())
        self.http, self.stream = Path(settings.output), Path(settings.stream_output)

    def apply(self, plans: tuple[PoolPlan, ...], dry_run: bool) -> Applied:
        live = {self.http: read_text(self.http), self.stream: read_text(self.stream)}
        wanted = {self.http: replacement(HTTP_TEMPLATE, context(plans, "http"), live[self.http]),
                  self.stream: replacement(STREAM_TEMPLATE, context(plans, "tcp"), live[self.stream])}
        changed = {path: text for path, text in wanted.items() if text is not None}
        count = sum(len(p.plan.backends) for p in plans)
        if not changed:
            return self.files.unchanged(count, dry_run)
        diff = "".join(unified_diff(live[path] or "", text, str(path)) for path, text in changed.items())
        if dry_run:
            log.info("dry run: would install %s; nothing written", ", ".join(map(str, changed)))
            return Applied(Outcome.DRY_RUN, diff)
        http = wanted[self.http] or live[self.http] or ""
        stream = wanted[self.stream] or live[self.stream] or ""
        self.files.check(http, (self.stream, stream))
        self.files.put_in_place(changed)
        summary = "; ".join(f"{p.pool.name}: {', '.join(m.name for m in p.plan.backends) or 'none'}"
                            for p in plans)
        log.info("updated pools (%s); nginx reloaded", summary)
        return Applied(Outcome.UPDATED, diff, RELOADED)

    def served(self) -> Served:
        """Every server line of both files (see `served_pools` for them pool by pool)."""
        rows = tuple(row for pool in self.served_pools().values() for row in pool.backends)
        return Served(f"files {self.http}, {self.stream}", rows)

    def served_pools(self) -> dict[str, Served]:
        """pool name -> the servers its upstream lists in the installed files."""
        pending = " (reload pending)" if self.files.pending.exists() else ""
        out: dict[str, Served] = {}
        for path in (self.http, self.stream):
            try:
                text = read_text(path) or ""
            except LbsyncError as exc:
                return {pool.name: Served(f"file {path}", error=str(exc)) for pool in self.settings.pools}
            for pool in self.settings.pools:
                block = _upstream_block(text, pool.upstream)
                if block is not None:
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
