"""The web page's server: connections bounded in number and time, uploads read whole before a job slot is taken.

`DeadlineReader` bounds each read (``read_timeout``) and each request (``upload_timeout``); `UploadReader` (WSGI
middleware) reads each upload whole, at most ``max_reading`` at a time, before the app sees it;
`BoundedWSGIServer` serves at most ``max_connections`` connections. Why werkzeug's server needs this:
docs/DEPLOY.md, "Design notes".
"""
from __future__ import annotations

import io
import json
import math
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from mgid.derain.web_jobs import CountedSlots
from mgid.errors import InputError, MgidError

#: Bytes asked of the socket per read of an upload.
READ_CHUNK = 64 * 1024
#: The WSGI environ key of the connection's `DeadlineReader` (absent outside `BoundedWSGIServer`).
READER_KEY = "mgid.web.reader"


class UploadDeadline(MgidError, TimeoutError):
    """The request did not arrive whole within its deadline."""


class DeadlineReader(io.RawIOBase):
    """The reading side of a connection, with a timeout on each read and an overall deadline.

    Args:
        sock: The connection.
        read_timeout: Longest wait for data of one read, in seconds.
        deadline: `time.monotonic` time past which reads raise `UploadDeadline`.
    """

    def __init__(self, sock: socket.socket, read_timeout: float, deadline: float) -> None:
        super().__init__()
        self._sock, self.read_timeout, self.deadline = sock, read_timeout, deadline
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Read what has arrived, waiting at most the read timeout and never past the deadline.

        Returns:
            The number of bytes read; 0 when the client closed its side or the request was `finish`-ed.

        Raises:
            UploadDeadline: The deadline has passed.
            TimeoutError: No data came within the read timeout.
        """
        if self._finished:
            return 0
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise UploadDeadline("the request did not arrive whole within its deadline")
        bounded_by_deadline = left < self.read_timeout
        self._sock.settimeout(left if bounded_by_deadline else self.read_timeout)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError as exc:
            if bounded_by_deadline:
                raise UploadDeadline("the request did not arrive whole within its deadline") from exc
            raise

    def finish(self) -> None:
        """The request has arrived whole: further reads see its end (whatever else the client sends is not
        waited for), and the answer is written under the read timeout, not what was left of the deadline."""
        self._finished = True
        self._sock.settimeout(self.read_timeout)

    def expire(self) -> None:
        """The request was given up: every further read raises `UploadDeadline` at once."""
        self.deadline = time.monotonic()


def handler_class(read_timeout: float, upload_timeout: float) -> type[WSGIRequestHandler]:
    """werkzeug's request handler, reading each connection through a `DeadlineReader`.

    Args:
        read_timeout: Longest wait for data of one read (and of one write), in seconds.
        upload_timeout: Seconds from the connection within which its request must arrive whole.

    Returns:
        A `WSGIRequestHandler` subclass that puts the reader in the environ under `READER_KEY`.
    """

    class DeadlineRequestHandler(WSGIRequestHandler):
        timeout = read_timeout  # also the socket's timeout for writes

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the socket's own file: it would hold the socket open past its close
            self.reader = DeadlineReader(self.connection, read_timeout, time.monotonic() + upload_timeout)
            self.rfile = io.BufferedReader(self.reader)

        def make_environ(self) -> dict[str, Any]:
            environ = super().make_environ()
            environ[READER_KEY] = self.reader
            return environ

    return DeadlineRequestHandler


def _refusal(message: str, retry_after: int | None) -> tuple[list[tuple[str, str]], bytes]:
    """(headers, body) of a JSON error ``{"error": message}``."""
    body = json.dumps({"error": message}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return headers, body


class BoundedWSGIServer(ThreadedWSGIServer):
    """werkzeug's threaded server holding at most ``max_connections`` connections (one thread each).

    Args:
        host: Address to bind.
        port: Port to bind (0: a free one, read back from ``server.port``).
        app: The WSGI application.
        handler: The request handler class (`handler_class`).
        max_connections: Connections served at once; one more is answered 503 with Retry-After and closed.
        retry_after: Seconds in that answer's Retry-After.
    """

    def __init__(self, host: str, port: int, app: Callable[..., Iterable[bytes]],
                 handler: type[WSGIRequestHandler], max_connections: int, retry_after: int = 5) -> None:
        if max_connections < 1:
            raise InputError(f"max_connections must be >= 1, got {max_connections}")
        super().__init__(host, port, app, handler)
        self.max_connections, self.retry_after = max_connections, retry_after
        self._connections = CountedSlots(max_connections)

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return self._connections.taken

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.try_take():
            self._refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._connections.give()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.give()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 on a connection over the limit, from the accepting thread (a fresh socket's send buffer is
        empty: the short answer does not block)."""
        headers, body = _refusal(f"the server is busy: {self.max_connections} connections are open; try "
                                        f"again in a moment", self.retry_after)
        head = "HTTP/1.1 503 Service Unavailable\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        try:
            request.settimeout(1.0)
            request.sendall((head + "Connection: close\r\n\r\n").encode() + body)
        except OSError:
            pass


