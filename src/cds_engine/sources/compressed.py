"""Reading possibly-gzipped input files with caps (security issue 15, item 6; red-team L10).

A 500 KB ``bomb.json.gz`` that expands to 500 MB of whitespace took 1.17 GB of memory when it was
decompressed in one call. Here everything is streamed:

* a single JSON Bundle: at most :data:`MAX_BUNDLE_BYTES` (200 MiB) after decompression;
* NDJSON: line by line, each line at most :data:`MAX_LINE_BYTES`, no total cap (Bulk Data
  exports run to gigabytes);
* both: decompressed output may not exceed :data:`MAX_RATIO` (100) times the compressed input
  read so far (checked once more than :data:`RATIO_GRACE_BYTES` came out; real FHIR JSON
  compresses about 10–20:1).

A breach raises :class:`InputTooLarge` (an ``OSError``: the file is reported as unreadable and
skipped, the run goes on).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_LINE_BYTES",
    "MAX_RATIO",
    "InputTooLarge",
    "byte_lines",
    "capped_lines",
    "open_text",
    "read_bundle_bytes",
]

MAX_BUNDLE_BYTES = 200 * 1024 * 1024
MAX_LINE_BYTES = 32 * 1024 * 1024
MAX_RATIO = 100
RATIO_GRACE_BYTES = 1024 * 1024
_CHUNK = 64 * 1024
_PIECE = 1024 * 1024  # decompressed bytes per zlib call when a whole bundle is read
_GZIP_MAGIC = b"\x1f\x8b"


class InputTooLarge(OSError):
    """A capped input: too large after decompression, or compressed more than MAX_RATIO:1."""


class _GunzipStream(io.RawIOBase):
    """A gzip file as a raw stream, decompressed chunk by chunk with a ratio check (multi-member)."""

    def __init__(self, raw: IO[bytes], ratio: int) -> None:
        self._raw = raw
        self._ratio = ratio
        self._inflate = zlib.decompressobj(wbits=31)
        self._pending = b""  # compressed bytes not yet fed
        self._out = b""  # decompressed bytes not yet returned
        self.consumed = 0
        self.produced = 0
        self._eof = False
        self._in_member = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._out and not self._eof:
            if self._inflate.unconsumed_tail:
                data = self._inflate.unconsumed_tail
            else:
                if not self._pending:
                    self._pending = self._raw.read(_CHUNK)
                    self.consumed += len(self._pending)
                if not self._pending:  # no more input
                    if self._in_member:
                        raise EOFError("compressed file ended before the end-of-stream marker")
                    self._eof = True
                    return
                data, self._pending = self._pending, b""
                self._in_member = True
            self._out = self._inflate.decompress(data, _CHUNK)
            if self._inflate.eof:  # a member ended: another may follow
                self._pending = self._inflate.unused_data + self._pending
                self._inflate = zlib.decompressobj(wbits=31)
                self._in_member = False
            self.produced += len(self._out)
            if self.produced > RATIO_GRACE_BYTES and self.produced > self._ratio * max(self.consumed, 1):
                raise InputTooLarge(f"compressed more than {self._ratio}:1 (a decompression bomb?): not read")

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._fill()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _binary(path: Path, ratio: int) -> IO[bytes]:
    raw = path.open("rb")
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        return io.BufferedReader(_GunzipStream(raw, ratio), _CHUNK)
    raw.seek(0)
    return raw


def _gunzip_pieces(raw: IO[bytes], ratio: int) -> Iterator[bytes]:
    """The decompressed pieces of a gzip file (multi-member), each at most :data:`_PIECE` bytes.

    The ratio cap is checked after every zlib call, so a bomb is refused after a bounded amount of
    output; a file cut short raises ``EOFError`` after the pieces before the cut.
    """
    produced = consumed = 0
    inflate = zlib.decompressobj(wbits=31)
    pending = b""
    in_member = False
    while True:
        if inflate.unconsumed_tail:
            data = inflate.unconsumed_tail
        else:
            if not pending:
                pending = raw.read(_CHUNK)
                consumed += len(pending)
            if not pending:
                if in_member:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                return
            data, pending = pending, b""
            in_member = True
        piece = inflate.decompress(data, _PIECE)
        if inflate.eof:  # a member ended: another may follow
            pending = inflate.unused_data + pending
            inflate = zlib.decompressobj(wbits=31)
            in_member = False
        produced += len(piece)
        if produced > RATIO_GRACE_BYTES and produced > ratio * max(consumed, 1):
            raise InputTooLarge(f"compressed more than {ratio}:1 (a decompression bomb?): not read")
        if piece:
            yield piece


def _gunzip_whole(raw: IO[bytes], limit: int, ratio: int) -> bytes:
    """A whole gzip file (multi-member) with the same caps as :class:`_GunzipStream`.

    Why not read through the stream: it hands out 64 KiB at a time through Python, which cost as
    much as the gunzip itself for a bundle; here each zlib call may return up to 1 MiB, and both
    caps are checked after every call, so a bomb is still refused after a bounded amount of output.
    """
    pieces: list[bytes] = []
    produced = 0
    for piece in _gunzip_pieces(raw, ratio):
        produced += len(piece)
        pieces.append(piece)
        if produced > limit:
            raise InputTooLarge(f"over {limit // (1024 * 1024)} MiB as JSON: not read")
    return b"".join(pieces)


def read_bundle_bytes(path: Path, limit: int = MAX_BUNDLE_BYTES, ratio: int = MAX_RATIO) -> bytes:
    """The whole (decompressed) file, refused past ``limit`` bytes or ``ratio``:1 compression."""
    with path.open("rb") as raw:
        if raw.read(2) == _GZIP_MAGIC:
            raw.seek(0)
            return _gunzip_whole(raw, limit, ratio)
        raw.seek(0)
        data = raw.read(limit + 1)
    if len(data) > limit:
        raise InputTooLarge(f"over {limit // (1024 * 1024)} MiB as JSON: not read")
    return data


def open_text(path: Path, ratio: int = MAX_RATIO) -> IO[str]:
    """A text stream of a (possibly gzipped) file, decompressed as it is read."""
    return io.TextIOWrapper(_binary(path, ratio), encoding="utf-8")


def capped_lines(stream: IO[str], limit: int = MAX_LINE_BYTES) -> Iterator[str | None]:
    """The lines of ``stream``; None in place of a line longer than ``limit`` (skipped, not held)."""
    while True:
        line = stream.readline(limit)
        if not line:
            return
        if len(line) >= limit and not line.endswith("\n"):
            while True:  # the rest of the overlong line, in bounded pieces
                rest = stream.readline(limit)
                if not rest or rest.endswith("\n"):
                    break
            yield None
            continue
        yield line


def _pieces(path: Path, ratio: int) -> Iterator[bytes]:
    """A (possibly gzipped) file in pieces of up to :data:`_PIECE` decompressed bytes."""
    with path.open("rb") as raw:
        if raw.read(2) == _GZIP_MAGIC:
            raw.seek(0)
            yield from _gunzip_pieces(raw, ratio)
            return
        raw.seek(0)
        while piece := raw.read(_PIECE):
            yield piece


def _newlines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The pieces with every universal line end (``\\r\\n``, a lone ``\\r``) made ``\\n``, as a text
    stream reads them; a ``\\r`` that ends a piece waits for the next one (it may start with ``\\n``)."""
    carry = b""
    for piece in pieces:
        if carry:
            piece, carry = carry + piece, b""
        if b"\r" in piece:
            if piece.endswith(b"\r"):
                piece, carry = piece[:-1], b"\r"
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        yield piece
    if carry:
        yield b"\n"


