"""HTTP/1.1 limits below the ASGI app: request headers are capped (431).

uvicorn's httptools protocol accepts headers of any size (llhttp sets no limit),
so a client can make the server buffer megabytes before the app runs. This
subclass counts the bytes that arrive before the end of the headers and answers
431 and closes the connection once the request line and headers pass
``max_header_bytes`` (checked per packet, so nothing larger is ever buffered).
"""

from __future__ import annotations

import json
import logging

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

DEFAULT_MAX_HEADER_BYTES = 16 * 1024


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing once the 431 is sent."""


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = DEFAULT_MAX_HEADER_BYTES

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._in_head = True  # before the end of the current request's headers
        self._raw_head = 0  # bytes received while in the head
        self._rejected = False

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, plus the limit (its version answers 400 to any parser error).
        if self._rejected:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._raw_head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._rejected:
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # Still inside the headers after all of this data: every byte so far is head.
        if self._in_head and self._raw_head > self.max_header_bytes:
            self._reject()

    def on_headers_complete(self) -> None:
        self._in_head = False
        # Only when more bytes than the limit came in during the head (a body may share
        # the last packet) is the head measured exactly: most requests skip the sum.
        if self._raw_head > self.max_header_bytes:
            size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
            if size > self.max_header_bytes:
                self._reject()
                raise _HeadersTooLarge  # stops the parser: no request cycle starts
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._raw_head = True, 0

    def _reject(self) -> None:
        self._rejected = True
        log.info("request headers over %d bytes: answered 431", self.max_header_bytes)
        message = f"request line and headers are larger than {self.max_header_bytes} bytes"
        detail = [{"field": "headers", "message": message}]
        body = json.dumps({"error": "request headers too large", "detail": detail}).encode()
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()


def header_limited_protocol(max_header_bytes: int) -> type[HeaderLimitedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this limit."""
    return type(
        "HeaderLimitedHttpToolsProtocol",
        (HeaderLimitedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes},
    )
