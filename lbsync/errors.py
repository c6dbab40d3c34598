"""The exception tree. Every failure lbsync reports is one of these, so the CLI can print one
readable line and exit with a sysexits(3) code instead of a traceback::

    LbsyncError (70 EX_SOFTWARE)
    ├── ConfigError     (78 EX_CONFIG)      bad config file, env var or flag
    ├── SourceError     (69 EX_UNAVAILABLE) the Serf agent cannot be reached or refused a request
    ├── TemplateError   (65 EX_DATAERR)     the template is missing or does not render
    ├── NginxError      (65 EX_DATAERR)     nginx rejected a config; the live file is untouched
    ├── ReloadError     (75 EX_TEMPFAIL)    the reload command failed; the new file is in place
    ├── PushError       (75 EX_TEMPFAIL)    nginx's live balancer did not take the pool; retried
    ├── InstallError    (73 EX_CANTCREAT)   the output file could not be written
    ├── LockError       (75 EX_TEMPFAIL)    another lbsync run held the lock too long
    └── NoPermission    (77 EX_NOPERM)      not allowed to touch a file lbsync needs (not root?)
"""

from __future__ import annotations

import os


class LbsyncError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    exit_code = os.EX_SOFTWARE


class ConfigError(LbsyncError):
    exit_code = os.EX_CONFIG


class SourceError(LbsyncError):
    exit_code = os.EX_UNAVAILABLE


class TemplateError(LbsyncError):
    exit_code = os.EX_DATAERR


class NginxError(LbsyncError):
    """nginx -t refused a config. `output` carries nginx's own words; `note` what lbsync did about it."""

    exit_code = os.EX_DATAERR

    def __init__(self, message: str, output: str = "", note: str = ""):
        super().__init__(message)
        self.output, self.note = output, note

    def noted(self, note: str) -> NginxError:
        """The same error, same class, with what lbsync did about it appended."""
        return type(self)(self.args[0], self.output, "; ".join(filter(None, (self.note, note))))

    def __str__(self) -> str:
        detail = self.output.strip().splitlines()
        emerg = [line for line in detail if "[emerg]" in line]
        tail = (emerg or detail or [""])[-1]
        text = f"{self.args[0]}: {tail}" if tail else self.args[0]
        return f"{text}; {self.note}" if self.note else text


class ReloadError(NginxError):
    exit_code = os.EX_TEMPFAIL


class PushError(LbsyncError):
    exit_code = os.EX_TEMPFAIL


class InstallError(LbsyncError):
    exit_code = os.EX_CANTCREAT


class LockError(LbsyncError):
    exit_code = os.EX_TEMPFAIL


class NoPermission(LbsyncError):
    exit_code = os.EX_NOPERM

    @classmethod
    def on(cls, path: object, doing: str) -> NoPermission:
        hint = " (run it as root, e.g. with sudo)" if os.geteuid() != 0 else ""
        return cls(f"permission denied {doing} {path}{hint}")
