"""Shared fixtures: a process registry that stops everything it started, by PID, always."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realparts import Processes  # noqa: E402


@pytest.fixture
def procs(tmp_path):
    registry = Processes(tmp_path)
    yield registry
    registry.stop_all()
