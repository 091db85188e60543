"""A real browser (Debian's headless chromium, driven by Playwright) reaches peers through ``asgi-p2p gateway``.

The music and chat apps run on two peers (in this process, so the test sees what
the music server received); they publish their names to a directory node; one
``asgi-p2p gateway --directory ...`` process routes ``music.test.localhost`` and
``chat.test.localhost`` to them.  Chromium loads the music page (tracks listed,
an ``<audio>`` element plays and seeks: the server sees Range requests) and the
chat page (its WebSocket exchanges messages with a Python peer that joined the
room directly over P2P).
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from apps.chat import create_app as create_chat
from apps.music import create_app as create_music
from apps.music import generate_library, write_cover_png
from asgi_p2p import Node
from asgi_p2p.discovery import DirectoryClient, DirectoryServer
from asgi_p2p.http import websocket_connect
from asgi_p2p.ticket import Ticket

from .browser import chromium, gateway_process
from .conftest import peer

pytestmark = pytest.mark.timeout(90)


class Recorder:
    """ASGI middleware remembering each request's path and Range header."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str | None]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            rng = headers.get(b"range")
            self.seen.append((scope["path"], rng.decode() if rng is not None else None))
        await self.app(scope, receive, send)


PLAY_AND_SEEK = """async (id) => {
  const audio = document.querySelector(`li.track[data-id="${id}"] audio`);
  const once = (name) => new Promise((resolve) => audio.addEventListener(name, resolve, { once: true }));
  const playing = once("playing");
  await audio.play();
  await playing;
  const seeked = once("seeked");
  audio.currentTime = audio.duration * 0.9;
  await seeked;
  return { duration: audio.duration, time: audio.currentTime, error: audio.error && audio.error.code,
           src: audio.currentSrc };
}"""


def long_library(root: Path) -> str:
    """The demo albums and a 3-minute track (32 MB: a seek near its end needs a new Range request)."""
    generate_library(root)
    folder = root / "Long Play"
    folder.mkdir()
    write_cover_png(folder / "cover.png", (40, 160, 90))
    with wave.open(str(folder / "Test Signal - Three Minutes of Quiet.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(bytes(4 * 44100 * 180))
    return "long-play-test-signal-three-minutes-of-quiet"


async def test_chromium_plays_seeks_and_chats_through_the_gateway(tmp_path: Path) -> None:
    long_track = long_library(tmp_path / "music")
    music = Recorder(create_music(tmp_path / "music"))
    directory = await Node.bind()
    clock = time.time() - asyncio.get_running_loop().time()
    DirectoryServer(clock_offset=clock).attach(directory)
    directory_ticket = Ticket.from_node_addr(directory.node_addr()).encode()
    try:
        async with peer(music) as m, peer(create_chat()) as c:
            for p, name in ((m, "music.test"), (c, "chat.test")):
                client = DirectoryClient(p.node, directory.node_addr(), clock_offset=clock)
                await client.publish(p.node.node_addr(), name)
                await client.close()
            args = ("--listen", "127.0.0.1:0", "--bind", "127.0.0.1", "--directory", directory_ticket)
            async with gateway_process(tmp_path, *args) as url, chromium(tmp_path) as browser:
                port = url.rsplit(":", 1)[1]
                page = await browser.new_page()

                # the music page: every track listed, the first one plays and seeks
                await page.goto(f"http://music.test.localhost:{port}/ui")
                await page.wait_for_selector("body[data-loaded='5']", timeout=20_000)
                titles = await page.locator("li.track .title").all_inner_texts()
                assert len(titles) == 5 and "Three Minutes of Quiet - Long Play" in titles
                assert str(m.node_id)[:10] not in await page.inner_text("#you")  # the caller is the gateway
                played = await asyncio.wait_for(page.evaluate(PLAY_AND_SEEK, long_track), 20)
                assert played["error"] is None and played["duration"] == pytest.approx(180, abs=0.1)
                assert played["time"] == pytest.approx(162, abs=1)
                ranges = [rng for path, rng in music.seen if path == f"/tracks/{long_track}/audio"]
                assert ranges and all(rng is not None and rng.startswith("bytes=") for rng in ranges), ranges
                # the seek near the end asked for bytes far from the start
                starts = [int(rng.removeprefix("bytes=").split("-")[0]) for rng in ranges if rng]
                assert max(starts) > 16_000_000, ranges
                await page.screenshot(path=str(tmp_path / "gateway-browser.png"), full_page=True)

                # the chat page: the browser's WebSocket and a Python peer over P2P in one room
                chat = await browser.new_page()
                await chat.goto(f"http://chat.test.localhost:{port}/ui")
                await chat.wait_for_selector("body[data-open='1']", timeout=20_000)
                python_peer = await Node.bind()
                try:
                    async with websocket_connect(python_peer, c.node.node_addr(), "/ws") as ws:
                        await chat.wait_for_selector("li.join >> nth=1", timeout=20_000)  # the peer joined
                        await ws.send("hello browser")
                        await chat.wait_for_selector("li.message:has-text('hello browser')", timeout=20_000)
                        await chat.fill("#text", "hello python")
                        await chat.click("button")
                        async with asyncio.timeout(20):
                            while True:
                                msg = json.loads(await ws.receive())
                                if msg["type"] == "message" and msg["text"] == "hello python":
                                    break
                finally:
                    await python_peer.close()
                await chat.screenshot(path=str(tmp_path / "gateway-chat.png"))
    finally:
        await directory.close()
