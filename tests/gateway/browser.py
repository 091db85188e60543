"""Reusable parts of the browser tests: Debian's chromium (Playwright, never a downloaded browser) and
``asgi-p2p gateway`` as a real process.

::

    async with gateway_process(tmp_path, "--listen", "127.0.0.1:0", ticket) as url:
        async with chromium(tmp_path) as browser:
            page = await browser.new_page()
            await page.goto(url + "/ui")
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.cli.conftest import REPO, START_TIMEOUT, cli_env

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium", "gateway_process"]

#: The system chromium (Debian package ``chromium``): Playwright drives it, it never downloads one.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",  # <audio>.play() without a click
]


@asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[BrowserContext]:
    """A headless chromium with a fresh profile in ``tmp``; closed (and its processes ended) on exit."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make sysdeps` installs Debian's chromium")
    from playwright.async_api import async_playwright

    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=30_000,
        )
        try:
            yield context
        finally:
            await context.close()


def _start_gateway(tmp: Path, args: tuple[str, ...]) -> tuple[subprocess.Popen[bytes], Path, Path]:
    workdir = tmp / f"gateway-{len(list(tmp.glob('gateway-*')))}"
    workdir.mkdir(parents=True)
    home = workdir / "home"
    home.mkdir()
    url_file = workdir / "url.txt"
    identity = [] if "--key-file" in args else ["--ephemeral"]
    argv = [sys.executable, "-m", "asgi_p2p", "gateway", *identity, "--url-file", str(url_file), *args]
    stderr_path = workdir / "stderr.txt"
    with (workdir / "stdout.txt").open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=cli_env(home), stdout=out, stderr=err)
    return proc, url_file, stderr_path


@asynccontextmanager
async def gateway_process(tmp: Path, *args: str) -> AsyncIterator[str]:
    """``python -m asgi_p2p gateway ARGS --url-file ...`` until the block ends; yields its URL.

    ``--ephemeral`` is added unless ARGS name a ``--key-file``.
    """
    proc, url_file, stderr_path = _start_gateway(tmp, args)
    try:
        async with asyncio.timeout(START_TIMEOUT):
            while not (url_file.exists() and url_file.read_text().strip()):
                if proc.poll() is not None:
                    pytest.fail(f"asgi-p2p gateway exited with {proc.returncode}:\n{stderr_path.read_text()}")
                await asyncio.sleep(0.05)
        yield url_file.read_text().strip()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
