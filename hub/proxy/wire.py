"""HTTP/1.1 on the wire for the proxy's fast path: heads parsed, bodies measured, never copied.

    head = parse_request(b"GET /user/alice/ HTTP/1.1\\r\\nHost: hub\\r\\n")
    head.method, head.target, head.header("host")          # "GET", "/user/alice/", "hub"
    body = BodyScanner.fixed(5)
    end = body.feed(b"hello GET /next", 0)                 # 5: where this body ends
    body.done                                              # True

A proxy that passes bytes through unchanged must know exactly where each
message ends, and must agree with the server behind it, or requests can be
smuggled past it. So the rules here are strict: a head is refused on any
doubt (obsolete line folding, whitespace before a colon, a bad character in
a name), and chunk sizes must be plain hex on a line ending in CRLF.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_LINE = 4096
# Heads up to this size are kept per connection, to be recognized when repeated
# (see ``parse_request``); larger ones are rare and not worth the memory.
KEEP_HEAD = 16 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_HEX = re.compile(rb"[0-9a-fA-F]{1,15}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")


class WireError(Exception):
    """The bytes are not HTTP/1.1 the proxy is willing to pass on."""


# The headers the fast path reads; all others it passes on (or drops) unread.
WATCHED = (
    "host",
    "authorization",
    "cookie",
    "accept",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "expect",
    "origin",
)


def line_pattern(names: Iterable[str]) -> re.Pattern[bytes]:
    """Whole header lines (with their CRLF) whose name is one of ``names``, any case."""
    alternatives = b"|".join(re.escape(n.encode()) for n in sorted(names, key=len, reverse=True))
    return re.compile(rb"^(?:" + alternatives + rb"):[^\r\n]*\r\n", re.I | re.M)


def _field_pattern(names: Iterable[str]) -> re.Pattern[bytes]:
    # Anchored on a literal newline rather than "^" with re.M: the engine then
    # jumps from line to line instead of trying every position (twice as fast
    # on a browser's head). Searched in b"\n" + block.
    alternatives = b"|".join(re.escape(n.encode()) for n in sorted(names, key=len, reverse=True))
    return re.compile(rb"\n(" + alternatives + rb"):([^\r\n]*)", re.I)


_WATCHED = _field_pattern(WATCHED)


class Head:
    """A request or response head: its start line in parts, and its header lines as sent.

    ``block`` holds the header lines, each ending in CRLF, exactly as received
    (checked, never rewritten), so that a proxy can pass most of them on with
    one regular-expression substitution instead of a loop over every header.
    ``header`` answers only for the names in ``WATCHED``; ``headers`` parses
    them all, for the rare paths that need every one.
    """

    __slots__ = ("block", "fields", "first", "line")

    def __init__(self, first: tuple[str, str, str], block: bytes, line: bytes = b"") -> None:
        self.first = first  # (method, target, version) or (version, code, reason)
        self.line = line  # the start line as received, to recognize it next time
        self.block = block
        # ``fields``: the WATCHED headers by lower-case name, duplicates joined by
        # "," ("; " for Cookie).
        fields: dict[str, str] = {}
        for raw_name, raw_value in _WATCHED.findall(b"\n" + block):
            name = raw_name.decode("latin1").lower()
            value = raw_value.strip(b" \t").decode("latin1")
            if name in fields:
                value = fields[name] + ("; " if name == "cookie" else ",") + value
            fields[name] = value
        self.fields = fields

    def again(self, first: tuple[str, str, str], line: bytes) -> Head:
        """A head with this one's header lines (and their reading) under another start line."""
        head = Head.__new__(Head)
        head.first = first
        head.line = line
        head.block = self.block
        head.fields = self.fields  # never changed once read: shared
        return head

    def header(self, name: str) -> str | None:
        """The value of a ``WATCHED`` header (lower case); ``None`` if absent."""
        return self.fields.get(name)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header as (name as sent, value without surrounding spaces), in order."""
        out = []
        for line in self.block.decode("latin1").split("\r\n")[:-1]:
            name, _, value = line.partition(":")
            out.append((name, value.strip(" \t")))
        return out

    def tokens(self, name: str) -> frozenset[str]:
        """The lower-cased comma-separated tokens of ``name`` (``Connection``, ``Upgrade``)."""
        value = self.fields.get(name)
        if not value:
            return frozenset()
        return frozenset(t.strip().lower() for t in value.split(",") if t.strip())

    @property
    def method(self) -> str:
        return self.first[0]

    @property
    def target(self) -> str:
        return self.first[1]

    @property
    def version(self) -> str:
        return self.first[2]


def _block(data: bytes) -> bytes:
    if not data:
        return b""
    block = data + b"\r\n"
    # One regular expression checks every line at once: a token, a colon, then
    # only visible characters, spaces and tabs (no bare CR or LF, no folding).
    if not _HEADER_BLOCK.fullmatch(block):
        raise WireError("bad header line")
    return block


def _same_block(previous: Head | None, block: bytes) -> bool:
    """Whether ``block`` (as received, without its last CRLF) is ``previous``'s, byte for byte."""
    if previous is None:
        return False
    known = previous.block
    return len(known) == len(block) + 2 and known.startswith(block) if block else not known


