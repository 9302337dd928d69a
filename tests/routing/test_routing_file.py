"""The routing file applied by several gateway processes that start at the same moment."""

from __future__ import annotations

import asyncio
from pathlib import Path

from routing.config import apply_file, load_config
from timeline.db import Database
from timeline.models import utcnow

ROUTING = """
[[queues]]
name = "sales"
offer_timeout_seconds = 20

[[queues]]
name = "support"

[[rules]]
queue = "sales"
when = { keywords = ["price"] }

[[rules]]
queue = "support"
when = { channel = "email" }
"""


async def test_processes_starting_at_once_apply_the_file_one_after_the_other(
    database_url: str, tmp_path: Path
) -> None:
    """Side by side, both would insert the new queues (one failing on the unique name, so
    that gateway would not start) or both replace the rules (leaving them twice)."""
    path = tmp_path / "routing.toml"
    path.write_text(ROUTING, encoding="utf-8")
    database = Database(database_url)
    await database.upgrade()
    try:
        await asyncio.gather(*(database.run(apply_file, path, utcnow()) for _ in range(4)))
        config = await database.read(load_config)
    finally:
        await database.dispose()

    assert sorted(config.queues) == ["sales", "support"]
    assert [rule.queue for rule in config.rules] == ["sales", "support"]
    assert config.queues["sales"].offer_timeout_seconds == 20
