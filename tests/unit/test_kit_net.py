"""The test kit's free ports: a port handed out is not handed out again in the same process.

A port is only chosen here; its user binds it later (nginx at its first reload, a Serf agent
when it starts). The kernel picks bind(0) ports at random, so two choices made before either
is bound collided now and then: a pool's listener and the LB's Serf agent got the same port
and nginx's reload failed to bind (test_pools, in a fresh-clone run)."""

from __future__ import annotations

import socket

from kit.net import free_port


def test_no_port_is_handed_out_twice():
    ports = [free_port() for _ in range(500)]  # unbound, as a test's ports are until used
    assert len(set(ports)) == len(ports)


def test_a_preferred_port_is_given_when_nothing_holds_it():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        taken = sock.getsockname()[1]
        assert free_port(preferred=taken) != taken
    assert free_port(preferred=taken) == taken  # the caller asked for it by number
