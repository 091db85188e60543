"""mDNS / DNS-SD discovery on the local network (python-zeroconf), opt-in.

A node that publishes announces the service ``_asgi-p2p._udp.local.`` with the
instance name ``<node id in z-base-32>._asgi-p2p._udp.local.``, its UDP port,
its IP addresses (A/AAAA records) and TXT keys ``v=1``, ``id=<node id>`` and,
if set, ``name=<name>`` and ``relay=<relay URL>``.  Resolving a NodeId asks for
that instance name; resolving a name browses the service type and picks the
instance whose TXT ``name`` matches.

Announcing tells every host on the LAN that this node exists, so nothing here
opens a socket until :meth:`MdnsDiscovery.start` (or the first publish or
resolve) is called, and the CLI adds this source only with ``--mdns``.  mDNS
answers are unauthenticated hints: anyone on the LAN can answer for any NodeId,
but the QUIC handshake checks the node's key, so a false answer can only make a
connection fail, never reach an impostor.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from ..errors import DiscoveryFailed, InvalidNodeId
from ..identity import NodeAddr, NodeId
from .records import check_name

__all__ = ["MDNS_SERVICE", "MdnsDiscovery"]

log = logging.getLogger("asgi_p2p.discovery")

MDNS_SERVICE = "_asgi-p2p._udp.local."
_TXT_VERSION = b"1"
_MAX_TXT_VALUE = 200
_MAX_BROWSE_RESULTS = 256


def _instance(node_id: NodeId) -> str:
    return f"{node_id}.{MDNS_SERVICE}"


class MdnsDiscovery:
    """Announce our node and find others on the LAN (a :class:`Discovery` source).

    Args:
        interfaces: IP addresses of the interfaces to use (None: all of them).
        timeout: seconds one lookup waits for answers.
        ipv6: also use IPv6 (default IPv4 only).
    """

    label = "mdns"

    def __init__(self, *, interfaces: Sequence[str] | None = None, timeout: float = 3.0, ipv6: bool = False) -> None:
        if timeout <= 0:
            raise ValueError("mDNS timeout must be positive")
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.timeout = timeout
        self.ipv6 = ipv6
        self._azc: Any = None
        self._info: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the mDNS sockets (idempotent)."""
        if self._azc is not None:
            return
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncZeroconf

        version = IPVersion.All if self.ipv6 else IPVersion.V4Only
        interfaces: Any = self.interfaces if self.interfaces is not None else InterfaceChoice.All
        self._azc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
        log.info("mDNS started on %s", self.interfaces or "all interfaces")

    async def close(self) -> None:
        """Withdraw our announcement (if any) and close the sockets."""
        if self._azc is None:
            return
        await self.unpublish()
        azc, self._azc = self._azc, None
        await azc.async_close()

    async def __aenter__(self) -> MdnsDiscovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- publishing ---------------------------------------------------------

    def _service_info(self, addr: NodeAddr, name: str | None) -> Any:
        from zeroconf.asyncio import AsyncServiceInfo

        ips: list[tuple[str, int]] = []
        for host, port in addr.direct_addresses:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if ip.is_unspecified or port == 0 or (ip.version == 6 and not self.ipv6):
                continue
            ips.append((str(ip), port))
        if not ips:
            raise ValueError(f"no concrete IP address to announce in {addr!r} (a wildcard bind has none)")
        port = ips[0][1]
        props: dict[str, bytes] = {"v": _TXT_VERSION, "id": str(addr.node_id).encode()}
        if name is not None:
            props["name"] = check_name(name).encode()
        if addr.relay_url is not None and len(addr.relay_url.encode()) <= _MAX_TXT_VALUE:
            props["relay"] = addr.relay_url.encode()
        return AsyncServiceInfo(
            MDNS_SERVICE,
            _instance(addr.node_id),
            port=port,
            properties=props,
            server=f"{addr.node_id}.local.",
            parsed_addresses=[ip for ip, p in ips if p == port],
        )

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        """Announce ``addr`` on the LAN (replacing an earlier announcement)."""
        info = self._service_info(addr, name)
        async with self._lock:
            await self.start()
            if self._info is not None:
                await self._azc.async_unregister_service(self._info)
                self._info = None
            await self._azc.async_register_service(info)
            self._info = info
        log.info("mDNS: announced %s on port %d", addr.node_id, info.port)

    async def unpublish(self) -> None:
        async with self._lock:
            if self._info is not None and self._azc is not None:
                info, self._info = self._info, None
                await self._azc.async_unregister_service(info)

    # -- resolving -------------------------------------------------------------

    def _node_addr(self, info: Any, expected: NodeId | None) -> NodeAddr:
        props = {k: v for k, v in info.properties.items() if isinstance(k, bytes) and isinstance(v, bytes)}
        try:
            node = NodeId.parse(props.get(b"id", b"").decode("ascii", "replace"))
        except InvalidNodeId as exc:
            raise DiscoveryFailed(f"mDNS answer {info.name!r} carries no valid node id: {exc.reason}") from None
        if expected is not None and node != expected:
            raise DiscoveryFailed(f"mDNS answer {info.name!r} is for node {node}")
        port = info.port
        addrs = [(ip, port) for ip in info.parsed_addresses()] if port else []
        relay = props.get(b"relay")
        return NodeAddr(node, addrs, relay.decode("utf-8", "replace") if relay else None)

    async def resolve(self, node_id: NodeId) -> NodeAddr:
        from zeroconf.asyncio import AsyncServiceInfo

        await self.start()
        info = AsyncServiceInfo(MDNS_SERVICE, _instance(node_id))
        if not await info.async_request(self._azc.zeroconf, self.timeout * 1000):
            raise DiscoveryFailed(f"no mDNS answer for node {node_id} within {self.timeout:g} s")
        addr = self._node_addr(info, node_id)
        if not addr.direct_addresses:
            raise DiscoveryFailed(f"mDNS answer for node {node_id} has no address")
        return addr

    async def resolve_name(self, name: str) -> NodeAddr:
        from zeroconf import ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

        try:
            check_name(name)
        except ValueError as exc:
            raise DiscoveryFailed(str(exc)) from None
        await self.start()
        found: asyncio.Queue[str] = asyncio.Queue(_MAX_BROWSE_RESULTS)

        def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                try:
                    found.put_nowait(name)
                except asyncio.QueueFull:
                    pass

        browser = AsyncServiceBrowser(self._azc.zeroconf, MDNS_SERVICE, handlers=[on_change])
        seen: set[str] = set()
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    instance = await found.get()
                    if instance in seen:
                        continue
                    seen.add(instance)
                    info = AsyncServiceInfo(MDNS_SERVICE, instance)
                    if not await info.async_request(self._azc.zeroconf, self.timeout * 1000):
                        continue
                    if (info.properties or {}).get(b"name") != name.encode():
                        continue
                    try:
                        addr = self._node_addr(info, None)
                    except DiscoveryFailed as exc:
                        log.debug("mDNS: ignoring %s: %s", instance, exc)
                        continue
                    if addr.direct_addresses:
                        return addr
        except TimeoutError:
            raise DiscoveryFailed(f"no node named {name!r} answered on mDNS within {self.timeout:g} s") from None
        finally:
            await browser.async_cancel()
