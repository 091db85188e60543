"""The relay: forwards end-to-end-encrypted datagrams between nodes by NodeId.

* :mod:`asgi_p2p.relay.proto` - the sans-I/O wire frames (ERROR carries a code, the
  node concerned and, for TOO_LARGE, the size that fits) and the server's routing
  state, :class:`~asgi_p2p.relay.proto.RelayRouter`;
* :mod:`asgi_p2p.relay.url` - relay URLs (``p2p-relay://NODE_ID@HOST:PORT``);
* :mod:`asgi_p2p.relay._datagrams` - queueing frames as QUIC DATAGRAM frames
  (private to this package; used by the server and the client);
* :mod:`asgi_p2p.relay.plane` - the UDP data plane beside the relay connection
  (sans-I/O: tokens, the datagram wire form, a client's checks and the demux it
  registers with the paths layer's ``Router.use_plane``);
* :mod:`asgi_p2p.relay.server` - :class:`~asgi_p2p.relay.server.RelayServer`, the
  relay on an endpoint (imports proto, plane, url, _datagrams, the endpoint's
  ``PeerConnection`` and :mod:`asgi_p2p.discovery` for the directory it hosts);
* :mod:`asgi_p2p.relay.client` - :class:`~asgi_p2p.relay.client.RelayClient`, a
  node's link to its relay (imports proto, plane, url, _datagrams, the endpoint's
  ``PeerConnection`` and :mod:`asgi_p2p.paths.link`: it implements
  ``RelayLink`` / ``ManagedRelayLink`` and reports to a ``RelaySink``, mapping
  ERROR codes to typed ``RelayRefusal`` values);
* :mod:`asgi_p2p.relay.fleet` - :class:`~asgi_p2p.relay.fleet.RelayFleet`, several
  relay clients behind one ``ManagedRelayLink``: a home relay chosen by RTT
  (:class:`~asgi_p2p.relay.fleet.HomeChoice`, sans-I/O), re-homing, and peers'
  home relays connected on demand (``Node.bind(relay_urls=[...])``).

Both sides register the relay ALPN with ``add_protocol(..., relay=True)``, which
marks relay connections for the paths layer.  The server and client import the
endpoint (``Endpoint`` itself only for type checking, and in
``RelayServer.bind``); the endpoint and the paths layer never import this
package.  Above it, :mod:`asgi_p2p.node` imports the client (``Node.bind(...,
relay_url=...)`` wires it into ``Endpoint.use_relay``, with the endpoint's
``router`` as the sink) and the CLI imports the server, proto and url.  This
package's ``__init__`` imports no submodule: they are imported on demand.

See ``docs/nat-traversal.md``.
"""
