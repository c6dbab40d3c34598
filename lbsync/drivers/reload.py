"""The reload driver: render the upstream file, have nginx check it twice, swap it in, reload.

render -> `nginx -t` on a throwaway wrapper that includes only the candidate (refused: kept as
`.rejected` with nginx's words in `.err`, the live file untouched) -> install atomically, `.prev`
kept -> `nginx -t` on the real config (refused: the previous file is put back) -> reload. Until a
reload succeeds a marker makes every later run retry it, so nginx never keeps an old pool while
the file on disk says otherwise.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import InstallError, LbsyncError, NginxError
from ..files import mark, read_text, swap_in, unmark, write_atomic
from ..plan import RELOADED, Applied, Outcome, Plan, Served
from ..render import fingerprint, managed, replacement

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("lbsync")


@dataclass(frozen=True)
class Candidate:
    """What the plan renders to. `current`: the live file already holds exactly that (then `text`
    is None); otherwise `text` is the file to install."""

    current: bool
    text: str | None = None


def context(plan: Plan) -> dict:
    """Everything the upstream template may use: validated members and checked settings only."""
    s = plan.structure
    return {
        "upstream_name": s.upstream_name,
        "algorithm": s.algorithm,
        "hash_key": s.hash_key,
        "keepalive": s.keepalive,
        "backends": list(plan.backends),
        "unhealthy": sorted(plan.unhealthy),
        "version": __version__,
    }


def candidate_for(plan: Plan, live: str | None) -> Candidate:
    """Compare `live` with what `plan` renders to, rendering only when the header says it differs."""
    text = replacement(plan.structure.template, context(plan), live)
    return Candidate(current=text is None, text=text)


def render_upstream(plan: Plan) -> str:
    """The whole upstream file for `plan` (for `lbsync render` and `lbsync install`)."""
    template, values = plan.structure.template, context(plan)
    return managed(template, values, fingerprint(template, values))


class ReloadDriver:
    """Applies a plan by rendering, checking and reloading: every change costs an nginx reload.

    `modules` are loaded into the candidate check's wrapper (the live driver's file needs Lua).
    """

    name = "reload"

    def __init__(self, settings: Settings, modules: tuple[str, ...] = ()):
        self.settings, self.modules = settings, modules
        self.output = Path(settings.output)
        self.pending = self.output.with_name(f".{self.output.name}.reload-pending")

    def apply(self, plan: Plan, dry_run: bool) -> Applied:
        live = read_text(self.output)
        candidate = candidate_for(plan, live)
        count = len(plan.backends)
        if candidate.current:
            return self.unchanged(count, dry_run)
        assert candidate.text is not None
        diff = unified_diff(live or "", candidate.text, str(self.output))
        if dry_run:
            log.info("dry run: would install %d backends; nothing written", count)
            return Applied(Outcome.DRY_RUN, diff)
        self.replace(candidate.text)
        names = ", ".join(m.name for m in plan.backends) or "none"
        down = plan.down()
        health = f"; down by health checks: {', '.join(down)}" if down else ""
        log.info("updated %s (%d backends: %s%s); nginx reloaded", self.output, count, names, health)
        return Applied(Outcome.UPDATED, diff, RELOADED)

    def served(self) -> Served:
        """The servers of the installed file (nginx loaded it unless a reload is pending)."""
        source = f"file {self.output}" + (" (reload pending)" if self.pending.exists() else "")
        try:
            text = read_text(self.output) or ""
        except LbsyncError as exc:
            return Served(source, error=str(exc))
        return Served(source, tuple(server_lines(text)))

    def replace(self, text: str) -> None:
        """The checked way to put a new upstream file in place: both nginx gates, then the reload."""
        self.check(text)
        self.put_in_place({self.output: text})

    def put_in_place(self, files: dict[Path, str]) -> None:
        """Install checked `files` (nginx -t on the whole config; refused: every one put back),
        then reload.

        The reload-pending mark goes down before the install: a crash anywhere after it (while
        nginx tests the installed files, before or during the reload) leaves a state the next run
        repairs by reloading, though the files themselves are already current.
        """
        was_pending = self.pending.exists()
        mark(self.pending)
        try:
            self._install(files)
        except BaseException:
            if not was_pending:  # the previous files are back: nothing new for nginx to load
                unmark(self.pending)
            raise
        for path in files:
            _clear_rejected(path)
        self.reload()

    def retry_pending(self) -> bool:
        """Reload now if an earlier reload did not complete; True when it did so."""
        if not self.pending.exists():
            return False
        self.reload()
        return True

    def unchanged(self, count: int, dry_run: bool) -> Applied:
        if not dry_run and self.retry_pending():
            log.info("unchanged (%d backends); retried the reload that failed last time", count)
            return Applied(Outcome.UNCHANGED, action=RELOADED)
        log.info("unchanged (%d backends); not reloading", count)
        return Applied(Outcome.UNCHANGED)

    def check(self, candidate: str, main: tuple[Path, str] | None = None) -> None:
        """Gate 1: nginx -t on the candidate alone (with `main`, the TCP pools' main-context file:
        its path and text); when refused, keep each candidate and nginx's words for the operator."""
        from .. import nginx  # not on the unchanged path: it pulls in subprocess

        try:
            nginx.check(candidate, self.settings.nginx_bin, Path(self.settings.state_dir) / "nginx-check",
                        self.modules, main[1] if main else "")
        except NginxError as exc:
            kept = f"live file {self.output} kept"
            with contextlib.suppress(OSError):
                for path, text in ((self.output, candidate), *([main] if main else [])):
                    rejected = path.with_name(path.name + ".rejected")
                    write_atomic(rejected, text)
                    write_atomic(rejected.with_name(rejected.name + ".err"), exc.output + "\n")
                kept += f", candidate saved as {self.output.name}.rejected"
            raise exc.noted(kept) from None

    def _install(self, files: dict[Path, str]) -> None:
        """Swap the files in, then nginx -t the whole config; refused -> the previous files are back."""
        from .. import nginx

        undos: list = []

        def undo_all() -> str:
            return ", ".join(undo() for undo in reversed(undos)) or "nothing installed"
        try:
            for path, text in files.items():
                undos.append(swap_in(path, text))
            s = self.settings
            nginx.test(s.nginx_bin, s.nginx_conf, s.nginx_prefix)
        except NginxError as exc:
            raise exc.noted(undo_all()) from None
        except InstallError as exc:  # a second file could not be written: the first goes back too
            raise InstallError(f"{exc}; {undo_all()}") from None

    def reload(self) -> None:
        """Reload nginx; until a reload succeeds, a marker makes every later run retry it.

        Without the marker a failed reload would be forgotten: the next run finds the file already
        current and, correctly for the file, does nothing, while nginx keeps serving the old pool.
        A reload fails in the master too, after the command succeeded: `nginx -t` takes an address
        in use for a running nginx's and passes, so a listener another process holds passes it,
        and the master keeps its old workers.
        """
        from .. import nginx

        mark(self.pending)
        if not nginx.reload(self.settings.reload_command, self.settings.nginx_pid):
            log.warning("nginx was told to reload, but its old workers still accept connections after 2 s: "
                        "it kept its old configuration (its error log says why, e.g. a listen address it "
                        "cannot bind); the next run reloads again")
            return
        unmark(self.pending)


def _clear_rejected(live: Path) -> None:
    """A candidate went live: an older refused one is no longer news."""
    rejected = live.with_name(live.name + ".rejected")
    for path in (rejected, rejected.with_name(rejected.name + ".err")):
        path.unlink(missing_ok=True)


def server_lines(text: str) -> list[tuple[str, str, bool]]:
    """(name, endpoint, down) of each `server ...;  # name` line the template writes."""
    out = []
    for line in text.splitlines():
        words, _, comment = line.strip().partition("#")
        parts = words.split()
        if len(parts) >= 2 and parts[0] == "server" and comment.strip() and not comment.startswith(" placeholder"):
            out.append((comment.split()[0], parts[1].rstrip(";"), "down;" in words))
    return out


def unified_diff(old: str, new: str, name: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        f"{name} (live)", f"{name} (candidate)"))
