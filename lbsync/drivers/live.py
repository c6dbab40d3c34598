"""The live driver: membership changes reach nginx's Lua balancer with no reload and no lost request.

The mechanism ingress-nginx uses since 2018: the upstream is a `balancer_by_lua` over a shared
dict, and lbsync PUTs the pool (validated backends, as JSON with a version and a digest) to a
control location on a root-only unix socket. Order per change:

1. write the pool file atomically (nginx's master loads it at every start and reload, so a
   restart or a structural reload never comes up empty or stale);
2. push it; 3. read it back (digest) to confirm.

Every run first reads back what nginx holds, so a push lost to a crash, an nginx restart with an
older file or anything else that left nginx elsewhere is noticed and repaired (drift). Structural
changes (algorithm, keepalive, upstream name, paths, the template) render the http-level file and
go through the reload driver's two nginx gates and reload, as before. A push that fails falls back
to that render + reload; if nginx still does not hold the pool, the run fails and the next retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__, control
from ..errors import InstallError, PushError
from ..files import read_text, write_atomic
from ..plan import PUSHED, RELOADED, Applied, Outcome, Plan, Served
from ..render import replacement
from .reload import ReloadDriver, unified_diff

if TYPE_CHECKING:
    from ..config import Settings
    from ..members import Member

log = logging.getLogger("lbsync")

CONVERGE = 3.0  # after a structural reload, how long nginx may take to bind its control socket


@dataclass(frozen=True)
class Pool:
    """One pool as nginx's balancer takes it; `digest` identifies the content, `version` the push."""

    upstream: str
    backends: tuple[dict, ...]
    digest: str

    @classmethod
    def of(cls, plan: Plan) -> Pool:
        upstream = plan.structure.upstream_name
        backends = tuple(backend(m, m.name in plan.unhealthy) for m in plan.backends)
        canonical = json.dumps({"upstream": upstream, "backends": backends}, sort_keys=True,
                               separators=(",", ":"))
        return cls(upstream, backends, hashlib.sha256(canonical.encode()).hexdigest()[:32])

    def document(self, version: int) -> bytes:
        return json.dumps({"version": version, "digest": self.digest, "upstream": self.upstream,
                           "backends": list(self.backends)}, separators=(",", ":")).encode()

    def lines(self) -> list[str]:
        """One readable line per backend, for a diff."""
        return [f"{b['name']} {b['address']}:{b['port']} weight={b['weight']}"
                + "".join(f" {flag}" for flag in ("drain", "backup", "down") if b[flag]) + "\n"
                for b in self.backends]


def backend(member: Member, down: bool) -> dict[str, Any]:
    """A validated member as the balancer's schema has it (nginx's defaults left out)."""
    out: dict[str, Any] = {"name": member.name, "address": str(member.addr), "port": member.port,
                           "weight": member.weight, "drain": member.draining, "backup": member.backup,
                           "down": down}
    for key in ("max_fails", "fail_timeout", "max_conns"):
        if getattr(member, key) is not None:
            out[key] = getattr(member, key)
    return out


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class LiveDriver:
    """Applies pool changes by a push to nginx's Lua balancer, structure changes by a reload."""

    name = "live"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.files = ReloadDriver(settings, modules=settings.lua_modules)
        self.channel = Channel(settings)

    def apply(self, plan: Plan, dry_run: bool) -> Applied:
        pool = Pool.of(plan)
        structure = self._structure_candidate()
        if structure is not None:
            return self._restructure(plan, pool, structure, dry_run)
        if not dry_run and self.files.retry_pending():
            log.info("retried the reload that failed last time")
        if self.channel.held() == pool.digest:
            log.info("unchanged (%d backends); nginx holds pool %s", len(pool.backends), pool.digest[:8])
            return Applied(Outcome.UNCHANGED)
        diff = self.channel.diff(pool)
        if dry_run:
            log.info("dry run: would push %d backends; nothing written", len(pool.backends))
            return Applied(Outcome.DRY_RUN, diff)
        how, action = push_or_reload(self.channel, pool, self.files)
        log_update(plan, how)
        return Applied(Outcome.UPDATED, diff, action)

    def served(self) -> Served:
        return self.channel.served()

    # -- structure: the http-level file, through the reload driver's gates ----------------------

    def _structure_candidate(self) -> str | None:
        """The new http-level file when the live one differs from what the settings render to."""
        return replacement(self.settings.live_template, self._context(), read_text(self.files.output))

    def _context(self) -> dict:
        s = self.settings
        return {"upstream_name": s.upstream_name, "algorithm": s.algorithm, "hash_key": s.hash_key,
                "keepalive": s.keepalive, "lua_dir": s.lua_dir, "pool_file": str(self.channel.pool_file),
                "control_socket": s.control_socket, "version": __version__}

    def _restructure(self, plan: Plan, pool: Pool, text: str, dry_run: bool) -> Applied:
        """Pool file first (the new master loads it), then the checked file, reload, confirm."""
        diff = unified_diff(read_text(self.files.output) or "", text, str(self.files.output))
        if dry_run:
            log.info("dry run: would install the live upstream file and reload; nothing written")
            return Applied(Outcome.DRY_RUN, diff)
        control_dir(self.settings.control_socket)
        self.channel.write(pool)
        self.files.replace(text)
        self.channel.converge(pool)
        log_update(plan, "structure changed: nginx reloaded")
        return Applied(Outcome.UPDATED, diff, RELOADED)


