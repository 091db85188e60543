"""Assembling a node: an endpoint with the raw message protocol and, optionally, a relay.

The layers below know nothing of each other's upper neighbours: the endpoint
does not import the message service or the relay client, and the paths layer
reaches the relay only through the :class:`~asgi_p2p.paths.link.RelayLink` it
defines.  :meth:`Node.bind` is where they meet::

    node = await Node.bind(relay_url=url)       # endpoint + messages + relay client
    node = await Node.bind(relay_urls=[a, b])   # ... or a home relay chosen among several
    conn = await node.connect(peer_node_addr)    # the raw message API
    serve(app, node)                             # HTTP/3 (asgi_p2p.http) on the same node

The CLI, the examples and the tests build their nodes here.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Sequence

from .config import NetworkConfig
from .endpoint.endpoint import AllowPolicy, Endpoint, NodeResolver
from .errors import InvalidConfiguration
from .identity import NodeAddr, NodeId, SecretKey
from .messages import MessageConnection, MessageListener, MessageService
from .net.base import DatagramNetwork
from .paths.link import ManagedRelayLink, RelaySink
from .relay.client import RelayClient
from .relay.fleet import RelayFleet

__all__ = ["Node", "RelayFactory"]

#: Makes the relay client of an endpoint: ``factory(endpoint, relay_url, sink, rng=rng)``
#: (the signature of :class:`asgi_p2p.relay.client.RelayClient`; tests pass fakes).
RelayFactory = Callable[..., ManagedRelayLink]


class Node(Endpoint):
    """An :class:`~asgi_p2p.endpoint.Endpoint` with the raw message API (the seed's P2PSystem).

    Every node serves ALPN ``asgi-p2p/msg/1``: :meth:`connect` dials a message
    connection, :meth:`listen` yields the incoming ones.  Other protocols (HTTP/3,
    a relay server, a directory) register on it as on any endpoint.
    """

    def __init__(
        self,
        secret_key: SecretKey,
        config: NetworkConfig,
        allow: AllowPolicy,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(secret_key, config, allow, rng)
        #: The raw message protocol of this node.
        self.messages = MessageService(self)

    @classmethod
    async def bind(
        cls,
        secret_key: SecretKey | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        alpns: Iterable[str] | None = None,
        allow: AllowPolicy = None,
        config: NetworkConfig | None = None,
        network: DatagramNetwork | None = None,
        rng: random.Random | None = None,
        relay_url: str | None = None,
        relay_urls: Sequence[str] | None = None,
        relay_factory: RelayFactory | None = None,
        discovery: NodeResolver | None = None,
        peer_state: str | os.PathLike[str] | None = None,
    ) -> Node:
        """Bind a node (see :meth:`Endpoint.bind` for the arguments it shares).

        ``relay_url`` makes the node keep a connection to that relay (in the
        background, reconnecting as needed): peers it cannot reach directly are
        reached through it, and hole punching is signalled through it.
        ``relay_factory`` builds the relay client (default:
        :class:`~asgi_p2p.relay.client.RelayClient`; tests pass fakes).
        ``discovery`` (a :class:`~asgi_p2p.discovery.Discovery`, e.g. a
        :class:`~asgi_p2p.discovery.ChainedDiscovery`) is asked where a node
        dialed by id alone is.  ``peer_state`` is the file of proactive stateless
        resets (see :meth:`Endpoint.bind`).
        """
        if relay_url is not None and relay_urls is not None:
            raise InvalidConfiguration("pass relay_url or relay_urls, not both")
        if relay_urls is not None and (isinstance(relay_urls, str) or not relay_urls):
            raise InvalidConfiguration(f"relay_urls must be a non-empty list of relay URLs, got {relay_urls!r}")
        node = await super().bind(
            secret_key,
            host=host,
            port=port,
            alpns=alpns,
            allow=allow,
            config=config,
            network=network,
            rng=rng,
            discovery=discovery,
            peer_state=peer_state,
        )
        sink: RelaySink = node.router
        rng = random.Random(node.rng.getrandbits(64)) if relay_url is not None or relay_urls is not None else None
        try:
            if relay_url is not None:
                factory = relay_factory if relay_factory is not None else RelayClient
                node.use_relay(factory(node, relay_url, sink, rng=rng))
            elif relay_urls is not None:
                node.use_relay(RelayFleet(node, list(relay_urls), sink, rng=rng, client_factory=relay_factory))
        except BaseException:
            await node.close(timeout=0.0)
            raise
        return node

    async def connect(self, addr: NodeAddr | NodeId) -> MessageConnection:
        """Open a raw message connection to a node (see :mod:`asgi_p2p.messages`)."""
        return await self.messages.connect(addr)

    def listen(self) -> MessageListener:
        """The listener of incoming raw message connections."""
        return self.messages.listen()

    async def close(self, *, timeout: float = 2.0) -> None:
        """Close every connection, then the socket; pending :meth:`listen` iterations end."""
        await super().close(timeout=timeout)
        self.messages.close()

    def __repr__(self) -> str:
        return f"<Node {self.node_id}>"
