"""Scale-out command: boot web node INDEX on 127.0.3.INDEX, a web server and then a serf agent
that joins the LB and answers the `load` query from a load file (`cat`: Serf sends a query
handler's stdout back). Exits 3 ("quota exceeded") while the config's `fail` file exists."""

from __future__ import annotations

import os
import sys

from kit.net import connects, free_port, wait_until
from opslib import CFG, RUN, note, start


def wait_connect(ip: str, port: int) -> None:
    try:
        wait_until(lambda: connects(ip, port), 15, f"{ip}:{port}", interval=0.05)
    except AssertionError:
        print(f"{ip}:{port} never answered")
        sys.exit(1)


index = int(sys.argv[2])
name, ip = f"web{index}", f"127.0.3.{index}"
note("boot", index)
if os.path.exists(CFG["fail"]):
    print("cannot boot: quota exceeded")
    sys.exit(3)
port = free_port(ip)
start(name, "web", [sys.executable, CFG["webserver"], "--name", f"serf-{name}", "--bind", ip,
                    "--port", str(port), "--access-log", f"{RUN}/{name}.access"])
wait_connect(ip, port)  # serving before it joins: never routed to a closed port
bind = free_port(ip)
rpc = free_port(ip)
while rpc == bind:  # two picks can agree
    rpc = free_port(ip)
load = f"cat {CFG['loads']}/{name} 2>/dev/null || cat {CFG['loads']}/all"
start(name, "serf", [CFG["serf"], "agent", "-node", name, "-bind", f"{ip}:{bind}",
                     "-rpc-addr", f"{ip}:{rpc}", "-profile", "local", "-tag", "role=web",
                     "-tag", f"port={port}", "-join", CFG["join"], "-event-handler", f"query:load={load}"])
with open(f"{RUN}/{name}.rpc", "w") as handle:
    handle.write(f"{ip}:{rpc}")
wait_connect(ip, rpc)