def control_dir(socket: str) -> None:
    """The socket's directory is its access control: root-only, made here if missing."""
    directory = Path(socket).parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid == os.geteuid():
        directory.chmod(0o700)


def push_or_reload(channel: Channel, pool: Pool, files: ReloadDriver) -> tuple[str, str]:
    """Push `pool`; when nginx does not take it, reload (its master loads the pool file, written
    first) and make sure it holds it. Returns how, for the log, and the action."""
    try:
        version = channel.push(pool)
    except PushError as exc:
        log.warning("%s; falling back to a reload", exc)
        files.reload()
        channel.converge(pool)
        return "pushed after a reload", RELOADED
    return f"pushed pool v{version}, no reload", PUSHED


def log_update(plan: Plan, how: str) -> None:
    names = ", ".join(m.name for m in plan.backends) or "none"
    down = plan.down()
    health = f"; down by health checks: {', '.join(down)}" if down else ""
    log.info("updated pool %s (%d backends: %s%s); %s", plan.structure.upstream_name,
             len(plan.backends), names, health, how)


class Channel:
    """One live upstream's pool: its file on disk, the push to nginx's control socket, the read back."""

    def __init__(self, settings: Settings):
        self.socket = settings.control_socket
        self.upstream = settings.upstream_name
        self.pool_file = Path(settings.pool_file or f"{settings.state_dir}/pool-{settings.upstream_name}.json")
        self.url = f"/pools/{settings.upstream_name}"

    def served(self) -> Served:
        """The pool nginx's balancer holds, read back from its control socket."""
        try:
            status, reply = control.call(self.socket, "GET", self.url)
        except PushError as exc:
            return Served("live pool", error=str(exc))
        if status != 200 or not isinstance(reply, dict):
            return Served("live pool", error=f"nginx holds no pool for {self.upstream} (HTTP {status})")
        backends = tuple((b["name"], endpoint(b["address"], b["port"]), bool(b["drain"] or b["down"]))
                         for b in reply.get("backends", []))
        return Served(f"live pool v{reply.get('version')}", backends)

    def held(self) -> str | None:
        """The digest of the pool nginx holds now; None when it holds none or cannot be asked."""
        try:
            status, reply = control.call(self.socket, "GET", self.url + "?brief=1")
        except PushError as exc:
            log.debug("%s", exc)
            return None
        return reply.get("digest") if status == 200 and isinstance(reply, dict) else None

    def push(self, pool: Pool) -> int:
        """File, push, read back; returns the version nginx now holds."""
        version = self.write(pool)
        status, reply = control.call(self.socket, "PUT", self.url, pool.document(version))
        if status != 200:
            why = reply.get("error") if isinstance(reply, dict) else reply
            raise PushError(f"nginx refused the pool push (HTTP {status}): {why}")
        held = self.held()
        if held != pool.digest:
            raise PushError(f"nginx holds pool {held} after pushing {pool.digest}")
        return version

    def write(self, pool: Pool) -> int:
        """Atomically, before nginx is told: a restart in between loads the new pool."""
        version = self._file_version() + 1
        try:
            self.pool_file.parent.mkdir(parents=True, exist_ok=True)
            # atomic but not fsynced: every run compares nginx with the membership, so a file an
            # unclean power-off rolled back is noticed and re-pushed; an fsync cost 0.1-0.6 s here
            write_atomic(self.pool_file, pool.document(version), durable=False, mode=0o600)
        except OSError as exc:
            raise InstallError(f"cannot write {self.pool_file}: {exc.strerror or exc}") from None
        return version

    def _file_version(self) -> int:
        try:
            version = json.loads(self.pool_file.read_bytes()).get("version", 0)
        except (OSError, ValueError, AttributeError):
            return 0
        return version if isinstance(version, int) else 0

    def converge(self, pool: Pool) -> None:
        """After a reload: wait for the new config's socket, then make sure it holds `pool`."""
        deadline = time.monotonic() + CONVERGE
        while self.held() != pool.digest:
            try:
                self.push(pool)
                return
            except PushError as exc:
                if time.monotonic() > deadline:
                    raise PushError(f"nginx was reloaded but does not hold the pool: {exc}") from None
            time.sleep(0.02)

    def diff(self, pool: Pool) -> str:
        """The pool on file against the plan's, one line per backend."""
        try:
            before = Pool(pool.upstream, tuple(json.loads(self.pool_file.read_bytes())["backends"]), "").lines()
        except (OSError, ValueError, KeyError, TypeError):
            before = []
        return unified_diff("".join(before), "".join(pool.lines()), str(self.pool_file))
