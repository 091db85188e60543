"""The one error hierarchy of asgi-p2p.

Every error a caller can see derives from :class:`P2PError`; messages say what
failed and, where there is one, what to do about it.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "ConnectionClosed",
    "ConnectionFailed",
    "ConnectionReset",
    "ConnectionTimedOut",
    "DiscoveryFailed",
    "InvalidConfiguration",
    "InvalidNodeId",
    "MessageTooLarge",
    "NetworkError",
    "NoRoute",
    "NodeNotFound",
    "P2PError",
    "ProtocolError",
    "SerializationError",
    "StreamReset",
    "Timeout",
]


class P2PError(Exception):
    """Base class of every asgi-p2p error."""


class ConnectionFailed(P2PError):
    """A connection to a peer could not be established."""


class NodeNotFound(P2PError):
    """No address is known for the requested node."""


class NetworkError(P2PError):
    """The datagram network (socket or simulated link) failed."""


class InvalidNodeId(P2PError, ValueError):
    """A node id in text or bytes form could not be parsed."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"invalid node id {value!r}: {reason}")


class Timeout(P2PError, TimeoutError):
    """An operation did not finish within its time limit."""


class ConnectionClosed(P2PError):
    """The connection is closed (locally or by the peer)."""

    def __init__(self, message: str = "connection closed", *, error_code: int = 0, reason: str = "") -> None:
        self.error_code = error_code
        self.reason = reason
        super().__init__(message)


class ConnectionReset(ConnectionClosed):
    """The peer no longer knows the connection: it restarted or lost the connection's state.

    It answered with a stateless reset (RFC 9000 section 10.3) carrying the token
    it had announced for the connection, so the reset is genuine.  A new
    connection to the same node works.
    """


class ConnectionTimedOut(ConnectionClosed):
    """Nothing was heard from the peer for the idle timeout: this side gave up on the connection.

    The peer may be down, unreachable, or back at another address.
    """


class NoRoute(P2PError):
    """No path leads to the peer (for example a network partition)."""


class DiscoveryFailed(P2PError):
    """A name or node id could not be resolved to addresses."""


class ProtocolError(P2PError):
    """The peer violated a wire protocol."""


class MessageTooLarge(ProtocolError):
    """A message exceeds ``max_message_size``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds max_message_size {limit}")


class SerializationError(P2PError):
    """Data could not be encoded or decoded."""


class AuthenticationFailed(ConnectionFailed):
    """The peer's identity did not match, or the peer refused ours."""


class InvalidConfiguration(P2PError, ValueError):
    """A configuration value is invalid; the message names the setting.

    :attr:`setting` is the setting's name when one setting is to blame (None otherwise).
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class StreamReset(P2PError):
    """The peer reset (or asked us to stop) a QUIC stream."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        super().__init__(f"stream {stream_id} reset by peer (error code {error_code:#x})")


class InvalidTicket(P2PError, ValueError):
    """A ticket (or ``TICKET_OR_NODE`` target) could not be parsed; the message says why."""


__all__ += ["InvalidTicket"]
