"""For every test run: stopped with SIGTERM, it tears down as when stopped with Ctrl-C.

The servers, workers and gateways the fixtures start run in sessions of their own
(devstack.Stack), so they outlive a pytest killed by a signal unless the fixtures'
teardowns run. Python's default SIGTERM ends the process at once; a KeyboardInterrupt
lets pytest finish the session, session fixtures' teardowns included.
"""

from __future__ import annotations

import signal
from types import FrameType

import pytest


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
