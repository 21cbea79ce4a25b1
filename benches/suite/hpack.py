"""HPACK (RFC 7541), as much as a gRPC client needs: encoding request headers as plain literals,
and decoding whatever a server sends back (indexed fields, literals with and without indexing,
the dynamic table and its size updates, Huffman-coded strings).

Used by wire.py only. One Decoder per HTTP/2 connection: the dynamic table lives as long as the
connection, and every header block on it (headers, trailers) must go through the same Decoder.
"""
from __future__ import annotations

STATIC_TABLE = [  # RFC 7541 Appendix A; index 1 first
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
    ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
    ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
    ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
    ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
    ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
]

HUFFMAN = [  # (bits, code) of symbols 0-255 and EOS (256), RFC 7541 Appendix B
    (13, 0x1ff8), (23, 0x7fffd8), (28, 0xfffffe2), (28, 0xfffffe3), (28, 0xfffffe4), (28, 0xfffffe5),
    (28, 0xfffffe6), (28, 0xfffffe7), (28, 0xfffffe8), (24, 0xffffea), (30, 0x3ffffffc), (28, 0xfffffe9),
    (28, 0xfffffea), (30, 0x3ffffffd), (28, 0xfffffeb), (28, 0xfffffec), (28, 0xfffffed), (28, 0xfffffee),
    (28, 0xfffffef), (28, 0xffffff0), (28, 0xffffff1), (28, 0xffffff2), (30, 0x3ffffffe), (28, 0xffffff3),
    (28, 0xffffff4), (28, 0xffffff5), (28, 0xffffff6), (28, 0xffffff7), (28, 0xffffff8), (28, 0xffffff9),
    (28, 0xffffffa), (28, 0xffffffb), (6, 0x14), (10, 0x3f8), (10, 0x3f9), (12, 0xffa),
    (13, 0x1ff9), (6, 0x15), (8, 0xf8), (11, 0x7fa), (10, 0x3fa), (10, 0x3fb),
    (8, 0xf9), (11, 0x7fb), (8, 0xfa), (6, 0x16), (6, 0x17), (6, 0x18),
    (5, 0x0), (5, 0x1), (5, 0x2), (6, 0x19), (6, 0x1a), (6, 0x1b),
    (6, 0x1c), (6, 0x1d), (6, 0x1e), (6, 0x1f), (7, 0x5c), (8, 0xfb),
    (15, 0x7ffc), (6, 0x20), (12, 0xffb), (10, 0x3fc), (13, 0x1ffa), (6, 0x21),
    (7, 0x5d), (7, 0x5e), (7, 0x5f), (7, 0x60), (7, 0x61), (7, 0x62),
    (7, 0x63), (7, 0x64), (7, 0x65), (7, 0x66), (7, 0x67), (7, 0x68),
    (7, 0x69), (7, 0x6a), (7, 0x6b), (7, 0x6c), (7, 0x6d), (7, 0x6e),
    (7, 0x6f), (7, 0x70), (7, 0x71), (7, 0x72), (8, 0xfc), (7, 0x73),
    (8, 0xfd), (13, 0x1ffb), (19, 0x7fff0), (13, 0x1ffc), (14, 0x3ffc), (6, 0x22),
    (15, 0x7ffd), (5, 0x3), (6, 0x23), (5, 0x4), (6, 0x24), (5, 0x5),
    (6, 0x25), (6, 0x26), (6, 0x27), (5, 0x6), (7, 0x74), (7, 0x75),
    (6, 0x28), (6, 0x29), (6, 0x2a), (5, 0x7), (6, 0x2b), (7, 0x76),
    (6, 0x2c), (5, 0x8), (5, 0x9), (6, 0x2d), (7, 0x77), (7, 0x78),
    (7, 0x79), (7, 0x7a), (7, 0x7b), (15, 0x7ffe), (11, 0x7fc), (14, 0x3ffd),
    (13, 0x1ffd), (28, 0xffffffc), (20, 0xfffe6), (22, 0x3fffd2), (20, 0xfffe7), (20, 0xfffe8),
    (22, 0x3fffd3), (22, 0x3fffd4), (22, 0x3fffd5), (23, 0x7fffd9), (22, 0x3fffd6), (23, 0x7fffda),
    (23, 0x7fffdb), (23, 0x7fffdc), (23, 0x7fffdd), (23, 0x7fffde), (24, 0xffffeb), (23, 0x7fffdf),
    (24, 0xffffec), (24, 0xffffed), (22, 0x3fffd7), (23, 0x7fffe0), (24, 0xffffee), (23, 0x7fffe1),
    (23, 0x7fffe2), (23, 0x7fffe3), (23, 0x7fffe4), (21, 0x1fffdc), (22, 0x3fffd8), (23, 0x7fffe5),
    (22, 0x3fffd9), (23, 0x7fffe6), (23, 0x7fffe7), (24, 0xffffef), (22, 0x3fffda), (21, 0x1fffdd),
    (20, 0xfffe9), (22, 0x3fffdb), (22, 0x3fffdc), (23, 0x7fffe8), (23, 0x7fffe9), (21, 0x1fffde),
    (23, 0x7fffea), (22, 0x3fffdd), (22, 0x3fffde), (24, 0xfffff0), (21, 0x1fffdf), (22, 0x3fffdf),
    (23, 0x7fffeb), (23, 0x7fffec), (21, 0x1fffe0), (21, 0x1fffe1), (22, 0x3fffe0), (21, 0x1fffe2),
    (23, 0x7fffed), (22, 0x3fffe1), (23, 0x7fffee), (23, 0x7fffef), (20, 0xfffea), (22, 0x3fffe2),
    (22, 0x3fffe3), (22, 0x3fffe4), (23, 0x7ffff0), (22, 0x3fffe5), (22, 0x3fffe6), (23, 0x7ffff1),
    (26, 0x3ffffe0), (26, 0x3ffffe1), (20, 0xfffeb), (19, 0x7fff1), (22, 0x3fffe7), (23, 0x7ffff2),
    (22, 0x3fffe8), (25, 0x1ffffec), (26, 0x3ffffe2), (26, 0x3ffffe3), (26, 0x3ffffe4), (27, 0x7ffffde),
    (27, 0x7ffffdf), (26, 0x3ffffe5), (24, 0xfffff1), (25, 0x1ffffed), (19, 0x7fff2), (21, 0x1fffe3),
    (26, 0x3ffffe6), (27, 0x7ffffe0), (27, 0x7ffffe1), (26, 0x3ffffe7), (27, 0x7ffffe2), (24, 0xfffff2),
    (21, 0x1fffe4), (21, 0x1fffe5), (26, 0x3ffffe8), (26, 0x3ffffe9), (28, 0xffffffd), (27, 0x7ffffe3),
    (27, 0x7ffffe4), (27, 0x7ffffe5), (20, 0xfffec), (24, 0xfffff3), (20, 0xfffed), (21, 0x1fffe6),
    (22, 0x3fffe9), (21, 0x1fffe7), (21, 0x1fffe8), (23, 0x7ffff3), (22, 0x3fffea), (22, 0x3fffeb),
    (25, 0x1ffffee), (25, 0x1ffffef), (24, 0xfffff4), (24, 0xfffff5), (26, 0x3ffffea), (23, 0x7ffff4),
    (26, 0x3ffffeb), (27, 0x7ffffe6), (26, 0x3ffffec), (26, 0x3ffffed), (27, 0x7ffffe7), (27, 0x7ffffe8),
    (27, 0x7ffffe9), (27, 0x7ffffea), (27, 0x7ffffeb), (28, 0xffffffe), (27, 0x7ffffec), (27, 0x7ffffed),
    (27, 0x7ffffee), (27, 0x7ffffef), (27, 0x7fffff0), (26, 0x3ffffee), (30, 0x3fffffff),
]
EOS = 256
_HUFFMAN_DECODE = {(bits, code): sym for sym, (bits, code) in enumerate(HUFFMAN)}


