"""The operator's commands as a provider: scale_out_command, scale_in_command, and optionally
list_command (one "NAME [ID]" line per node of ours, so counts and reconciliation work as with a
cloud). Commands run through `lbsync.commands` (split like a shell, no shell, bounded)."""

from __future__ import annotations

import os
import shlex
import time

from ..autoscale import Node, index_of
from ..commands import command_env, expand, one_line, run_command
from ..config import AutoscaleSettings, Settings
from ..rules import NODE_NAME_RE, printable
from .base import Instance, ProviderError


def make(settings: Settings) -> CommandProvider:
    return CommandProvider(settings.autoscale)


class CommandProvider:
    kind = "command"
    drains_by_query = False

    def __init__(self, conf: AutoscaleSettings):
        self.conf = conf

    def launch(self, node: Node) -> Instance:
        self.run_for(self.conf.scale_out_command, node)
        return Instance(node.name, state="launched", created=time.time())

    def destroy(self, instance: Instance) -> None:
        self.run_for(self.conf.scale_in_command, Node(instance.name, index_of(self.conf, instance.name), 0.0))

    def instances(self) -> list[Instance] | None:
        if not shlex.split(self.conf.list_command):
            return None
        output = self.run_for(self.conf.list_command, Node("", None, 0.0))
        found = []
        for line in output.splitlines():
            words = line.split()
            if not words:
                continue
            if not NODE_NAME_RE.fullmatch(words[0]):
                raise ProviderError(f"list_command printed {printable(line, 80)!r}: not NAME [ID]", retry=False)
            found.append(Instance(words[0], words[1] if len(words) > 1 else "", "listed"))
        return found

    def run_for(self, template: str, node: Node) -> str:
        """The command's output; ProviderError with the command line, exit status and output."""
        argv = expand(template, node)
        started = time.monotonic()
        code, output = run_command(argv, command_env(os.environ, node), self.conf.command_timeout)
        if code == 0:
            return output
        why = "timed out" if code is None else f"exited {code}"
        raise ProviderError(f"{shlex.join(argv)} {why} after {time.monotonic() - started:.1f} s; "
                            f"output: {one_line(output) or '(none)'}", retry=False)
