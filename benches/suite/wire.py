"""A minimal gRPC-over-HTTP/2 unary client (h2c, no TLS, one call per connection), for the suite's
health checks and one-off calls (first requests, priming), plus the hand-encoded protobuf bodies they
send. The load itself is driven by `torchwire-bench load`, never by this module.

Every answer is judged by its `grpc-status`, read from the trailers or, for a trailers-only answer,
from the response headers: 0 is OK, anything else is an error, whatever body came with it. An answer
without a `grpc-status` is UNKNOWN (or the gRPC code of its HTTP status when that is not 200), a
reset stream maps its HTTP/2 error code to a gRPC code, and an OK answer without a response message
is INTERNAL. Connection failures and timeouts raise OSError, as sockets do.
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

from .hpack import Decoder, encode_literal

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STREAM = 1  # the one stream of each connection

CODE_NAMES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
              "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]
OK, CANCELLED, UNKNOWN, INTERNAL, UNAVAILABLE = 0, 1, 2, 13, 14
# gRPC's mapping of HTTP statuses, for answers without a grpc-status (doc/http-grpc-status-mapping.md).
HTTP_TO_STATUS = {"400": INTERNAL, "401": 16, "403": 7, "404": 12, "429": UNAVAILABLE, "502": UNAVAILABLE,
                  "503": UNAVAILABLE, "504": UNAVAILABLE}
# HTTP/2 error codes of RST_STREAM (doc/PROTOCOL-HTTP2.md); anything else is INTERNAL.
RESET_TO_STATUS = {0x7: UNAVAILABLE, 0x8: CANCELLED, 0xB: 8, 0xC: 7}


def code_name(status: int) -> str:
    return CODE_NAMES[status] if 0 <= status < len(CODE_NAMES) else f"CODE_{status}"


@dataclass
class Reply:
    """How one call ended: its gRPC status, message, the response message (OK only) and its duration."""

    status: int
    message: str = ""
    body: bytes | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def code(self) -> str:
        return code_name(self.status)


@dataclass
class Stream:
    """What came back on the call's stream: header blocks as dicts, the DATA bytes, how it ended."""

    headers: dict | None = None
    trailers: dict | None = None  # the same dict as `headers` for a trailers-only answer
    data: bytearray = field(default_factory=bytearray)
    reset: int | None = None  # RST_STREAM error code
    refused: bool = False  # GOAWAY before the server took the stream


def judge(stream: Stream) -> tuple[int, str]:
    """The gRPC status and message of a finished stream (see the module's docstring)."""
    if stream.refused:
        return UNAVAILABLE, "the server sent GOAWAY before processing the call"
    if stream.reset is not None:
        return RESET_TO_STATUS.get(stream.reset, INTERNAL), f"stream reset with HTTP/2 error {stream.reset:#x}"
    trailers = stream.trailers or {}
    if "grpc-status" in trailers:
        raw = trailers["grpc-status"]
        if not raw.isdigit():
            return UNKNOWN, f"grpc-status {raw!r} is not a number"
        return int(raw), unquote(trailers.get("grpc-message", ""))
    http = (stream.headers or {}).get(":status")
    if http != "200":
        return HTTP_TO_STATUS.get(http, UNKNOWN), f"HTTP status {http} without grpc-status"
    if stream.trailers is None:
        return UNKNOWN, "the stream ended without trailers"
    return UNKNOWN, "trailers without grpc-status"


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