class HpackError(ValueError):
    """A header block that does not decode: the connection is unusable (a COMPRESSION_ERROR)."""


def encode_int(value: int, prefix: int, first: int = 0) -> bytes:
    """An integer with an N-bit prefix (section 5.1); `first` holds the flag bits above the prefix."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes([first | value])
    out, value = [first | top], value - top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes(out + [value])


def encode_literal(name: str, value: str) -> bytes:
    """A literal field without indexing, new name, no Huffman (section 6.2.2): the simplest valid form."""
    n, v = name.encode(), value.encode()
    return b"\x00" + encode_int(len(n), 7) + n + encode_int(len(v), 7) + v


def huffman_decode(data: bytes) -> bytes:
    """Section 5.2: codes of 5-30 bits, padded to a byte with the most significant bits of EOS (1s)."""
    out, acc, bits = bytearray(), 0, 0
    for byte in data:
        for shift in range(7, -1, -1):
            acc, bits = (acc << 1) | ((byte >> shift) & 1), bits + 1
            sym = _HUFFMAN_DECODE.get((bits, acc)) if bits >= 5 else None
            if sym is None:
                if bits > 30:
                    raise HpackError("invalid Huffman code")
                continue
            if sym == EOS:
                raise HpackError("EOS inside a Huffman string")
            out.append(sym)
            acc, bits = 0, 0
    if bits > 7 or acc != (1 << bits) - 1:
        raise HpackError("Huffman padding is not a prefix of EOS")
    return bytes(out)


class Decoder:
    """Decodes the header blocks of one connection, keeping its dynamic table (section 2.3.2)."""

    def __init__(self, max_size: int = 4096):
        self.max_size = max_size  # SETTINGS_HEADER_TABLE_SIZE we advertise: the default
        self.limit = max_size  # the encoder may lower it with a size update, up to max_size
        self.size = 0
        self.dynamic: list[tuple[str, str]] = []  # newest first: index 62 is dynamic[0]

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The (name, value) fields of one complete header block, in order."""
        fields, pos = [], 0
        while pos < len(block):
            b = block[pos]
            if b & 0x80:  # indexed field
                index, pos = self._int(block, pos, 7)
                fields.append(self._entry(index))
            elif b & 0x40:  # literal with incremental indexing
                name, value, pos = self._literal(block, pos, 6)
                fields.append((name, value))
                self._insert(name, value)
            elif b & 0x20:  # dynamic table size update
                size, pos = self._int(block, pos, 5)
                if size > self.max_size:
                    raise HpackError(f"table size update to {size} exceeds {self.max_size}")
                self.limit = size
                self._evict(size)
            else:  # literal without indexing (0000) or never indexed (0001)
                name, value, pos = self._literal(block, pos, 4)
                fields.append((name, value))
        return fields

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        if 0 <= index - len(STATIC_TABLE) - 1 < len(self.dynamic):
            return self.dynamic[index - len(STATIC_TABLE) - 1]
        raise HpackError(f"header index {index} is not in the tables")

    def _insert(self, name: str, value: str) -> None:
        size = len(name.encode()) + len(value.encode()) + 32
        self._evict(self.limit - size)
        if size <= self.limit:  # an entry larger than the table empties it and is not added
            self.dynamic.insert(0, (name, value))
            self.size += size

    def _evict(self, limit: int) -> None:
        while self.dynamic and self.size > max(limit, 0):
            name, value = self.dynamic.pop()
            self.size -= len(name.encode()) + len(value.encode()) + 32

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[str, str, int]:
        index, pos = self._int(block, pos, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return name, value, pos

    def _string(self, block: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(block):
            raise HpackError("header block ends inside a string")
        huffman = bool(block[pos] & 0x80)
        length, pos = self._int(block, pos, 7)
        raw = block[pos:pos + length]
        if len(raw) < length:
            raise HpackError("header block ends inside a string")
        return (huffman_decode(raw) if huffman else raw).decode("utf-8", errors="replace"), pos + length

    @staticmethod
    def _int(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
        top = (1 << prefix) - 1
        value, pos = block[pos] & top, pos + 1
        if value < top:
            return value, pos
        shift = 0
        while True:
            if pos >= len(block):
                raise HpackError("header block ends inside an integer")
            b, pos = block[pos], pos + 1
            value += (b & 127) << shift
            shift += 7
            if not b & 128:
                return value, pos
