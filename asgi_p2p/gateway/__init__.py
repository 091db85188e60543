"""Gateways between asgi-p2p peers and the rest of HTTP, and file transfer.

- :mod:`asgi_p2p.gateway.proxy`: :class:`~asgi_p2p.gateway.proxy.ProxyApp`, an ASGI app that
  forwards every request (and WebSocket) to a local HTTP/1.1 server, so that
  ``asgi-p2p proxy http://127.0.0.1:8000`` exposes any server to peers;
- :mod:`asgi_p2p.gateway.transfer`: ``asgi-p2p send`` / ``receive`` (a file or a directory,
  resumable, sha256-verified).
"""
