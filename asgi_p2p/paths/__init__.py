"""The paths layer: the endpoint's one socket, every peer's paths, each connection's route.

It sits between the datagram network (:mod:`asgi_p2p.net`) and the QUIC endpoint
(:mod:`asgi_p2p.endpoint`): disco packets (path probes, hole-punching signals) stay
here, QUIC packets go up to the endpoint through callbacks, and each connection's
datagrams go down through its route, directly or through the relay.

Modules (each imports only the ones listed before it, plus the foundation and
:mod:`asgi_p2p.net`):

- :mod:`asgi_p2p.paths.disco`: the signed hole-punching messages (PING, PONG,
  CALL_ME_MAYBE), ``is_disco`` / ``peek_sender`` and the replay guard (sans-I/O).
- :mod:`asgi_p2p.paths.select`: path selection as pure functions: ``best_direct``,
  ``select_route``, ``select_datagram_size``.
- :mod:`asgi_p2p.paths.link`: the relay interface this layer defines:
  ``RelayLink`` / ``ManagedRelayLink`` (what a relay client offers), ``RelaySink``
  (what it reports to), ``RelayRefusal`` / ``RefusalReason``.
- :mod:`asgi_p2p.paths.prober`: :class:`~asgi_p2p.paths.prober.PathProber`, one per
  peer: probing, RTT, expiry, datagram size search (sans-I/O; imports disco, select).
- :mod:`asgi_p2p.paths.route`: :class:`~asgi_p2p.paths.route.Route`, one per QUIC
  connection: where its datagrams go; the ``RouteOwner`` (the connection),
  ``RouteHost`` (the router) and ``RoutePeer`` protocols (imports prober).
- :mod:`asgi_p2p.paths.peer`: :class:`~asgi_p2p.paths.peer.PeerPaths`, one per peer:
  drives its prober and decides its connections' routes and datagram sizes; the
  ``PeerHost`` protocol (imports link, prober, route, select).
- :mod:`asgi_p2p.paths.router`: :class:`~asgi_p2p.paths.router.Router`, the
  endpoint's socket, relay link and peers; implements ``RelaySink``, ``RouteHost``
  and ``PeerHost`` (imports disco, link, peer, route).

Who imports this layer: :mod:`asgi_p2p.endpoint` (the router, routes, peer paths,
``PathInfo``, ``ManagedRelayLink``), :mod:`asgi_p2p.relay.client` (link: it
implements ``RelayLink`` and calls ``RelaySink``), :mod:`asgi_p2p.node` (link: it
wires the relay client to the router) and the CLI (``PathInfo``).  This layer
never imports the endpoint or the relay: they reach it through the protocols
above.  This package's ``__init__`` imports no submodule.

See ``docs/architecture.md`` (the packet's path) and ``docs/nat-traversal.md``
(the rules and wire formats).
"""
