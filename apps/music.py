"""A small music library, served to peers with ``asgi-p2p apps.music:app``.

Routes::

    GET  /                       what this is, and who you are (your node id)
    GET  /ui                     a web page listing the tracks, each with an <audio> player
    GET  /tracks                 every track (JSON)
    GET  /tracks/{id}            one track (JSON)
    GET  /tracks/{id}/audio      the audio file (Range requests answered with 206)
    GET  /albums                 every album (JSON)
    GET  /albums/{id}/art        album art (PNG or SVG)
    GET  /playlists              playlists made by peers (JSON)
    POST /playlists              make one: JSON {"name": ..., "tracks": [ids]} or a form name=...&tracks=a,b

The library is the directory named by ``MUSIC_DIR`` (audio files, grouped into
albums by folder, art from ``cover.png|jpg|svg`` in the folder).  Without
``MUSIC_DIR`` the app writes a few short synthetic WAV tracks and PNG covers to a
temporary directory at startup and deletes them at shutdown.  A ``MUSIC_DIR`` that
does not exist fails the lifespan startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import wave
import zlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

__all__ = ["Library", "Track", "app", "create_app", "generate_library"]

log = logging.getLogger("apps.music")

AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
}
ART_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
MAX_PLAYLISTS = 1000
MAX_BODY = 64 * 1024


@dataclass
class Track:
    id: str
    title: str
    artist: str
    album: str
    album_id: str
    duration: float | None
    size: int
    content_type: str
    path: Path = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["path"]
        d["audio_url"] = f"/tracks/{self.id}/audio"
        d["art_url"] = f"/albums/{self.album_id}/art"
        return d


@dataclass
class Album:
    id: str
    title: str
    track_ids: list[str]
    art: Path | None = field(repr=False, default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "tracks": self.track_ids,
            "art_url": f"/albums/{self.id}/art" if self.art else None,
        }


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or hashlib.sha256(text.encode()).hexdigest()[:8]


def _wav_duration(path: Path) -> float | None:
    try:
        with wave.open(str(path), "rb") as w:
            return round(w.getnframes() / w.getframerate(), 3)
    except (wave.Error, EOFError, OSError):
        return None


class Library:
    """The tracks and albums found in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tracks: dict[str, Track] = {}
        self.albums: dict[str, Album] = {}
        self.scan()

    def scan(self) -> None:
        self.tracks.clear()
        self.albums.clear()
        for path in sorted(self.root.rglob("*")):
            ctype = AUDIO_TYPES.get(path.suffix.lower())
            if ctype is None or not path.is_file():
                continue
            folder = path.parent
            album_title = folder.name if folder != self.root else "Singles"
            album_id = _slug(album_title)
            album = self.albums.get(album_id)
            if album is None:
                album = self.albums[album_id] = Album(album_id, album_title, [], _find_art(folder))
            artist, _, title = path.stem.partition(" - ")
            if not title:
                artist, title = "Unknown artist", path.stem
            track_id = _slug(f"{album_id}-{path.stem}")
            while track_id in self.tracks:
                track_id += "-x"
            self.tracks[track_id] = Track(
                id=track_id,
                title=title.strip(),
                artist=artist.strip(),
                album=album_title,
                album_id=album_id,
                duration=_wav_duration(path) if ctype == "audio/wav" else None,
                size=path.stat().st_size,
                content_type=ctype,
                path=path,
            )
            album.track_ids.append(track_id)


def _find_art(folder: Path) -> Path | None:
    for name in ("cover", "folder", "art"):
        for ext in ART_TYPES:
            p = folder / f"{name}{ext}"
            if p.is_file():
                return p
    return None


# -- synthetic library -------------------------------------------------------------

_NOTES = {"C": -9, "D": -7, "E": -5, "F": -4, "G": -2, "A": 0, "B": 2}
SAMPLE_RATE = 22050

DEMO_ALBUMS: dict[str, tuple[tuple[int, int, int], list[tuple[str, str, float]]]] = {
    "Loopback Sessions": (
        (40, 90, 160),
        [
            ("The Handshakes - Hello Peer", "C4 E4 G4 C5 G4 E4 C4 G3", 0.25),
            ("The Handshakes - Mutual TLS", "A3 C4 E4 A4 E4 C4 A3 E3", 0.25),
        ],
    ),
    "Hole Punching": (
        (170, 60, 60),
        [
            ("NAT Traversal - Call Me Maybe", "G3 B3 D4 G4 F4 D4 B3 G3", 0.2),
            ("NAT Traversal - Relay Fallback", "F3 A3 C4 F4 C4 A3 F3 C3", 0.3),
        ],
    ),
}


