"""Talking to systemd without a dependency: sd_notify(3) and whether stderr is the journal.

`Type=notify` units start dependants only after READY=1, and `systemctl status` shows STATUS=.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(*lines: str) -> bool:
    """Send e.g. "READY=1", "STATUS=..." to systemd; False when not under systemd or it failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError:
        return False
    return True


def stderr_is_journal(environ: Mapping[str, str] = os.environ) -> bool:
    """systemd sets JOURNAL_STREAM to stderr's device:inode when stderr is the journal. A Serf
    hook inherits the variable from serf.service but writes to serf's pipe: compare, not just test."""
    try:
        device, inode = (int(part) for part in environ.get("JOURNAL_STREAM", "").split(":"))
        info = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)
