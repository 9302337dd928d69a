"""What every sending channel shares (`channels.sending`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from channels.sending import draft_id

REPO = Path(__file__).resolve().parents[2]


def test_draft_ids_never_repeat_within_a_process() -> None:
    ids = [draft_id("sms") for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("sms-") for i in ids)


def test_draft_ids_of_two_processes_differ() -> None:
    # Both start their counters at one: only the part drawn per process tells them apart.
    draw = "from channels.sending import draft_id; print(draft_id('sms'))"
    first, second = (
        subprocess.run(
            [sys.executable, "-c", draw], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    )
    assert first.startswith("sms-") and second.startswith("sms-")
    assert first != second
