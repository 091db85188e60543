"""The admin socket: a local unix socket through which ``asgi-p2p status``, ``invite`` and ``peers`` talk to a node.

Protocol: JSON lines.  Each request is one JSON object on one line with a
``"command"`` field (and that command's arguments); each answer is one line,
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.  A
connection may send several requests, one after the other.

Only the user running the node (and root) may use it: the socket is created mode
0600 (in a directory created 0700), and on Linux each connection's peer credentials
(``SO_PEERCRED``) are checked against those users; anyone else gets an error line
and is disconnected.  (Elsewhere only the file mode protects it.)  A request is at most :data:`MAX_REQUEST` bytes, a
connection idle for ``timeout`` seconds is closed, and at most ``max_clients``
connections are served at once.

Commands register with :meth:`AdminServer.register`::

    admin = AdminServer(path)
    admin.register("status", lambda request: {"node_id": str(node.node_id)}, "this node's state")
    await admin.start()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import stat
import struct
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidConfiguration, P2PError

__all__ = [
    "MAX_REQUEST",
    "AdminError",
    "AdminHandler",
    "AdminServer",
    "admin_call",
    "check_socket_path",
    "default_admin_dir",
    "find_admin_sockets",
]

log = logging.getLogger("asgi_p2p.ops.admin")

#: Largest request line (and answer line a client reads), in bytes.
MAX_REQUEST = 64 * 1024
_MAX_ANSWER = 4 * 1024 * 1024
#: Unix socket paths are limited to 108 bytes including the terminating NUL on Linux.
_MAX_PATH = 107

#: A command: gets the request object, returns a JSON-serializable result (or awaits one).
#: Raise :class:`AdminError` to answer with an error.
AdminHandler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


class AdminError(P2PError):
    """A command failed (its message is the answer's ``error``), or the admin socket cannot be used."""


@dataclass
class _Command:
    handler: AdminHandler
    help: str


def default_admin_dir() -> Path:
    """Where nodes put their admin sockets by default: ``$XDG_RUNTIME_DIR/asgi-p2p``.

    Without ``XDG_RUNTIME_DIR``: ``/run/user/UID/asgi-p2p`` if that runtime dir exists,
    else ``asgi-p2p-UID/`` in the temporary directory (created 0700).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "asgi-p2p"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    run_user = Path(f"/run/user/{uid}")
    if run_user.is_dir() and os.access(run_user, os.W_OK):
        return run_user / "asgi-p2p"
    return Path(tempfile.gettempdir()) / f"asgi-p2p-{uid}"


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` 0700 if missing; refuse a directory that is not ours or that others may write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as exc:
        raise AdminError(f"cannot create the admin socket directory {path}: {exc.strerror or exc}") from None
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise AdminError(f"admin socket directory {path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o022:
        raise AdminError(f"admin socket directory {path} may be written by others (mode {st.st_mode & 0o777:o})")


def check_socket_path(path: Path) -> None:
    """Raise :class:`InvalidConfiguration` for a path a unix socket cannot have."""
    size = len(os.fsencode(path))
    if size > _MAX_PATH:
        raise InvalidConfiguration(
            f"admin socket path {path} is {size} bytes; unix sockets allow {_MAX_PATH}: choose a shorter one"
        )


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a unix socket (None where the OS does not say)."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    return None


def find_admin_sockets(directory: Path | None = None) -> list[Path]:
    """The admin sockets in ``directory`` (default: :func:`default_admin_dir`), sorted."""
    directory = directory if directory is not None else default_admin_dir()
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.suffix == ".sock" and stat.S_ISSOCK(entry.stat().st_mode):
                found.append(entry)
    return found


class AdminServer:
    """The admin socket of one node (see the module docstring)."""

    def __init__(
        self, path: Path, *, timeout: float = 10.0, max_clients: int = 16, allowed_uids: frozenset[int] | None = None
    ) -> None:
        check_socket_path(path)
        self.path = path
        #: the users whose connections are answered (default: the node's user and root)
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({os.getuid(), 0})
        self.timeout = timeout
        self.max_clients = max_clients
        self._commands: dict[str, _Command] = {}
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        #: connections refused because their user was not ours
        self.refused_users = 0
        self.register("help", self._help, "list the commands of this socket")

    @property
    def commands(self) -> list[str]:
        return sorted(self._commands)

    def register(self, name: str, handler: AdminHandler, help: str) -> None:
        """Answer requests ``{"command": name, ...}`` with ``handler(request)``."""
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"command names are letters, digits, - and _, got {name!r}")
        self._commands[name] = _Command(handler, help)

    def _help(self, _request: dict[str, Any]) -> dict[str, str]:
        return {name: cmd.help for name, cmd in sorted(self._commands.items())}

    async def start(self) -> None:
        """Bind the socket (mode 0600); a stale socket of a node that is gone is replaced."""
        if self.path.parent == default_admin_dir():
            _ensure_private_dir(self.path.parent)
        elif not self.path.parent.is_dir():
            raise AdminError(f"admin socket directory {self.path.parent} does not exist")
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise AdminError(f"{self.path} exists and is not a socket; not replacing it")
            if await self._alive():
                raise AdminError(
                    f"admin socket {self.path} is in use by another running node (choose another --admin-socket)"
                )
            self.path.unlink()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        except OSError as exc:
            raise AdminError(f"cannot bind admin socket {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.debug("admin socket listening at %s", self.path)

    async def _alive(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                _reader, writer = await asyncio.open_unix_connection(str(self.path))
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def close(self) -> None:
        """Stop answering, drop the connections and remove the socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2.0)
        with contextlib.suppress(OSError):
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connections ------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._conversation(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels the connections it owns; asyncio would log a cancelled
            # client_connected_cb task as an error, so this one ends normally
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _conversation(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = _peer_uid(sock) if sock is not None else None
        if uid is not None and uid not in self.allowed_uids:
            self.refused_users += 1
            allowed = ", ".join(map(str, sorted(self.allowed_uids)))
            log.warning("admin socket %s: refused a connection from uid %d (only uid %s)", self.path, uid, allowed)
            await self._answer(writer, {"ok": False, "error": f"refused: uid {uid} is not the node's user"})
            return
        if len(self._clients) > self.max_clients:
            await self._answer(writer, {"ok": False, "error": "busy: too many admin connections"})
            return
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    line = await reader.readline()
            except TimeoutError:
                await self._answer(writer, {"ok": False, "error": f"idle for {self.timeout:g} s; closing"})
                return
            except ValueError:  # the line is longer than the stream's limit
                await self._answer(writer, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                return
            if not line:
                return
            if not line.strip():
                continue
            answer = await self._dispatch(line)
            await self._answer(writer, answer)

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            return {"ok": False, "error": f"request is not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'a request is a JSON object with a "command" string'}
        name = request["command"]
        cmd = self._commands.get(name)
        if cmd is None:
            return {"ok": False, "error": f"unknown command {name!r} (commands: {', '.join(self.commands)})"}
        try:
            async with asyncio.timeout(self.timeout):
                result = cmd.handler(request)
                if inspect.isawaitable(result):
                    result = await result
        except AdminError as exc:
            return {"ok": False, "error": str(exc)}
        except TimeoutError:
            return {"ok": False, "error": f"command {name!r} took longer than {self.timeout:g} s"}
        except Exception as exc:
            log.exception("admin command %r failed", name)
            return {"ok": False, "error": f"command {name!r} failed: {type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}

    async def _answer(self, writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        async with asyncio.timeout(self.timeout):
            await writer.drain()


async def admin_call(path: Path, command: str, *, timeout: float = 10.0, **args: Any) -> Any:
    """Send one request to the admin socket at ``path``; returns its ``result``.

    Raises :class:`AdminError` when the socket cannot be reached or the command fails.
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=_MAX_ANSWER)
            try:
                writer.write(json.dumps({**args, "command": command}).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        raise AdminError(f"admin socket {path} did not answer within {timeout:g} s") from None
    except FileNotFoundError:
        raise AdminError(f"no admin socket at {path} (is the node running?)") from None
    except PermissionError:
        raise AdminError(f"admin socket {path}: permission denied (it belongs to another user)") from None
    except ConnectionRefusedError:
        raise AdminError(f"admin socket {path} refuses connections (the node is not running)") from None
    except (OSError, ValueError) as exc:
        raise AdminError(f"admin socket {path}: {exc}") from None
    if not line:
        raise AdminError(f"admin socket {path} closed the connection without an answer")
    try:
        answer = json.loads(line)
    except ValueError:
        raise AdminError(f"admin socket {path} answered something that is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise AdminError(f"admin socket {path} answered {line[:80]!r}")
    if not answer["ok"]:
        raise AdminError(str(answer.get("error", "failed")))
    return answer.get("result")
