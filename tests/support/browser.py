"""Real headless Chromium for page tests: Debian's `chromium` driven by Playwright, no browser download."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from .binaries import find_binary

_KNOWN_LOCATIONS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser")

#: Headless, sandbox-free (we run as root in CI), and quiet: no update checks, no first-run pages, no GPU.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"


class ChromiumNotFound(RuntimeError):
    """No chromium binary on this machine."""


def find_chromium() -> str:
    """The system Chromium: $CHROMIUM, then PATH, then Debian's locations."""
    return find_binary("chromium", "CHROMIUM", _KNOWN_LOCATIONS, "chromium", ChromiumNotFound)


@contextlib.asynccontextmanager
async def chromium_page(
    executable: str, profile_dir: Path, *, width: int = 1280, height: int = 720, **options: Any
) -> AsyncIterator[Page]:
    """A page in a fresh Chromium profile at `profile_dir`; the browser is closed afterwards. `options` go to
    Playwright's `launch_persistent_context` (`is_mobile`, `has_touch`, `permissions`, `locale`, ...)."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=executable, headless=True, args=list(CHROMIUM_ARGS),
            viewport={"width": width, "height": height},
            **{"locale": "zh-CN", "timezone_id": "Asia/Shanghai", **options},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            yield page
        finally:
            await context.close()
