"""The packet trace of a simulation: every send, drop, duplication and delivery.

The trace hash covers ``(virtual time in ns, event kind, source, destination,
length)`` of every event, never payload bytes: a C extension's own generator (OpenSSL's,
which an app may draw from) cannot be seeded; it changes bytes but not counts, sizes or
timing (every Python-level source is seeded, see :mod:`asgi_p2p.sim.determinism`; the TLS
key shares come from ``secrets``, see ``aioquic_compat.urandom_key_shares``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import IO, NamedTuple

from ..net.base import Address

__all__ = ["Trace", "TraceEvent"]


class TraceEvent(NamedTuple):
    """One event of the trace."""

    #: Nanoseconds of virtual time since the simulation started.
    time_ns: int
    #: ``send``, ``deliver``, ``dup``, ``drop:<reason>`` or ``nat:<what>``.
    kind: str
    src: Address
    dst: Address
    length: int
    #: Where it happened (host, NAT box or link name); not part of the hash.
    where: str = ""

    def key(self) -> str:
        """The hashed form of the event."""
        return f"{self.time_ns} {self.kind} {self.src[0]}:{self.src[1]} {self.dst[0]}:{self.dst[1]} {self.length}\n"

    def to_json(self) -> str:
        """One JSON object (a line of the JSON-lines export)."""
        return json.dumps(
            {
                "t": self.time_ns / 1e9,
                "kind": self.kind,
                "src": f"{self.src[0]}:{self.src[1]}",
                "dst": f"{self.dst[0]}:{self.dst[1]}",
                "len": self.length,
                "at": self.where,
            },
            separators=(",", ":"),
        )


class Trace:
    """Records events, keeps a running SHA-256 and counts by kind.

    Args:
        keep: keep the events in memory (for :meth:`events`, :meth:`export_jsonl`);
            the hash and counters are always maintained.
    """

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self._events: list[TraceEvent] = []
        self._sha = hashlib.sha256()
        #: Number of events by kind.
        self.counts: Counter[str] = Counter()

    def record(self, event: TraceEvent) -> None:
        """Add one event."""
        self._sha.update(event.key().encode())
        self.counts[event.kind] += 1
        if self.keep:
            self._events.append(event)

    def record_fields(self, time_ns: int, kind: str, src: Address, dst: Address, length: int, where: str) -> None:
        """Add one event given as fields (what :meth:`record` does, without building the
        event when it is not kept: the simulator records two per packet)."""
        if self.keep:
            self.record(TraceEvent(time_ns, kind, src, dst, length, where))
            return
        self._sha.update(f"{time_ns} {kind} {src[0]}:{src[1]} {dst[0]}:{dst[1]} {length}\n".encode())
        self.counts[kind] += 1

    def hash(self) -> str:
        """Hex SHA-256 over every event so far (identical for identical runs)."""
        return self._sha.hexdigest()

    def events(self, kind: str | None = None) -> list[TraceEvent]:
        """Kept events, optionally only those whose kind equals or starts with ``kind:``."""
        if kind is None:
            return list(self._events)
        return [e for e in self._events if e.kind == kind or e.kind.startswith(kind + ":")]

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self._events)

    def __len__(self) -> int:
        return sum(self.counts.values())

    def count(self, kind: str) -> int:
        """Events of ``kind`` (``"drop"`` counts every ``drop:*``)."""
        if ":" in kind:
            return self.counts[kind]
        return sum(n for k, n in self.counts.items() if k == kind or k.startswith(kind + ":"))

    def write_jsonl(self, fp: IO[str]) -> int:
        """Write kept events as JSON lines; returns the number written."""
        for event in self._events:
            fp.write(event.to_json())
            fp.write("\n")
        return len(self._events)

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write kept events to ``path`` as JSON lines; returns the number written."""
        with open(path, "w", encoding="utf-8") as fp:
            return self.write_jsonl(fp)
