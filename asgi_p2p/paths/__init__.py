"""The paths layer: one socket per endpoint, the best live path per peer.

The sans-I/O parts live here; the endpoint drives them
(:mod:`asgi_p2p.endpoint.peers`):

- :mod:`asgi_p2p.paths.disco`: the authenticated hole-punching messages (PING,
  PONG, CALL_ME_MAYBE), their signing and the replay guard.
- :mod:`asgi_p2p.paths.prober`: :class:`~asgi_p2p.paths.prober.PathProber`, one
  per peer: probing, RTT, path choice, expiry, relay fallback, datagram size search.
- :mod:`asgi_p2p.paths.link`: the seam between the paths layer and a relay client.

See ``docs/nat-traversal.md`` for the design.
"""
