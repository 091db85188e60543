"""NAT behaviour as classified by RFC 4787.

A :class:`NatConfig` describes the behaviour; :class:`NatTable` is the state of
one NAT box (its mappings), used by the simulated network for translation.

* **Mapping** (RFC 4787 section 4.1): endpoint-independent (one external port per
  internal address and port, whatever the destination), address-dependent (one
  per destination IP) or address-and-port-dependent ("symmetric": one per
  destination IP and port).
* **Filtering** (section 5): endpoint-independent (anyone may send to a mapped
  port), address-dependent (only IPs the inside has sent to) or
  address-and-port-dependent (only IP:port pairs the inside has sent to).
* **Port assignment** (section 4.2.1): preserve the internal port when free, else
  (or always, with ``"random"``) a random free port from the simulation's RNG.
* **Mapping timeout** (section 4.3): a mapping idle for ``mapping_timeout``
  virtual seconds disappears; outbound packets refresh it, inbound ones only with
  ``inbound_refresh``.
* **Hairpinning** (section 6): a packet from the inside to the box's own public
  address is translated and turned back inside (with the sender's public
  address as source) when enabled, dropped when not.
* An inbound packet that matches no mapping is dropped: it never creates one.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from ..net.base import Address

__all__ = ["NAT_PRESETS", "Filtering", "Mapping", "NatConfig", "NatMapping", "NatTable"]


class Mapping(enum.Enum):
    """RFC 4787 mapping behaviour."""

    ENDPOINT_INDEPENDENT = "EIM"
    ADDRESS_DEPENDENT = "ADM"
    ADDRESS_AND_PORT_DEPENDENT = "APDM"


class Filtering(enum.Enum):
    """RFC 4787 filtering behaviour."""

    ENDPOINT_INDEPENDENT = "EIF"
    ADDRESS_DEPENDENT = "ADF"
    ADDRESS_AND_PORT_DEPENDENT = "APDF"


@dataclass(frozen=True)
class NatConfig:
    """How one NAT box behaves."""

    mapping: Mapping = Mapping.ENDPOINT_INDEPENDENT
    filtering: Filtering = Filtering.ADDRESS_AND_PORT_DEPENDENT
    #: ``"preserve"`` (keep the internal port when free, else random) or ``"random"``.
    port_assignment: str = "preserve"
    #: Seconds of virtual time a mapping survives without traffic.
    mapping_timeout: float = 120.0
    #: Whether inbound packets refresh a mapping (outbound ones always do).
    inbound_refresh: bool = False
    hairpinning: bool = False
    #: The box's public address; None: assigned by the simulation.
    public_address: str | None = None

    def __post_init__(self) -> None:
        if self.port_assignment not in ("preserve", "random"):
            raise ValueError(f"port_assignment must be 'preserve' or 'random', got {self.port_assignment!r}")
        if self.mapping_timeout <= 0:
            raise ValueError("mapping_timeout must be positive")

    @property
    def label(self) -> str:
        """Short RFC 4787 label, e.g. ``EIM/APDF``."""
        return f"{self.mapping.value}/{self.filtering.value}"


#: Common names for NAT behaviours ("cone" names from RFC 3489, as RFC 4787 maps them).
NAT_PRESETS: dict[str, NatConfig] = {
    "full-cone": NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT),
    "restricted-cone": NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT),
    "port-restricted-cone": NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT),
    "symmetric": NatConfig(
        Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, port_assignment="random"
    ),
}
NAT_PRESETS["easy"] = NAT_PRESETS["port-restricted-cone"]
NAT_PRESETS["hard"] = NAT_PRESETS["symmetric"]


@dataclass
class NatMapping:
    """One translation: internal endpoint <-> external port."""

    internal: Address
    external_port: int
    #: Mapping key (internal endpoint plus the destination part the mapping depends on).
    key: tuple[object, ...]
    created: float
    last_active: float
    #: Remote IPs and IP:port pairs the inside has sent to through this mapping.
    contacted_ips: set[str] = field(default_factory=set)
    contacted: set[Address] = field(default_factory=set)


class NatTable:
    """The mappings of one NAT box and the RFC 4787 rules applied to them."""

    PORT_MIN = 1024
    PORT_MAX = 65535

    def __init__(self, config: NatConfig, public_ip: str, rng: random.Random) -> None:
        self.config = config
        self.public_ip = public_ip
        self._rng = rng
        self._by_key: dict[tuple[object, ...], NatMapping] = {}
        self._by_port: dict[int, NatMapping] = {}
        #: Counters: created / expired mappings, filtered inbound packets.
        self.created = 0
        self.expired = 0
        self.filtered = 0

    def _key(self, internal: Address, remote: Address) -> tuple[object, ...]:
        m = self.config.mapping
        if m is Mapping.ENDPOINT_INDEPENDENT:
            return (internal,)
        if m is Mapping.ADDRESS_DEPENDENT:
            return (internal, remote[0])
        return (internal, remote)

    def _expired(self, mapping: NatMapping, now: float) -> bool:
        return now - mapping.last_active > self.config.mapping_timeout

    def _drop_mapping(self, mapping: NatMapping) -> None:
        self._by_key.pop(mapping.key, None)
        if self._by_port.get(mapping.external_port) is mapping:
            del self._by_port[mapping.external_port]
        self.expired += 1

    def _pick_port(self, internal_port: int) -> int:
        if self.config.port_assignment == "preserve" and internal_port not in self._by_port:
            return internal_port
        for _ in range(1000):
            port = self._rng.randint(self.PORT_MIN, self.PORT_MAX)
            if port not in self._by_port:
                return port
        for port in range(self.PORT_MIN, self.PORT_MAX + 1):  # pragma: no cover - table nearly full
            if port not in self._by_port:
                return port
        raise RuntimeError("NAT port table full")  # pragma: no cover

    def outbound(self, internal: Address, remote: Address, now: float) -> tuple[Address, bool]:
        """Translate an outbound packet's source; returns (external address, mapping was created)."""
        key = self._key(internal, remote)
        mapping = self._by_key.get(key)
        if mapping is not None and self._expired(mapping, now):
            self._drop_mapping(mapping)
            mapping = None
        created = False
        if mapping is None:
            port = self._pick_port(internal[1])
            old = self._by_port.get(port)
            if old is not None:  # an expired mapping still holding the port
                self._drop_mapping(old)
            mapping = NatMapping(internal, port, key, now, now)
            self._by_key[key] = mapping
            self._by_port[port] = mapping
            self.created += 1
            created = True
        mapping.last_active = now
        mapping.contacted_ips.add(remote[0])
        mapping.contacted.add(remote)
        return (self.public_ip, mapping.external_port), created

    def inbound(self, external_port: int, remote: Address, now: float) -> tuple[Address | None, str]:
        """Translate an inbound packet's destination.

        Returns (internal address, "") or (None, reason) when the packet is dropped:
        ``no-mapping``, ``expired`` or ``filtered``.
        """
        mapping = self._by_port.get(external_port)
        if mapping is None:
            return None, "no-mapping"
        if self._expired(mapping, now):
            self._drop_mapping(mapping)
            return None, "expired"
        f = self.config.filtering
        allowed = (
            f is Filtering.ENDPOINT_INDEPENDENT
            or (f is Filtering.ADDRESS_DEPENDENT and remote[0] in mapping.contacted_ips)
            or (f is Filtering.ADDRESS_AND_PORT_DEPENDENT and remote in mapping.contacted)
        )
        if not allowed:
            self.filtered += 1
            return None, "filtered"
        if self.config.inbound_refresh:
            mapping.last_active = now
        return mapping.internal, ""

    def mappings(self, now: float | None = None) -> list[NatMapping]:
        """Current mappings (those not yet expired at ``now`` if given), oldest first."""
        items = list(self._by_key.values())
        if now is not None:
            items = [m for m in items if not self._expired(m, now)]
        return items
