"""One connected stream client, and the counters every part of the simulator adds to.

The server owns the connections (it accepts them, keeps the list, publishes to them and forgets
them); a :class:`Client` knows how to close *itself*, so the writer that applies a drop fault and
the server that resets or expires the token both call :meth:`Client.drop` rather than reaching
into each other.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection


@dataclass
class Counters:
    """Ground-truth counters served under ``/_sim/state``."""

    sent: int = 0  #: model messages written to sockets (duplicates included)
    missed_while_away: int = 0  #: model messages produced while no client was connected
    not_subscribed: int = 0  #: produced while clients were connected, none subscribed to the type
    lost_on_disconnect: int = 0  #: queued for a client that went away before they were written
    lost_in_hang: int = 0  #: discarded while the hang fault was on
    dropped_connections: int = 0  #: connections dropped by a fault (close code or reset)
    duplicated: int = 0
    reordered: int = 0  #: messages sent out of their production order
    delayed: int = 0
    malformed_sent: int = 0
    unknown_type_sent: int = 0
    oversized_sent: int = 0
    pings_sent: int = 0
    authorizations: int = 0  #: successful authorize and direct-connect requests
    codes_issued: int = 0
    connections: int = 0  #: accepted WebSocket connections
    refused_handshakes: int = 0  #: socket handshakes refused (used/unknown code, injected)
    http_requests: int = 0
    injected_http_errors: int = 0
    unauthorized: int = 0  #: requests refused with 401 for a missing/wrong/expired token
    #: the paths of the last refused requests (no query: it may hold a code), to tell who called
    unauthorized_paths: list[str] = field(default_factory=list)
    rate_limited: int = 0  #: requests refused with 429 (an account over its rate limits, if enforced)
    model_messages: int = 0
    model_steps: int = 0


@dataclass(eq=False)
class Client:
    """One connected stream client: its subscription, its outgoing queue, and how it is closed."""

    ws: ServerConnection
    types: frozenset[str]
    pending: deque[tuple[float, bytes]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    model_sent: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    closing: bool = False
    _close_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def drop(self, mode: int | str, reason: str = "simulated drop") -> None:
        """Close with a close code, or abort the TCP connection with an RST for ``"reset"``.

        Returns at once: the close handshake runs in a task of its own (the writer calling this
        must not wait for the peer). A second call does nothing.
        """
        if self.closing:
            return
        self.closing = True
        if mode == "reset":
            sock = self.ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.ws.transport.abort()
        else:
            self._close_task = asyncio.get_running_loop().create_task(self.ws.close(int(mode), reason))

    def abort(self) -> None:
        """Cut the TCP connection now (simulator shutdown)."""
        self.closing = True
        self.ws.transport.abort()

    def pause_reading(self, paused: bool) -> None:
        """Stop (or resume) reading from the socket: a hung peer answers no ping and reads no close."""
        if paused:
            self.ws.transport.pause_reading()
        else:
            self.ws.transport.resume_reading()
            self.wakeup.set()
