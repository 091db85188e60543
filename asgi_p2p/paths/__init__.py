"""The paths layer: one socket per endpoint, the best live path per peer.

So far this package holds only the sans-I/O hole-punching protocol
(:mod:`asgi_p2p.paths.disco`); see ``docs/nat-traversal.md`` for what is built
and what is still to be wired into the endpoint.
"""
