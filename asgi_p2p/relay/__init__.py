"""The relay: forwards end-to-end-encrypted datagrams between nodes by NodeId.

So far this package holds only the sans-I/O wire protocol and server-side
routing state (:mod:`asgi_p2p.relay.proto`); see ``docs/nat-traversal.md``.
"""
