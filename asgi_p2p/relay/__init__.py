"""The relay: forwards end-to-end-encrypted datagrams between nodes by NodeId.

* :mod:`asgi_p2p.relay.proto` - the sans-I/O wire frames and the server's routing state;
* :mod:`asgi_p2p.relay.url` - relay URLs (``p2p-relay://NODE_ID@HOST:PORT``);
* :mod:`asgi_p2p.relay.server` - :class:`~asgi_p2p.relay.server.RelayServer`, the relay on an endpoint;
* :mod:`asgi_p2p.relay.client` - :class:`~asgi_p2p.relay.client.RelayClient`, an endpoint's link to its relay.

See ``docs/nat-traversal.md``.  The submodules are imported on demand (the
server and client import the endpoint; the endpoint never imports them).
"""
