"""Shared fixtures. Helpers live in the test kit (tests/kit, imported as `kit` through pytest's
`pythonpath`); this file only wires them to pytest's lifetimes."""

from __future__ import annotations

import pytest
from kit.fake_serf import FakeSerf
from kit.procs import Processes


@pytest.fixture
def procs(tmp_path):
    """Starts processes for one test and stops every one of them by PID, pass or fail."""
    registry = Processes(tmp_path)
    yield registry
    registry.stop_all()


@pytest.fixture
def fake_serf():
    """Factory for fake Serf agents (kit.fake_serf.FakeSerf, same arguments); each is closed
    after the test, and what a scripted agent's script raised fails the test there."""
    started: list[FakeSerf] = []

    def start(*args, **kwargs) -> FakeSerf:
        started.append(FakeSerf(*args, **kwargs))
        return started[-1]

    yield start
    errors = []
    for serf in started:
        try:
            serf.close()
        except BaseException as exc:  # close them all, then report the first
            errors.append(exc)
    if errors:
        raise errors[0]
