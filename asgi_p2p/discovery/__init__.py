"""Discovery: NodeId or name -> addresses.

Sources implement :class:`Discovery`: :class:`StaticDiscovery` (tickets and
addresses given by the user), :class:`DirectoryClient` (signed records in a
directory served over QUIC, normally by the relay; :class:`DirectoryServer`
serves one), :class:`MdnsDiscovery` (the LAN, opt-in), :class:`DnsDiscovery`
(signed records in TXT records under an operator's zone; publishing by RFC 2136
update with TSIG, opt-in) and the simulator's ``MockDNS``.
:class:`ChainedDiscovery` asks them in order.  Signed records and the in-memory
directory live in :mod:`asgi_p2p.discovery.records`.  See
``docs/nat-traversal.md`` (Discovery).
"""

from .base import ChainedDiscovery, Discovery, DiscoveryChainFailed, StaticDiscovery, merge_node_addrs
from .directory import DIRECTORY_ALPN, DirectoryClient, DirectoryError, DirectoryServer
from .dns import DnsDiscovery, DnsUpdate
from .mdns import MDNS_SERVICE, MdnsDiscovery
from .records import Directory, InvalidRecord, NodeRecord, SignedNodeRecord

__all__ = [
    "DIRECTORY_ALPN",
    "MDNS_SERVICE",
    "ChainedDiscovery",
    "Directory",
    "DirectoryClient",
    "DirectoryError",
    "DirectoryServer",
    "Discovery",
    "DiscoveryChainFailed",
    "DnsDiscovery",
    "DnsUpdate",
    "InvalidRecord",
    "MdnsDiscovery",
    "NodeRecord",
    "SignedNodeRecord",
    "StaticDiscovery",
    "merge_node_addrs",
]
