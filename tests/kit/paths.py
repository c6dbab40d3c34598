"""Where things are in the checkout, for the kit and the tests (one place, so a move is one edit)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "lbsync" / "templates"
LAB = ROOT / "lab"
WEB_SERVER = LAB / "webserver.py"  # what a lab web node serves with; tests and bench use it too
ECHO_SERVER = LAB / "echoserver.py"  # the lab's TCP service (TCP pools)
