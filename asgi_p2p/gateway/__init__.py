"""Gateways between asgi-p2p peers and the rest of HTTP, and file transfer (the apps layer).

- :mod:`asgi_p2p.gateway.proxy`: :class:`~asgi_p2p.gateway.proxy.ProxyApp`, an ASGI app that
  forwards every request (and WebSocket) to a local HTTP/1.1 server, so that
  ``asgi-p2p proxy http://127.0.0.1:8000`` exposes any server to peers;
- :mod:`asgi_p2p.gateway.gateway`: browsers, curl and any HTTP/1.1 client reach peers
  through a local (or public) HTTP server that forwards to them over HTTP/3
  (``asgi-p2p gateway``);
- :mod:`asgi_p2p.gateway.transfer`: ``asgi-p2p send`` / ``receive`` (a file or a directory,
  resumable, sha256-verified).
"""