class _Connection:
    """Frames in from one socket, with the control frames answered and the header blocks decoded."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf, self.decoder = sock, b"", Decoder()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the call ended")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def next_frame(self) -> tuple[int, int, int, bytes]:
        head = self.take(9)
        length, ftype, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        return ftype, flags, sid, self.take(length)

    def read_stream(self) -> Stream:
        """Reads until STREAM ends (END_STREAM, RST_STREAM, or a GOAWAY that excludes it)."""
        st, block, ends = Stream(), b"", False
        while True:
            ftype, flags, sid, payload = self.next_frame()
            if ftype == SETTINGS and not flags & ACK:
                self.sock.sendall(frame(SETTINGS, ACK, 0))
            elif ftype == PING and not flags & ACK:
                self.sock.sendall(frame(PING, ACK, 0, payload))
            elif ftype == GOAWAY and int.from_bytes(payload[:4], "big") & 0x7FFFFFFF < STREAM:
                st.refused = True
                return st
            elif sid != STREAM:
                continue
            elif ftype == RST_STREAM:
                st.reset = int.from_bytes(payload[:4], "big")
                return st
            elif ftype == DATA:
                data = unpad(flags, payload)
                st.data += data
                if flags & END_STREAM:
                    return st
                if payload:  # give the flow-control credit back, so a large answer is not stalled
                    credit = struct.pack(">I", len(payload))
                    self.sock.sendall(frame(WINDOW_UPDATE, 0, 0, credit) + frame(WINDOW_UPDATE, 0, STREAM, credit))
            elif ftype in (HEADERS, CONTINUATION):
                if ftype == HEADERS:
                    block, ends = header_fragment(flags, payload), bool(flags & END_STREAM)
                else:
                    block += payload
                if flags & END_HEADERS:
                    fields = dict(self.decoder.decode(block))
                    if st.headers is None:
                        st.headers = fields
                        if ends:  # trailers-only
                            st.trailers = fields
                    else:
                        st.trailers = fields
                    if ends:
                        return st


def unpad(flags: int, payload: bytes) -> bytes:
    return payload[1:len(payload) - payload[0]] if flags & PADDED else payload


def header_fragment(flags: int, payload: bytes) -> bytes:
    """The header block fragment of a HEADERS frame, without padding and priority fields."""
    body = unpad(flags, payload)
    return body[5:] if flags & PRIORITY else body


def unary(port: int, path: str, request: bytes, timeout: float = 10.0) -> Reply:
    """One unary call to 127.0.0.1:`port` on a fresh connection, judged by its grpc-status; `elapsed` is
    the time from sending the request to the end of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = b"".join(encode_literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers")])
        body = b"\x00" + len(request).to_bytes(4, "big") + request
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        t0 = time.perf_counter()
        s.sendall(frame(HEADERS, END_HEADERS, STREAM, headers) + frame(DATA, END_STREAM, STREAM, body))
        stream = _Connection(s).read_stream()
        elapsed = time.perf_counter() - t0
    status, message = judge(stream)
    if status != OK:
        return Reply(status, message, None, elapsed)
    data = bytes(stream.data)
    if len(data) < 5 or len(data) < 5 + int.from_bytes(data[1:5], "big"):
        return Reply(INTERNAL, "grpc-status 0 without a complete response message", None, elapsed)
    return Reply(OK, message, data[5:5 + int.from_bytes(data[1:5], "big")], elapsed)


def health_status(port: int) -> int | None:
    """grpc.health.v1 Check("") status (1 = SERVING, 0 = UNKNOWN), -1 if answered with an error, None if down."""
    try:
        reply = unary(port, "/grpc.health.v1.Health/Check", b"", timeout=1.0)
    except OSError:
        return None
    if not reply.ok:
        return -1
    msg = reply.body or b""
    return msg[1] if msg[:1] == b"\x08" else 0


# ---------------------------------------------------------------------------------------------
# Protobuf bodies, encoded by hand (field numbers from proto/torchwire/v1 and the peers' protos).

def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 127, v >> 7
        out.append(b | (128 if v else 0))
        if not v:
            return bytes(out)


def _pb_bytes(fieldno: int, b: bytes) -> bytes:
    return _varint(fieldno << 3 | 2) + _varint(len(b)) + b


def _pb_uint(fieldno: int, v: int) -> bytes:
    return _varint(fieldno << 3) + _varint(v)


def _pb_floats(fieldno: int, xs: list[float]) -> bytes:
    return _pb_bytes(fieldno, struct.pack(f"<{len(xs)}f", *xs))


def tw_predict(model: str, input_name: str, features: int) -> bytes:
    """torchwire.v1 PredictRequest: one FLOAT32 tensor [1, features] of 0.5."""
    tensor = (_pb_bytes(1, input_name.encode()) + _pb_uint(2, 1)  # FLOAT32
              + _pb_bytes(3, _varint(1) + _varint(features)) + _pb_floats(4, [0.5] * features))
    return _pb_bytes(1, model.encode()) + _pb_bytes(3, tensor)


def tw_sentiment(model: str, text: str) -> bytes:
    """torchwire.v1 SentimentRequest with one text."""
    return _pb_bytes(1, text.encode()) + _pb_bytes(3, model.encode())


def py_predict(model: str, features: int) -> bytes:
    """The Python peer's serving.v1 PredictRequest: one row of 0.5."""
    return _pb_bytes(1, model.encode()) + _pb_uint(2, 1) + _pb_uint(3, features) + _pb_floats(4, [0.5] * features)


def py_classify(model: str, text: str) -> bytes:
    """The Python peer's serving.v1 TextRequest with one text."""
    return _pb_bytes(1, model.encode()) + _pb_bytes(2, text.encode())