def parse_request(data: bytes, previous: Head | None = None) -> Head:
    """Parse a request head (without its final blank line).

    ``previous``, the head before on the same connection: a start line or
    header lines identical to its own, byte for byte, are not read again
    (keep-alive clients repeat their headers; what was checked then holds).
    """
    first, _, block = data.partition(b"\r\n")
    if previous is not None and first == previous.line:
        start = previous.first
    else:
        parts = first.split(b" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _VERSION.fullmatch(parts[2]):
            raise WireError("bad request line")
        if not parts[1] or _BAD_VALUE.search(parts[1]):
            raise WireError("bad request target")
        start = (parts[0].decode("latin1"), parts[1].decode("latin1"), parts[2].decode("latin1"))
    if previous is not None and _same_block(previous, block):
        return previous if first == previous.line else previous.again(start, first)
    return Head(start, _block(block), first)


def parse_response(data: bytes, previous: Head | None = None) -> Head:
    """Parse a response head (without its final blank line); ``previous`` as for requests."""
    first, _, block = data.partition(b"\r\n")
    if previous is not None and first == previous.line:
        start = previous.first
    else:
        version, _, rest = first.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not _VERSION.fullmatch(version) or len(code) != 3 or not code.isdigit():
            raise WireError("bad status line")
        if _BAD_VALUE.search(reason):
            raise WireError("bad status line")
        start = (version.decode("latin1"), code.decode("latin1"), reason.decode("latin1"))
    if previous is not None and _same_block(previous, block):
        return previous if first == previous.line else previous.again(start, first)
    return Head(start, _block(block), first)


def content_length(value: str) -> int | None:
    """A ``Content-Length`` value, or ``None`` when it is not one plain number."""
    values = {v.strip() for v in value.split(",")}
    only = values.pop()
    if values or not _DIGITS.fullmatch(only):
        return None
    return int(only)


_NONE, _FIXED, _CHUNKED, _UNTIL_CLOSE = range(4)
_SIZE, _DATA, _CRLF, _TRAILER = range(4)


class BodyScanner:
    """Follows one message body through the bytes that carry it, to find where it ends."""

    __slots__ = ("_left", "_line", "_mode", "_state", "done")

    def __init__(self, mode: int, left: int = 0) -> None:
        self._mode = mode
        self._left = left
        self._state = _SIZE
        self._line = b""
        self.done = mode == _NONE or (mode == _FIXED and left == 0)

    @classmethod
    def none(cls) -> BodyScanner:
        return cls(_NONE)

    @classmethod
    def fixed(cls, length: int) -> BodyScanner:
        return cls(_FIXED, length)

    @classmethod
    def chunked(cls) -> BodyScanner:
        return cls(_CHUNKED)

    @classmethod
    def until_close(cls) -> BodyScanner:
        return cls(_UNTIL_CLOSE)

    @property
    def is_chunked(self) -> bool:
        return self._mode == _CHUNKED

    @property
    def streams_fixed(self) -> bool:
        """A body of known length with bytes still to come: it can pass without a look."""
        return self._mode == _FIXED and not self.done

    @property
    def until_closed(self) -> bool:
        return self._mode == _UNTIL_CLOSE

    def feed(self, data: bytes, pos: int) -> int:
        """Consume body bytes of ``data`` from ``pos``; return where the body stopped."""
        if self.done:
            return pos
        mode = self._mode
        if mode == _FIXED:
            take = min(self._left, len(data) - pos)
            self._left -= take
            self.done = self._left == 0
            return pos + take
        if mode == _UNTIL_CLOSE:
            return len(data)
        return self._feed_chunked(data, pos)

    def _feed_chunked(self, data: bytes, pos: int) -> int:
        end = len(data)
        while pos < end and not self.done:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - pos)
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = _CRLF
            elif state == _CRLF:
                take = min(2 - len(self._line), end - pos)
                self._line += data[pos : pos + take]
                pos += take
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise WireError("bad chunk end")
                    self._line = b""
                    self._state = _SIZE
            else:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._line += data[pos:]
                    if len(self._line) > MAX_LINE:
                        raise WireError("chunk line too long")
                    return end
                line = self._line + data[pos : newline + 1]
                self._line = b""
                pos = newline + 1
                if len(line) > MAX_LINE or not line.endswith(b"\r\n"):
                    raise WireError("bad chunk line")
                if state == _SIZE:
                    size = line[:-2].split(b";", 1)[0]
                    if not _HEX.fullmatch(size):
                        raise WireError("bad chunk size")
                    self._left = int(size, 16)
                    self._state = _DATA if self._left else _TRAILER
                elif line == b"\r\n":
                    self.done = True
        return pos

    def closed(self) -> bool:
        """The connection closed: whether that is a clean end of this body."""
        if self._mode == _UNTIL_CLOSE:
            self.done = True
        return self.done


NO_BODY = BodyScanner.none()  # never changes: shared by every message without a body


def body_length(value: str) -> int:
    """The single length of a checked ``Content-Length`` (``a, a`` counts as ``a``)."""
    return int(value.split(",")[0].strip())


def request_body(request: Head) -> BodyScanner | None:
    """How the request's body is framed, or ``None`` when it is ambiguous (refused)."""
    encoding = request.fields.get("transfer-encoding")
    length = request.fields.get("content-length")
    if encoding is not None:
        if length is not None or encoding.strip().lower() != "chunked":
            return None
        if request.version != "HTTP/1.1":
            return None
        return BodyScanner.chunked()
    if length is None:
        return NO_BODY
    values = {v.strip() for v in length.split(",")}
    value = values.pop()
    if values or not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    return BodyScanner.fixed(int(value))