class UploadReader:
    """WSGI middleware reading the body of each upload whole before the app sees the request.

    Args:
        app: The WSGI application.
        paths: ``PATH_INFO`` of the uploads (POST); other requests pass straight through.
        max_bytes: Largest body read; a larger declared length passes through unread (the app answers 413),
            and a chunked body that grows past it is cut at ``max_bytes + 1`` bytes (the app answers 413).
        max_reading: Uploads read at once; one more is answered 503 with Retry-After.
        read_timeout: The server's read timeout, in seconds (for messages and Retry-After).
        upload_timeout: The server's upload deadline, in seconds (for messages).
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], paths: Iterable[str], max_bytes: int, max_reading: int,
                 read_timeout: float, upload_timeout: float) -> None:
        if max_reading < 1:
            raise InputError(f"max_reading must be >= 1, got {max_reading}")
        self.app, self.paths, self.max_bytes = app, frozenset(paths), max_bytes
        self.max_reading, self.read_timeout, self.upload_timeout = max_reading, read_timeout, upload_timeout
        self._slots = CountedSlots(max_reading)

    @property
    def reading(self) -> int:
        """Uploads being read now."""
        return self._slots.taken

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        # Requests passed on without their body read keep the connection's deadline for what werkzeug reads
        # after the answer (it drains the body so the client sees the answer rather than a reset).
        reader: DeadlineReader | None = environ.get(READER_KEY)
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") not in self.paths:
            return self.app(environ, start_response)
        try:
            length = int(environ["CONTENT_LENGTH"]) if environ.get("CONTENT_LENGTH") else None
        except ValueError:
            return self._answer(start_response, "400 Bad Request", "bad Content-Length header")
        if length is not None and (length > self.max_bytes or length < 0):
            return self.app(environ, start_response)  # refused (413) before the body is read
        if not self._slots.try_take():
            return self._answer(start_response, "503 Service Unavailable",
                                f"the server is busy: {self.max_reading} uploads are being received; try again "
                                f"in a moment", retry_after=max(1, math.ceil(self.read_timeout)))
        try:
            body = self._read(environ, length)
        except TimeoutError as exc:
            if reader is not None:
                reader.expire()
            if isinstance(exc, UploadDeadline):
                message = f"upload timed out: it did not arrive whole within {self.upload_timeout:g} s"
            else:
                message = f"upload timed out: no data for {self.read_timeout:g} s"
            return self._answer(start_response, "408 Request Timeout", message)
        except (EOFError, OSError) as exc:  # the client closed early, reset, or sent a malformed chunk
            if reader is not None:
                reader.expire()
            why = "the connection closed before the declared length arrived" if isinstance(exc, EOFError) else exc
            return self._answer(start_response, "400 Bad Request", f"upload incomplete: {why}")
        finally:
            self._slots.give()
        if reader is not None:
            reader.finish()
        environ["wsgi.input"] = body
        environ["CONTENT_LENGTH"] = str(body.getbuffer().nbytes)
        environ.pop("wsgi.input_terminated", None)  # the body is whole and its length known: no longer chunked
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _read(self, environ: dict[str, Any], length: int | None) -> io.BytesIO:
        """The body, at position 0: ``length`` bytes, or for a chunked body all of it up to ``max_bytes + 1`` bytes.

        Raises:
            TimeoutError: A read timed out or the deadline passed.
            EOFError: The client closed before ``length`` bytes arrived.
            OSError: The connection failed, or a chunk was malformed.
        """
        stream, out = environ["wsgi.input"], io.BytesIO()
        if length is None and not environ.get("wsgi.input_terminated"):
            return out  # no Content-Length and not chunked: no body
        limit = self.max_bytes + 1 if length is None else length
        while out.tell() < limit:
            data = stream.read(min(READ_CHUNK, limit - out.tell()))
            if not data:
                if length is not None:
                    raise EOFError
                break
            out.write(data)
        out.seek(0)
        return out

    @staticmethod
    def _answer(start_response: Callable[..., Any], status: str, message: str,
                retry_after: int | None = None) -> list[bytes]:
        headers, body = _refusal(message, retry_after)
        start_response(status, headers)
        return [body]
