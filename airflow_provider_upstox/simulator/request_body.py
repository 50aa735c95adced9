"""Plain-HTTP request bodies on the simulator's ``websockets`` server (for the login POSTs).

``websockets`` parses only body-less requests (a WebSocket handshake has none) and drops a
connection whose request has ``Content-Length`` other than 0. The login calls of
``docs/PROTOCOL.md`` §6 send form or JSON bodies, so :class:`BodyReadingConnection` (passed as
``serve(create_connection=...)``) swaps in a request parser that lets ``websockets`` parse the
request line and headers as usual, then reads up to :data:`MAX_BODY` bytes of body into
:attr:`BodyReadingConnection.request_body`, where ``process_request`` finds it. A larger body gets
413. WebSocket upgrades are unaffected: they carry no body.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Generator
from typing import Any, Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidMessage
from websockets.http11 import Request
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

MAX_BODY: Final = 64 * 1024
_LENGTH_HEADER: Final = b"x-simulator-body-length"

ReadLine = Callable[[int, type[Exception]], Generator[None, None, bytes | bytearray]]


class BodyReadingConnection(ServerConnection):
    """A ``ServerConnection`` whose request may carry a small body (see the module docstring)."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        self.request_body = b""
        # Nothing has been received yet: replacing the primed parser loses no data.
        protocol.parser = _parse_request_with_body(protocol, self)
        next(protocol.parser)


def _renaming_length(read_line: ReadLine, lengths: list[bytes]) -> ReadLine:
    """*read_line* that renames ``Content-Length`` so that websockets' parser accepts the request."""

    def wrapped(limit: int, too_long: type[Exception]) -> Generator[None, None, bytes | bytearray]:
        line = yield from read_line(limit, too_long)
        name, colon, value = bytes(line).partition(b":")
        if colon and name.strip().lower() == b"content-length":
            lengths.append(value.strip())
            return _LENGTH_HEADER + b":" + value
        return line

    return wrapped


def _parse_request_with_body(protocol: ServerProtocol, conn: BodyReadingConnection) -> Generator[None]:
    lengths: list[bytes] = []
    try:
        request = yield from Request.parse(_renaming_length(protocol.reader.read_line, lengths))
        if len(set(lengths)) > 1 or any(not value.isdigit() for value in lengths):
            raise ValueError("invalid Content-Length")
        size = int(lengths[0]) if lengths else 0
        if size > MAX_BODY:
            protocol.send_response(protocol.reject(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Too large\n"))
            yield
            return
        if size:
            conn.request_body = bytes((yield from protocol.reader.read_exact(size)))
    except Exception as exc:  # the same handling as ServerProtocol.parse
        protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
        protocol.handshake_exc.__cause__ = exc
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        yield
        return
    protocol.events.append(request)
    yield from Protocol.parse(protocol)
