"""Watch a few files (the template, the config) and raise a flag when one of them is written.

Directories are watched, not the files themselves, because editors and config management often
replace a file by renaming a new one over it. watchdog is imported here, lazily, so neither the
hook nor the CLI pays for it. Only events that change content count: reading the template (which
every render does) must not look like an edit, or a render would trigger the next one.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("lbsync")

WRITE_EVENTS = {"modified", "created", "moved", "deleted", "closed"}  # closed = close after write


class Watcher:
    """Sets `flags[path]` whenever `path` is written, created, replaced or removed."""

    def __init__(self, flags: dict[Path, threading.Event]):
        self.flags = {os.path.realpath(path): flag for path, flag in flags.items()}
        self.observer: Any = None  # watchdog is imported only in start()

    def start(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.warning("watchdog is not installed: template and config hot reload off (SIGHUP works)")
            return
        # watchdog logs a spurious error when stopped mid-event; with no handler of its own,
        # Python's last-resort handler would print it to stderr
        logging.getLogger("watchdog").addHandler(logging.NullHandler())
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                watcher.dispatch(event)

        self.observer = Observer()
        for directory in sorted({os.path.dirname(path) for path in self.flags}):
            if os.path.isdir(directory):
                self.observer.schedule(Handler(), directory, recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def dispatch(self, event) -> None:
        if event.event_type not in WRITE_EVENTS or event.is_directory:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            flag = self.flags.get(os.path.realpath(path)) if path else None
            if flag is not None:
                flag.set()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None
