"""The benchmarks run, tiny: each completes and loses nothing. How fast is not a test's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: (what arrived, what was sent) in a scenario's rows: equal, and not zero.
COUNTS = [("delivered", "records"), ("delivered", "sent"), ("delivered", "expected"), ("verified", "checked"),
          ("deduplicated", "replayed"), ("connected", "sockets")]


@pytest.mark.parametrize("scenario", ["raw", "logic", "e2e", "group", "memory"])
def test_a_scenario_completes_and_loses_nothing(scenario: str) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", scenario, "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(Path(done.stdout.strip().splitlines()[-1]).read_text())
    assert result["smoke"] is True
    for row in result["rows"]:
        assert row.get("lost", 0) == 0 and row.get("duplicates", 0) == 0, row
        counts = [(row.get(got, row[sent]), row[sent]) for got, sent in COUNTS if sent in row]
        assert counts and all(sent > 0 and got == sent for got, sent in counts), row