def _freq(note: str) -> float:
    name, octave = note[0], int(note[-1])
    sharp = 1 if "#" in note else 0
    semis = _NOTES[name] + sharp + (octave - 4) * 12
    return 440.0 * 2 ** (semis / 12)


def write_tone_wav(path: Path, melody: str, beat: float) -> None:
    """A short 16-bit mono WAV playing ``melody`` (space-separated notes, ``beat`` seconds each)."""
    frames = bytearray()
    per_note = int(SAMPLE_RATE * beat)
    fade = max(1, per_note // 10)
    for note in melody.split():
        f = _freq(note)
        step = 2 * math.pi * f / SAMPLE_RATE
        for i in range(per_note):
            env = min(1.0, i / fade, (per_note - i) / fade)
            s = math.sin(step * i) + 0.3 * math.sin(2 * step * i)
            frames += struct.pack("<h", int(9000 * env * s))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(bytes(frames))


def write_cover_png(path: Path, rgb: tuple[int, int, int], size: int = 64) -> None:
    """A small gradient PNG (no image library needed)."""
    r0, g0, b0 = rgb
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter: none
        for x in range(size):
            t = (x + y) / (2 * size)
            ring = 40 if (x - size // 2) ** 2 + (y - size // 2) ** 2 < (size // 5) ** 2 else 0
            r = int(r0 + (255 - r0) * t) - ring
            g = int(g0 * (1 - t) + 30 * t)
            b = int(b0 + (255 - b0) * t * 0.5)
            rows += bytes(max(0, min(255, v)) for v in (r, g, b))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(bytes(rows), 9))
    png += chunk(b"IEND", b"")
    path.write_bytes(png)


def generate_library(root: Path) -> None:
    """Write the demo albums (WAV tracks and PNG covers) under ``root``."""
    for album, (rgb, tracks) in DEMO_ALBUMS.items():
        folder = root / album
        folder.mkdir(parents=True, exist_ok=True)
        write_cover_png(folder / "cover.png", rgb)
        for name, melody, beat in tracks:
            write_tone_wav(folder / f"{name}.wav", melody, beat)


# -- the app ------------------------------------------------------------------------


def _library(request: Request) -> Library:
    lib: Library = request.app.state.library
    return lib


def _track(request: Request) -> Track:
    track = _library(request).tracks.get(request.path_params["track_id"])
    if track is None:
        raise HTTPException(404, f"no track {request.path_params['track_id']!r}")
    return track


def peer_id(request: Request) -> str | None:
    """The node id of the peer making the request (proven by mutual TLS), if served by asgi-p2p."""
    ext = request.scope.get("extensions") or {}
    p2p = ext.get("p2p") or {}
    value = p2p.get("peer_id")
    return str(value) if value is not None else None


async def index(request: Request) -> JSONResponse:
    lib = _library(request)
    return JSONResponse(
        {
            "app": "asgi-p2p music library",
            "you": peer_id(request),
            "tracks": len(lib.tracks),
            "albums": len(lib.albums),
            "routes": [
                "/ui",
                "/tracks",
                "/tracks/{id}",
                "/tracks/{id}/audio",
                "/albums",
                "/albums/{id}/art",
                "/playlists",
            ],
        }
    )


#: The web page (for browsers reaching the app through ``asgi-p2p gateway``).  Every URL in it is
#: relative, so it also works below a path prefix (a path-style gateway's ``/<node-id>/ui``).
UI_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asgi-p2p music</title>
<style>
body { font: 15px system-ui, sans-serif; margin: 2em; background: #f6f5f2; color: #222; }
h1 { font-size: 1.4em; } .you { color: #666; font-size: .85em; word-break: break-all; }
li { list-style: none; display: flex; align-items: center; gap: 1em; margin: .6em 0; }
li img { width: 48px; height: 48px; border-radius: 6px; } .title { min-width: 22em; }
</style></head>
<body><h1>asgi-p2p music</h1><p class="you" id="you"></p><ul id="tracks"></ul>
<script>
async function load() {
  const info = await (await fetch("./")).json();
  document.getElementById("you").textContent = "served over HTTP/3 to node " + info.you;
  const tracks = await (await fetch("tracks")).json();
  const list = document.getElementById("tracks");
  for (const t of tracks) {
    const li = document.createElement("li");
    li.className = "track";
    li.dataset.id = t.id;
    const img = document.createElement("img");
    img.src = t.art_url.slice(1);
    img.alt = "";
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = t.title + " - " + t.album;
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "metadata";
    audio.src = t.audio_url.slice(1);
    li.append(img, title, audio);
    list.append(li);
  }
  document.body.dataset.loaded = String(tracks.length);
}
load();
</script></body></html>
"""


async def ui(request: Request) -> HTMLResponse:
    return HTMLResponse(UI_PAGE)


async def list_tracks(request: Request) -> JSONResponse:
    return JSONResponse([t.to_json() for t in _library(request).tracks.values()])


async def track_info(request: Request) -> JSONResponse:
    return JSONResponse(_track(request).to_json())


async def track_audio(request: Request) -> Response:
    track = _track(request)
    return FileResponse(
        track.path, media_type=track.content_type, filename=track.path.name, content_disposition_type="inline"
    )


async def list_albums(request: Request) -> JSONResponse:
    return JSONResponse([a.to_json() for a in _library(request).albums.values()])


async def album_art(request: Request) -> Response:
    album = _library(request).albums.get(request.path_params["album_id"])
    if album is None:
        raise HTTPException(404, f"no album {request.path_params['album_id']!r}")
    if album.art is None:
        raise HTTPException(404, f"album {album.id!r} has no art")
    return FileResponse(album.art, media_type=ART_TYPES[album.art.suffix.lower()])


async def list_playlists(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.playlists)


async def create_playlist(request: Request) -> JSONResponse:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(413, f"playlist bodies are limited to {MAX_BODY} bytes")
    ctype = request.headers.get("content-type", "")
    name: Any
    tracks: Any
    if "json" in ctype:
        import json

        try:
            data = json.loads(body)
        except ValueError:
            raise HTTPException(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, 'expected {"name": ..., "tracks": [...]}')
        name, tracks = data.get("name"), data.get("tracks", [])
    else:
        from urllib.parse import parse_qs

        form = parse_qs(body.decode("utf-8", "replace"))
        names = form.get("name")
        name = names[0] if names else None
        tracks = [t for v in form.get("tracks", []) for t in v.split(",") if t]
    if not isinstance(name, str) or not name.strip():
        raise HTTPException(400, "a playlist needs a name")
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise HTTPException(400, "tracks must be a list of track ids")
    unknown = [t for t in tracks if t not in _library(request).tracks]
    if unknown:
        raise HTTPException(400, f"unknown track ids: {', '.join(unknown)}")
    playlists: list[dict[str, Any]] = request.app.state.playlists
    if len(playlists) >= MAX_PLAYLISTS:
        raise HTTPException(507, "too many playlists")
    playlist = {"id": len(playlists) + 1, "name": name.strip(), "tracks": tracks, "owner": peer_id(request)}
    playlists.append(playlist)
    return JSONResponse(playlist, status_code=201)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _open_library_dir(configured: str | os.PathLike[str] | None) -> tuple[Path, Path | None]:
    """The library directory, and the temporary one to delete at shutdown (if generated)."""
    if configured is None:
        tmp = Path(tempfile.mkdtemp(prefix="asgi-p2p-music-"))
        generate_library(tmp)
        log.info("generated a demo library in %s", tmp)
        return tmp, tmp
    root = Path(configured).expanduser()
    if not root.is_dir():
        raise RuntimeError(f"MUSIC_DIR {str(root)!r} is not a directory")
    return root, None


def create_app(music_dir: str | os.PathLike[str] | None = None) -> Starlette:
    """The music app; ``music_dir`` (else ``$MUSIC_DIR``, else a generated library) is read at startup."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        configured = music_dir if music_dir is not None else os.environ.get("MUSIC_DIR") or None
        root, tmp = await asyncio.to_thread(_open_library_dir, configured)
        app.state.library = await asyncio.to_thread(Library, root)
        app.state.playlists = []
        log.info(
            "music library %s: %d tracks in %d albums",
            root,
            len(app.state.library.tracks),
            len(app.state.library.albums),
        )
        try:
            yield
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/ui", ui),
            Route("/tracks", list_tracks),
            Route("/tracks/{track_id}", track_info),
            Route("/tracks/{track_id}/audio", track_audio, methods=["GET", "HEAD"]),
            Route("/albums", list_albums),
            Route("/albums/{album_id}/art", album_art, methods=["GET", "HEAD"]),
            Route("/playlists", list_playlists, methods=["GET"]),
            Route("/playlists", create_playlist, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


app = create_app()