def byte_lines(path: Path, limit: int = MAX_LINE_BYTES, ratio: int = MAX_RATIO) -> Iterator[bytes | None]:
    """The lines of a (possibly gzipped) file as UTF-8 bytes, without their line ends; None in place
    of a line of ``limit`` bytes or more (skipped, never held whole).

    Why not :func:`open_text` + :func:`capped_lines`: for a Bulk export that went through a Python
    raw stream 64 KiB at a time, a text decoder and ``readline`` per line, which cost more than the
    gunzip itself. Here zlib hands out 1 MiB at a time and ``bytes.find`` cuts the lines, with the
    same lines: they end where the text stream's universal newlines end them (``\\n``, ``\\r\\n``
    and a lone ``\\r``), text that is not UTF-8 raises ``UnicodeDecodeError`` at its line (the lines
    before it were given), and the caps on ratio and line length hold (the length in bytes, not
    characters).
    """
    held: list[bytes] = []  # the start of a line not yet ended by a newline
    size = 0
    overlong = False
    for piece in _newlines(_pieces(path, ratio)):
        ascii_ = piece.isascii()
        start = 0
        find = piece.find
        # find() (memchr) rather than split(): CPython splits bytes on one byte with a plain loop,
        # measured at a tenth of the instructions of partitioning an export
        while (end := find(b"\n", start)) >= 0:
            line = piece[start:end]
            start = end + 1
            check = not ascii_
            if held:  # its start came with an earlier piece
                line = b"".join((*held, line))
                held.clear()
                size = 0
                check = True
            if overlong or len(line) >= limit:
                overlong = False
                yield None
                continue
            if check and not line.isascii():
                line.decode("utf-8")  # raises as the text stream did
            yield line
        if overlong:
            continue
        last = piece[start:]  # not yet ended (b"" when the piece ended with a newline)
        held.append(last)
        size += len(last)
        if size >= limit:  # skipped up to its newline, in bounded memory
            held.clear()
            size = 0
            overlong = True
    line = b"".join(held)
    if overlong or len(line) >= limit:
        yield None
    elif line:
        if not line.isascii():
            line.decode("utf-8")
        yield line
