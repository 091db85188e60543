"""Which networks block UDP to a relay: the relay client's memory of its UDP/TCP race, per network.

A relay client whose URL has a TCP port races its QUIC (UDP) connection against one over
TLS + WebSocket, with a head start for UDP (see :class:`~asgi_p2p.relay.client.RelayClient`).
On a network that drops UDP that head start is paid on every connect.  As Tailscale's
netcheck does, the outcome is remembered per *network*: keyed by the relay and the local
address the operating system picks to reach it (:func:`source_address`: a connected UDP
socket's ``getsockname``; no packet is sent).  On a network remembered as blocking UDP
the client dials TCP at once (still racing UDP, still retrying it periodically and moving
back); another network (another source address) starts with UDP again.

:class:`TransportMemory` is sans-I/O (every method takes ``now``, Unix time by the
endpoint's network clock) and bounded (:attr:`~TransportMemory.max_entries` networks,
entries older than :attr:`~TransportMemory.max_age` forgotten).  With a ``path`` it is
kept in a small JSON file (mode 0600, replaced atomically on every change) so that a
fresh process on a blocking network skips the head start too; ``asgi-p2p get --key-file``
keeps one in ``$XDG_CACHE_HOME/asgi-p2p/networks/``.

Two networks that hand out the same private address (two homes on 192.168.1.0/24) look
the same: a node that moves between them starts the race with what the other taught it,
and the race corrects the memory at once (UDP still wins when it works).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_MAX_ENTRIES", "Network", "TransportMemory", "source_address"]

log = logging.getLogger("asgi_p2p.relay")

DEFAULT_MAX_ENTRIES = 64
#: a week: networks that block UDP rarely stop doing so, and a stale entry costs only the move back
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
_FORMAT = 1
#: a memory file larger than this is not read (64 entries take ~10 KB)
_MAX_FILE_BYTES = 256 * 1024


def source_address(relay: tuple[str, int]) -> str | None:
    """The local address the OS sends from to ``relay`` (None if it has no route there).

    Connecting a UDP socket picks the route and the source address without sending anything.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(relay[0]).version == 6 else socket.AF_INET
    except ValueError:
        return None
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(relay)
            return str(sock.getsockname()[0])
    except OSError:
        return None


@dataclass(frozen=True)
class Network:
    """What identifies "this network" for one relay: the local source address and the relay."""

    #: the local address the OS picks to reach the relay ("" if none could be found)
    local: str
    #: the relay's node id and address (``NODE_ID@HOST:PORT``)
    relay: str

    def key(self) -> str:
        return f"{self.local}>{self.relay}"

    def __str__(self) -> str:
        return f"from {self.local or '(unknown address)'} to relay {self.relay}"


class TransportMemory:
    """The networks on which UDP to a relay did not work (TCP won the race), with when that was learned.

    Args:
        path: keep the memory in this JSON file (read now, rewritten on every change).
        max_entries: networks remembered at most (the oldest are forgotten first).
        max_age: seconds after which an entry is forgotten.
        source: finds the local address towards a relay (default :func:`source_address`).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age: float = DEFAULT_MAX_AGE,
        source: Callable[[tuple[str, int]], str | None] = source_address,
    ) -> None:
        if max_entries <= 0 or max_age <= 0:
            raise ValueError("need max_entries > 0 and max_age > 0")
        self.path = Path(path) if path is not None else None
        self.max_entries = max_entries
        self.max_age = max_age
        self.source = source
        #: network key -> Unix time UDP was last seen blocked there
        self._blocked: dict[str, float] = {}
        if self.path is not None:
            self._load(self.path)

    def network(self, relay_id: str, relay_addr: tuple[str, int] | None) -> Network:
        """The network we are on now, for the relay ``relay_id`` at ``relay_addr``."""
        if relay_addr is None:
            return Network("", relay_id)
        local = self.source(relay_addr) or ""
        host = f"[{relay_addr[0]}]" if ":" in relay_addr[0] else relay_addr[0]
        return Network(local, f"{relay_id}@{host}:{relay_addr[1]}")

    def udp_blocked_since(self, network: Network, now: float) -> float | None:
        """When UDP was last seen blocked on ``network`` (None: not remembered, or too long ago)."""
        since = self._blocked.get(network.key())
        if since is None:
            return None
        if not (now - self.max_age <= since <= now + 60.0):  # expired, or from a clock far ahead
            del self._blocked[network.key()]
            self._changed()
            return None
        return since

    def remember(self, network: Network, transport: str, now: float) -> bool:
        """Record the outcome on ``network``: ``"tcp"`` (UDP did not work) or ``"udp"``. True if it changed."""
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}")
        key = network.key()
        if transport == "udp":
            if self._blocked.pop(key, None) is None:
                return False
        else:
            self._blocked.pop(key, None)
            self._blocked[key] = now  # newest last
            self._prune(now)
        self._changed()
        return True

    def __len__(self) -> int:
        return len(self._blocked)

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._blocked.items() if not now - self.max_age <= t <= now + 60.0]:
            del self._blocked[key]
        while len(self._blocked) > self.max_entries:
            del self._blocked[min(self._blocked, key=self._blocked.__getitem__)]

    # -- the file -----------------------------------------------------------------------------

    def encode(self) -> bytes:
        return json.dumps({"format": _FORMAT, "udp_blocked": self._blocked}, indent=1).encode()

    def decode(self, data: bytes) -> None:
        """Replace the entries with those of ``data`` (as :meth:`encode` writes); raises ValueError."""
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT or not isinstance(obj.get("udp_blocked"), dict):
            raise ValueError(f"not a relay transport memory (format {_FORMAT})")
        entries: dict[str, float] = {}
        for key, when in obj["udp_blocked"].items():
            number = isinstance(when, (int, float)) and not isinstance(when, bool)
            if not isinstance(key, str) or len(key) > 512 or not number:
                raise ValueError(f"bad entry {key!r}: {when!r}")
            entries[key] = float(when)
        # the newest max_entries, oldest first (pruning by age happens on use: this reads no clock)
        self._blocked = dict(sorted(entries.items(), key=lambda kv: kv[1])[-self.max_entries :])

    def _load(self, path: Path) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("not using the relay transport memory in %s: %s", path, exc)
            return
        if st.st_mode & 0o077:
            log.warning(
                "not using the relay transport memory in %s: accessible by group or others (run `chmod 600 %s`)",
                path,
                path,
            )
            return
        if st.st_size > _MAX_FILE_BYTES:
            log.warning("not using the relay transport memory in %s: %d bytes is too large", path, st.st_size)
            return
        try:
            self.decode(path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("not using the relay transport memory in %s: %s", path, exc)

    def _changed(self) -> None:
        path = self.path
        if path is None:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.encode())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not keep the relay transport memory in %s: %s", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
