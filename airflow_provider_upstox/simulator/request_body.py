"""Plain HTTP on the simulator's ``websockets`` server: any method, and small request bodies.

``websockets`` parses only what a WebSocket handshake sends: it drops a request whose
``Content-Length`` is not 0, and ``websockets`` < 17 (the newest release on Python 3.10) also drops
every method but ``GET`` ("unsupported HTTP method; expected GET") and has no ``Request.method``.
The control API (``POST /_sim/...``) and the login calls of ``docs/PROTOCOL.md`` §6 send ``POST``
requests with form or JSON bodies, so :class:`BodyReadingConnection` (passed as
``serve(create_connection=...)``) swaps in its own request parser, the same on every supported
``websockets`` version: it reads the request line itself (any method; HTTP/1.1 or 1.0), lets
``websockets`` parse the headers as usual, then reads up to :data:`MAX_BODY` bytes of body. The
method and body are kept on the connection (:attr:`~BodyReadingConnection.request_method`,
:attr:`~BodyReadingConnection.request_body`), where ``process_request`` finds them. A larger body
gets 413. WebSocket upgrades are unaffected: only a ``GET`` without a body is ever upgraded.
"""

from __future__ import annotations

import dataclasses
import http
import re
from collections.abc import Generator
from typing import Any, Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidMessage
from websockets.http11 import Request, parse_headers, parse_line
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

MAX_BODY: Final = 64 * 1024
_METHOD: Final = re.compile(rb"[A-Z]{1,16}")
_PROTOCOLS: Final = (b"HTTP/1.1", b"HTTP/1.0")
_DIGITS: Final = re.compile(r"[0-9]{1,18}")
#: websockets >= 17 records the method and protocol on its ``Request``; 16 has neither field.
_REQUEST_HAS_METHOD: Final = "method" in {f.name for f in dataclasses.fields(Request)}


class BodyReadingConnection(ServerConnection):
    """A ``ServerConnection`` whose request may use any method and carry a small body (see the module)."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        self.request_method = "GET"
        self.request_body = b""
        # Nothing has been received yet: replacing the primed parser loses no data.
        protocol.parser = _parse_request_with_body(protocol, self)
        next(protocol.parser)


def _parse_request(protocol: ServerProtocol) -> Generator[None, None, tuple[str, Request]]:
    """The method and the :class:`Request` (headers included), on every ``websockets`` version.

    :raises ValueError: a malformed request line, an unsupported protocol or ``Transfer-Encoding``.
    """
    line = yield from parse_line(protocol.reader.read_line)
    parts = bytes(line).split(b" ", 2)
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or parts[2] not in _PROTOCOLS:
        raise ValueError("invalid HTTP request line")
    method, path, version = (part.decode("ascii") for part in parts)  # a non-ASCII path is invalid
    headers = yield from parse_headers(protocol.reader.read_line)
    if "Transfer-Encoding" in headers:
        raise ValueError("Transfer-Encoding is not supported")  # as websockets' own parser
    request = Request(path, headers, method, version) if _REQUEST_HAS_METHOD else Request(path, headers)
    return method, request


def _parse_request_with_body(protocol: ServerProtocol, conn: BodyReadingConnection) -> Generator[None]:
    try:
        conn.request_method, request = yield from _parse_request(protocol)
        lengths = set(request.headers.get_all("Content-Length"))
        if len(lengths) > 1 or any(not _DIGITS.fullmatch(value) for value in lengths):
            raise ValueError("invalid Content-Length")
        size = int(lengths.pop()) if lengths else 0
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
