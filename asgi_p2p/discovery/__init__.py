"""Discovery: NodeId or name -> addresses.

So far this package holds only signed node records and an in-memory directory
(:mod:`asgi_p2p.discovery.records`); see ``docs/nat-traversal.md``.
"""
