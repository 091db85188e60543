"""Operating a running node: the local admin socket, ``status``, the allow-file and pairing.

* :mod:`asgi_p2p.ops.admin` - a unix socket (mode 0600, same user only) speaking JSON
  lines; commands register on it (:meth:`AdminServer.register`).
* :mod:`asgi_p2p.ops.status` - what ``asgi-p2p status`` prints: peers, paths, relay, listeners.
* :mod:`asgi_p2p.ops.allowfile` - the persistent allow-file, changed live.
* :mod:`asgi_p2p.ops.pairing` - invites and the pairing exchange (ALPN ``asgi-p2p-pair/1``).
"""
