"""The admin commands of a serving node: ``status``, ``peers``, ``revoke``, ``invite``, ``invites``.

:class:`NodeControl` puts them on an :class:`~asgi_p2p.ops.admin.AdminServer` for one
endpoint.  With an allow-file (:class:`~asgi_p2p.ops.allowfile.AllowList`) the node
also accepts pairings (:class:`~asgi_p2p.ops.pairing.PairingService`): a paired device
is appended to the file and allowed at once; a revoked one is removed from it and its
connections are closed.
"""

from __future__ import annotations

import logging
from typing import Any

from ..endpoint.endpoint import Endpoint
from ..errors import InvalidConfiguration, InvalidNodeId
from ..identity import NodeId
from .admin import AdminError, AdminServer
from .allowfile import AllowList, check_label
from .pairing import MAX_INVITE_TTL, PairingError, PairingService
from .status import node_status

__all__ = ["NodeControl"]

log = logging.getLogger("asgi_p2p.ops.control")


class NodeControl:
    """Admin commands for ``endpoint`` on ``admin``; pairing when ``allow`` has a file."""

    def __init__(self, endpoint: Endpoint, admin: AdminServer, allow: AllowList | None) -> None:
        self.endpoint = endpoint
        self.admin = admin
        self.allow = allow
        self.pairing: PairingService | None = None
        #: more listeners for ``status`` (e.g. ``{"kind": "metrics", "address": "127.0.0.1:9464"}``)
        self.listeners: list[dict[str, Any]] = []
        if allow is not None and allow.path is not None:
            self.pairing = PairingService(endpoint, self._paired)
        admin.register("status", self._status, "node id, listeners, relay, and every peer connection")
        admin.register("peers", self._peers, "the allowed node ids (with labels) and whether they are connected")
        admin.register("revoke", self._revoke, "stop allowing node_id: remove it from the allow-file, close it")
        admin.register("invite", self._invite, "a one-time pairing invite (uses, expires seconds, label)")
        admin.register("invites", self._invites, "the pending invites")
        admin.register("cancel-invite", self._cancel_invite, "cancel the pending invite with this id")

    def _labels(self, node_id: NodeId) -> str | None:
        return self.allow.label(node_id) if self.allow is not None else None

    def _status(self, _request: dict[str, Any]) -> dict[str, Any]:
        status = node_status(
            self.endpoint,
            labels=self._labels,
            listeners=[{"kind": "admin", "address": str(self.admin.path)}, *self.listeners],
        )
        status["allow"] = "any node" if self.allow is None else f"{len(self.allow)} node(s)"
        if self.pairing is not None:
            status["pairing"] = {
                "pending_invites": len(self.pairing.invites()),
                "paired": self.pairing.paired,
                "failed": self.pairing.failed,
                "rate_limited": self.pairing.rate_limited,
            }
        return status

    def _peers(self, _request: dict[str, Any]) -> dict[str, Any]:
        connected = {c.remote_node_id for c in self.endpoint.connections if c.remote_node_id is not None}
        if self.allow is None:
            return {"allow_file": None, "any_node": True, "peers": []}
        return {
            "allow_file": str(self.allow.path) if self.allow.path is not None else None,
            "any_node": False,
            "peers": [
                {
                    "node_id": str(e.node_id),
                    "label": e.label,
                    "source": e.source,
                    "connected": e.node_id in connected,
                }
                for e in self.allow.entries()
            ],
        }

    def _revoke(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.allow is None:
            raise AdminError("this node allows any node (no --allow / --allow-file): nothing to revoke")
        text = request.get("node_id")
        if not isinstance(text, str):
            raise AdminError('revoke needs "node_id"')
        try:
            node_id = NodeId.parse(text.strip())
        except InvalidNodeId as exc:
            raise AdminError(str(exc)) from None
        try:
            entry = self.allow.remove(node_id)
        except InvalidConfiguration as exc:
            raise AdminError(str(exc)) from None
        closed = self.endpoint.close_peer(node_id, "access revoked")
        log.info("revoked node %s; closed %d connection(s)", node_id, closed)
        return {"node_id": str(node_id), "label": entry.label, "closed_connections": closed}

    def _invite(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.pairing is None:
            raise AdminError(
                "pairing needs an allow-file to record paired devices: start the node with --allow-file PATH"
            )
        uses = request.get("uses", 1)
        expires = request.get("expires", 600.0)
        if not isinstance(uses, int) or isinstance(uses, bool):
            raise AdminError('"uses" must be a whole number')
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise AdminError('"expires" must be a number of seconds')
        if not 0 < expires <= MAX_INVITE_TTL:
            raise AdminError(f"an invite expires after 0 to {MAX_INVITE_TTL:g} seconds, got {expires:g}")
        label = request.get("label")
        if label is not None and not isinstance(label, str):
            raise AdminError('"label" must be a string')
        try:
            label = check_label(label)
            invite = self.pairing.create_invite(uses=uses, ttl=float(expires), label=label)
        except (InvalidConfiguration, PairingError) as exc:
            raise AdminError(str(exc)) from None
        return {
            "invite": invite.encode(),
            "id": invite.invite_id.hex(),
            "uses": uses,
            "expires": float(expires),
            "label": label,
            "node_id": str(self.endpoint.node_id),
        }

    def _invites(self, _request: dict[str, Any]) -> list[dict[str, Any]]:
        return self.pairing.invites() if self.pairing is not None else []

    def _cancel_invite(self, request: dict[str, Any]) -> dict[str, Any]:
        invite_id = request.get("id")
        if not isinstance(invite_id, str):
            raise AdminError('cancel-invite needs "id" (see `asgi-p2p invite --list`)')
        if self.pairing is None or not self.pairing.cancel_invite(invite_id.strip().lower()):
            raise AdminError(f"no pending invite {invite_id!r} (see `asgi-p2p invite --list`)")
        return {"id": invite_id, "cancelled": True}

    def _paired(self, device: NodeId, label: str | None) -> None:
        assert self.allow is not None
        self.allow.add(device, label)

    async def close(self) -> None:
        """Close the admin socket and end pairing exchanges in progress."""
        await self.admin.close()
        if self.pairing is not None:
            await self.pairing.close()
