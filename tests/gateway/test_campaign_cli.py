"""`switchboard campaign …` run as a real process on a fresh database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.campaign_cli import progress_bar


def switchboard(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**os.environ, "SWITCHBOARD_LOG_LEVEL": "WARNING"},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


BODY = {
    "name": "Reminder",
    "channel": "sms",
    "filter": {"tags_any": ["due"]},
    "template": {"body": "Hi {{ first_name }}, your appointment is tomorrow."},
    "scheduled_at": "2099-01-01T09:00:00Z",
}


def test_create_start_pause_resume_cancel_and_show(tmp_path: Path) -> None:
    created = switchboard("campaign", "create", cwd=tmp_path, stdin=json.dumps(BODY))
    assert created.returncode == 0, created.stderr
    campaign_id = str(json.loads(created.stdout)["id"])

    statuses = []
    for action in ("start", "pause", "resume", "cancel"):
        result = switchboard("campaign", action, campaign_id, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        statuses.append(json.loads(result.stdout)["status"])
    again = switchboard("campaign", "resume", campaign_id, cwd=tmp_path)
    listed = switchboard("campaign", "list", cwd=tmp_path)
    followed = switchboard("campaign", "show", campaign_id, "--follow", cwd=tmp_path)

    assert statuses == ["scheduled", "paused", "scheduled", "cancelled"]
    assert again.returncode == 1
    assert "cancelled" in again.stderr
    assert "Reminder" in listed.stdout and "cancelled" in listed.stdout
    assert followed.returncode == 0
    assert followed.stdout.strip().endswith("cancelled")


def test_a_template_error_is_reported_and_nothing_is_created(tmp_path: Path) -> None:
    broken = {**BODY, "template": {"body": "Hi {{ name "}}

    result = switchboard("campaign", "create", cwd=tmp_path, stdin=json.dumps(broken))
    listed = switchboard("campaign", "list", cwd=tmp_path)

    assert result.returncode == 1
    assert "template error" in result.stderr
    assert listed.stdout == ""


def test_edit_changes_a_draft_and_refuses_a_bad_template(tmp_path: Path) -> None:
    created = switchboard("campaign", "create", cwd=tmp_path, stdin=json.dumps(BODY))
    campaign_id = str(json.loads(created.stdout)["id"])

    renamed = switchboard(
        "campaign", "edit", campaign_id, cwd=tmp_path, stdin=json.dumps({"name": "Moved"})
    )
    broken = switchboard(
        "campaign",
        "edit",
        campaign_id,
        cwd=tmp_path,
        stdin=json.dumps({"template": {"body": "{{ oops"}}),
    )
    shown = switchboard("campaign", "show", campaign_id, cwd=tmp_path)

    assert renamed.returncode == 0, renamed.stderr
    assert json.loads(renamed.stdout)["name"] == "Moved"
    assert broken.returncode == 1
    assert "template error" in broken.stderr
    assert json.loads(shown.stdout)["template"] == BODY["template"]


def test_the_progress_bar() -> None:
    campaign = {
        "status": "running",
        "counts": {
            "targeted": 10,
            "sent": 4,
            "queued": 4,
            "failed": 1,
            "skipped": {"opted_out": 1},
        },
    }

    assert progress_bar(campaign) == (
        "[##################............] 4/10 sent, 4 queued, 1 failed, 1 skipped  running"
    )
