"""Headless Chromium for page tests: Debian's `chromium`, driven by Playwright.

Missing Chromium (or Playwright) fails the test under CI=true and skips it loudly elsewhere,
like every other real service the tests need (see `tests.conftest.service_unavailable`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("SWITCHBOARD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).parent / "artifacts"


class BrowserMissing(RuntimeError):
    pass


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A fresh headless Chromium; closed, with its driver, on exit."""
    if not _installed(CHROMIUM):
        raise BrowserMissing(f"{CHROMIUM} is not installed (Debian package chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError as error:
        raise BrowserMissing(f"playwright is not installed ({error})") from None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


def _installed(path: str) -> bool:
    return Path(path).exists()


async def screenshot(page: Any, name: str) -> Path:
    """Keep a picture of the page for review (tests/artifacts/ is not in git)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
