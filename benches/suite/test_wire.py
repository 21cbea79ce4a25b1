"""Self-test of the suite's gRPC client (standard library only, well under a second):

    .venv/bin/python -m unittest benches.suite.test_wire

HPACK decoding against RFC 7541's own examples, and `unary()` against a scripted HTTP/2 server on
127.0.0.1:0 that answers with exactly the frames each case needs, so every way a gRPC answer can end
is judged by its grpc-status and nothing else.
"""
from __future__ import annotations

import socket
import threading
import unittest

from . import wire
from .hpack import HUFFMAN, Decoder, HpackError, encode_int, encode_literal, huffman_decode
from .wire import (CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, RST_STREAM, SETTINGS, frame)


def huffman_encode(text: str) -> bytes:
    acc, bits = 0, 0
    for byte in text.encode():
        n, code = HUFFMAN[byte]
        acc, bits = (acc << n) | code, bits + n
    pad = -bits % 8
    acc, bits = (acc << pad) | ((1 << pad) - 1), bits + pad
    return acc.to_bytes(bits // 8, "big")


def block(*fields: tuple[str, str]) -> bytes:
    return b"".join(encode_literal(k, v) for k, v in fields)


def message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


OK_HEADERS = block((":status", "200"), ("content-type", "application/grpc"))


class ScriptedServer:
    """Accepts one connection, sends SETTINGS and the scripted frames, then reads until the client closes."""

    def __init__(self, frames: bytes):
        self.frames = frames
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(5)
            conn.recv(65536)  # the preface, SETTINGS, the request
            conn.sendall(frame(SETTINGS, 0, 0) + self.frames)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
        self.listener.close()

    def call(self) -> wire.Reply:
        reply = wire.unary(self.port, "/torchwire.v1.Inference/Predict", b"\x0a\x01m", timeout=5)
        self.thread.join(5)
        return reply


def answer(*frames: bytes) -> wire.Reply:
    return ScriptedServer(b"".join(frames)).call()


class HpackTest(unittest.TestCase):
    def test_rfc_huffman_strings(self):  # RFC 7541 C.4.1-C.4.3
        self.assertEqual(huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")), b"www.example.com")
        self.assertEqual(huffman_decode(bytes.fromhex("a8eb10649cbf")), b"no-cache")
        self.assertEqual(huffman_decode(bytes.fromhex("25a849e95bb8e8b4bf")), b"custom-value")
        self.assertEqual(huffman_encode("custom-key"), bytes.fromhex("25a849e95ba97d7f"))

    def test_bad_padding_is_refused(self):
        with self.assertRaises(HpackError):
            huffman_decode(b"\x00")  # five 0 bits ('0'), then three 0 bits: padding must be 1s

    def test_rfc_requests_share_the_dynamic_table(self):  # RFC 7541 C.4.1, C.4.2
        d = Decoder()
        first = d.decode(bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
        self.assertEqual(first[-1], (":authority", "www.example.com"))
        self.assertEqual(d.size, 57)
        second = d.decode(bytes.fromhex("828684be5886a8eb10649cbf"))
        self.assertEqual(second[3:], [(":authority", "www.example.com"), ("cache-control", "no-cache")])
        self.assertEqual(d.size, 110)

    def test_size_update_evicts(self):
        d = Decoder()
        d.decode(bytes.fromhex("418cf1e3c2e5f23a6ba0ab90f4ff"))
        self.assertEqual(d.decode(encode_int(0, 5, 0x20)), [])
        self.assertEqual((d.size, d.dynamic), (0, []))
        with self.assertRaises(HpackError):
            d.decode(bytes([0x80 | 62]))


class StatusTest(unittest.TestCase):
    def test_ok_with_message_and_trailers(self):
        r = answer(frame(HEADERS, END_HEADERS, 1, OK_HEADERS), frame(DATA, 0, 1, message(b"\x08\x01")),
                   frame(HEADERS, END_HEADERS | END_STREAM, 1, block(("grpc-status", "0"))))
        self.assertTrue(r.ok)
        self.assertEqual(r.body, b"\x08\x01")

    def test_error_trailers_win_over_a_body(self):
        r = answer(frame(HEADERS, END_HEADERS, 1, OK_HEADERS), frame(DATA, 0, 1, message(b"\x08\x01")),
                   frame(HEADERS, END_HEADERS | END_STREAM, 1, block(("grpc-status", "13"), ("grpc-message", "boom"))))
        self.assertFalse(r.ok)
        self.assertEqual((r.code, r.message, r.body), ("INTERNAL", "boom", None))

    def test_trailers_only_error(self):
        r = answer(frame(HEADERS, END_HEADERS | END_STREAM, 1, OK_HEADERS + block(
            ("grpc-status", "5"), ("grpc-message", "model%20%22x%22%20not%20found"))))
        self.assertEqual((r.code, r.message), ("NOT_FOUND", 'model "x" not found'))

    def test_huffman_indexed_trailers_split_over_continuation(self):
        # As h2 sends them: `:status: 200` from the static table, a name indexed into the dynamic
        # table, and Huffman-coded values; the trailer block split over HEADERS + CONTINUATION.
        head = bytes([0x88]) + b"\x40" + encode_int(12, 7) + b"content-type" + encode_int(16, 7) + b"application/grpc"
        status = b"\x00" + encode_int(11, 7) + b"grpc-status"
        value = huffman_encode("3")
        trailers = status + bytes([0x80 | len(value)]) + value + bytes([0x80 | 62])  # content-type again
        r = answer(frame(HEADERS, END_HEADERS, 1, head), frame(DATA, 0, 1, message(b"x")),
                   frame(HEADERS, END_STREAM, 1, trailers[:5]), frame(CONTINUATION, END_HEADERS, 1, trailers[5:]))
        self.assertEqual(r.code, "INVALID_ARGUMENT")

    def test_no_trailers_is_unknown(self):
        r = answer(frame(HEADERS, END_HEADERS, 1, OK_HEADERS), frame(DATA, END_STREAM, 1, message(b"x")))
        self.assertEqual(r.code, "UNKNOWN")

    def test_http_status_without_grpc_status(self):
        r = answer(frame(HEADERS, END_HEADERS | END_STREAM, 1, block((":status", "503"))))
        self.assertEqual(r.code, "UNAVAILABLE")

    def test_ok_without_a_message_is_internal(self):
        r = answer(frame(HEADERS, END_HEADERS | END_STREAM, 1, OK_HEADERS + block(("grpc-status", "0"))))
        self.assertEqual(r.code, "INTERNAL")

    def test_reset_stream(self):
        r = answer(frame(HEADERS, END_HEADERS, 1, OK_HEADERS), frame(RST_STREAM, 0, 1, (7).to_bytes(4, "big")))
        self.assertEqual(r.code, "UNAVAILABLE")


if __name__ == "__main__":
    unittest.main()
