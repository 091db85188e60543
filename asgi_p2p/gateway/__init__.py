"""Bridges between asgi-p2p and plain HTTP (the apps layer).

:mod:`asgi_p2p.gateway.gateway`: browsers, curl and any HTTP/1.1 client reach peers
through a local (or public) HTTP server that forwards to them over HTTP/3.
"""
