"""The benchmarks run, tiny: each completes and loses nothing. How fast is not a test's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("scenario", ["raw", "logic"])
def test_a_scenario_completes_and_loses_nothing(scenario: str) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", scenario, "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(Path(done.stdout.strip().splitlines()[-1]).read_text())
    assert result["smoke"] is True
    for row in result["rows"]:
        assert row["records"] > 0 and row.get("delivered", row["records"]) == row["records"], row
