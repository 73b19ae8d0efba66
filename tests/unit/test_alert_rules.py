"""The Prometheus alert rules in deploy/prometheus are valid and pass their promtool unit tests."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [
    ["check", "rules", "deploy/prometheus/alerts.yml"],
    ["test", "rules", "deploy/prometheus/alerts_test.yml"],
])
def test_promtool(args: list[str]) -> None:
    # No skip when promtool is missing: `make test` installs it, so absence is a setup bug.
    assert shutil.which("promtool"), "promtool is not on PATH: run `make test-deps`"
    result = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
