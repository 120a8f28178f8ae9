"""SCPI / IEEE 488.2 device core for the emulated instruments.

An emulated instrument is a :class:`ScpiDevice` subclass that registers its command tree with
:meth:`ScpiDevice.command`. The core frames and parses program messages (compound headers, short
and long mnemonics, optional nodes, numeric suffixes, unit suffixes, MIN/MAX/DEF, booleans, quoted
strings, definite and indefinite blocks), keeps the IEEE 488.2 status model (ESR/ESE, STB/SRE,
error queue) and formats responses. ``emulator/README.md`` documents the behaviour.

Written from IEEE 488.2-1992 (sections 6, 7, 8 and 11) and SCPI-1999 volume 1 (sections 6 and 7)
and volume 2 (chapter 21, error numbers); it shares no code with ``hil.instruments``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# SCPI-1999 vol. 2, 21.8: standard error numbers and texts used by the emulator.
ERROR_TEXT = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -103: "Invalid separator",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -120: "Numeric data error",
    -131: "Invalid suffix",
    -138: "Suffix not allowed",
    -141: "Invalid character data",
    -151: "Invalid string data",
    -200: "Execution error",
    -203: "Command protected",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -225: "Out of memory",
    -241: "Hardware missing",
    -300: "Device-specific error",
    -350: "Queue overflow",
    -410: "Query INTERRUPTED",
    -420: "Query UNTERMINATED",
}

# IEEE 488.2 11.5.1: Standard Event Status Register bits.
ESR_OPC, ESR_RQC, ESR_QYE, ESR_DDE, ESR_EXE, ESR_CME, ESR_URQ, ESR_PON = (1 << i for i in range(8))
# IEEE 488.2 11.2 + SCPI-1999 vol. 1 9.1: Status Byte bits.
STB_ERRQ, STB_QUES, STB_MAV, STB_ESB, STB_MSS, STB_OPER = 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

# SCPI requires a queue of at least 2 entries; 16 is a common instrument depth (it is also what
# the fuzz test counts against).
ERROR_QUEUE_DEPTH = 16
# SCPI-1999 vol. 2 21.8: an error string is at most 255 characters, device detail included.
MAX_ERROR_TEXT = 255


class ScpiError(Exception):
    """An error to put in the queue: raised by the parser and by command handlers."""

    def __init__(self, code: int, detail: str = ""):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def esr_bit(code: int) -> int:
    """IEEE 488.2 11.5.1: the ESR bit an error number sets."""
    if -199 <= code <= -100:
        return ESR_CME
    if -299 <= code <= -200:
        return ESR_EXE
    if -399 <= code <= -300 or code > 0:
        return ESR_DDE
    if -499 <= code <= -400:
        return ESR_QYE
    return 0


def _printable(text: str) -> str:
    # The detail goes inside a quoted response string: no quotes, nothing unprintable.
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c != '"' else "'" for c in text)


class ErrorQueue:
    """SCPI error/event queue: FIFO of ``(code, text)``; when full, the newest entry becomes
    -350 Queue overflow and later errors are discarded until the queue is read."""

    def __init__(self, depth: int = ERROR_QUEUE_DEPTH):
        self.depth = depth
        self._q: deque[tuple[int, str]] = deque()

    def push(self, code: int, detail: str = "") -> bool:
        """Queue an error; returns False when it was lost to an overflow."""
        if len(self._q) >= self.depth:
            self._q[-1] = (-350, ERROR_TEXT[-350])
            return False
        text = ERROR_TEXT.get(code, "Device-specific error")
        if detail:
            # SCPI-1999 vol. 2 21.8: device-dependent information follows the standard text,
            # separated by a semicolon, inside the same quoted string.
            text = f"{text};{_printable(detail)}"[:MAX_ERROR_TEXT]
        self._q.append((code, text))
        return True

    def pop(self) -> tuple[int, str]:
        return self._q.popleft() if self._q else (0, ERROR_TEXT[0])

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


# ----------------------------------------------------------------------------- parameters

# Linear time on any input: `\d+\.?\d*` would backtrack quadratically on a long run of
# digits that does not end as a number (155 s for 60 kB).
_NUMBER = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE]\s*[+-]?\d+)?)\s*([A-Za-z%/]*)$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_NONDECIMAL = {"H": (16, "0123456789ABCDEF"), "Q": (8, "01234567"), "B": (2, "01")}
# SCPI-1999 vol. 1, 7.7.3: suffix multipliers. "M" is milli; "MA" is mega (except MHZ, MOHM).
_MULT = {
    "EX": 1e18, "PE": 1e15, "T": 1e12, "G": 1e9, "MA": 1e6, "K": 1e3,
    "M": 1e-3, "U": 1e-6, "N": 1e-9, "P": 1e-12, "F": 1e-15, "A": 1e-18,
}  # fmt: skip


def _unit_factor(suffix: str, unit: str | None) -> float:
    """Factor that converts a number with ``suffix`` to the base ``unit``; raises -131/-138."""
    s = suffix.upper()
    if unit is None:
        raise ScpiError(-138, suffix)
    u = unit.upper()
    if s == u:
        return 1.0
    if u == "HZ" and s == "MHZ":  # SCPI 7.7.3: MHZ is megahertz, not millihertz
        return 1e6
    if s.endswith(u):
        prefix = s[: -len(u)]
        if prefix in _MULT:
            return _MULT[prefix]
    raise ScpiError(-131, suffix)


def _value(x):
    return x() if callable(x) else x


# An integer parameter's digits beyond leading zeros: 2**63 has 19; more is out of any range.
MAX_INTEGER_DIGITS = 40


def _g(x) -> str:
    """``x`` for an error detail: ``%g``, or the first digits of an integer too large for a
    float (a hexadecimal parameter may hold thousands of digits)."""
    try:
        return f"{x:g}"
    except OverflowError:
        text = str(x) if abs(x).bit_length() < 4000 else f"{x:x}"
        return text[:12] + "..."


def _nondecimal(tok: str) -> int | None:
    """IEEE 488.2 7.7.4: ``#H1F``, ``#Q17``, ``#B101``; None if ``tok`` is not one."""
    if len(tok) < 3 or tok[0] != "#" or tok[1].upper() not in _NONDECIMAL:
        return None
    base, digits = _NONDECIMAL[tok[1].upper()]
    if not all(c in digits for c in tok[2:].upper()):
        raise ScpiError(-120, tok[:20])
    return int(tok[2:], base)


@dataclass
class Num:
    """A decimal numeric parameter in base unit ``unit`` within [lo, hi]; MIN/MAX/DEF allowed.

    ``lo``, ``hi`` and ``default`` may be callables (limits that depend on other settings).
    ``bare`` multiplies a number sent without a suffix (the PM100 takes a bare wavelength in nm,
    the Keysight attenuator in m).
    """

    lo: float | Callable[[], float] = -math.inf
    hi: float | Callable[[], float] = math.inf
    unit: str | None = None
    default: float | Callable[[], float] | None = None
    integer: bool = False
    bare: float = 1.0

    def parse(self, tok: str) -> float | int:
        lo, hi = _value(self.lo), _value(self.hi)
        up = tok.upper()
        special = {"MIN": lo, "MINIMUM": lo, "MAX": hi, "MAXIMUM": hi}
        if self.default is not None:
            special.update(DEF=_value(self.default), DEFAULT=_value(self.default))
        if up in special:
            if not math.isfinite(special[up]):
                raise ScpiError(-224, f"{tok} is not defined here")
            return self._typed(special[up])
        nd = _nondecimal(tok)
        if nd is not None:
            value: float | int = nd
        else:
            m = _NUMBER.match(tok)
            if not m:
                if tok[:1].isdigit() or tok[:1] in "+-.":
                    raise ScpiError(-120, tok[:20])
                raise ScpiError(-104, tok[:20])
            mantissa, suffix = m.group(1).replace(" ", ""), m.group(2)
            if self.integer and not suffix and _INTEGER.match(mantissa):
                if len(mantissa.lstrip("+-").lstrip("0")) > MAX_INTEGER_DIGITS:
                    # far beyond any integer parameter's range (and int() of thousands of
                    # digits is slow, or refused by Python)
                    raise ScpiError(-222, f"{tok[:20]}... has too many digits")
                value = int(mantissa)  # exact: a 63-bit seed must survive
            else:
                factor = _unit_factor(suffix, self.unit) if suffix else self.bare
                value = float(mantissa) * factor
                if not math.isfinite(value):
                    raise ScpiError(-120, tok[:20])
        if self.integer:
            value = round(value)
        if not (lo <= value <= hi):
            raise ScpiError(-222, f"{_g(value)} not in [{_g(lo)}, {_g(hi)}]")
        return self._typed(value)

    def _typed(self, value: float) -> float | int:
        return int(value) if self.integer else float(value)


@dataclass
class Bool:
    """ON|OFF|1|0; other numbers are rounded, non-zero meaning ON (SCPI-1999 vol. 1 7.3)."""

    def parse(self, tok: str) -> bool:
        up = tok.upper()
        if up == "ON":
            return True
        if up == "OFF":
            return False
        m = _NUMBER.match(tok)
        if m is None:
            raise ScpiError(-104 if tok[:1].isalpha() or tok[:1] in "\"'" else -120, tok[:20])
        if m.group(2):
            raise ScpiError(-138, tok[:20])
        value = float(m.group(1).replace(" ", ""))
        if not math.isfinite(value):
            raise ScpiError(-120, tok[:20])
        return round(value) != 0


@dataclass
class Choice:
    """Character data from a fixed set (long or short forms); returns the long form in capitals."""

    options: tuple[str, ...]

    def parse(self, tok: str) -> str:
        up = tok.upper()
        for opt in self.options:
            if up in (opt.upper(), _short(opt)):
                return opt.upper()
        if _NUMBER.match(tok) or tok[:1] in "\"'":
            raise ScpiError(-104, tok[:20])
        if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", tok):
            raise ScpiError(-141, tok[:20])
        raise ScpiError(-224, tok[:20])


@dataclass
class Str:
    """A quoted string (single or double quotes, a doubled quote stands for one)."""

    def parse(self, tok: str) -> str:
        if len(tok) >= 2 and tok[0] in "\"'" and tok[-1] == tok[0]:
            q = tok[0]
            return tok[1:-1].replace(q + q, q)
        raise ScpiError(-104, tok[:20])


@dataclass
class Block:
    """An IEEE 488.2 arbitrary block (raw bytes) of at most ``max_bytes`` (the server refuses
    a longer declared block before its bytes arrive, see :class:`MessageFramer`)."""

    max_bytes: int = 0

    def parse(self, tok: bytes | str) -> bytes:
        if isinstance(tok, bytes):
            return tok
        raise ScpiError(-104, "block expected")


@dataclass
class Optional:
    """Wraps a parameter spec to make it optional (the handler gets fewer arguments)."""

    inner: object


# ----------------------------------------------------------------------------- headers


def _short(mnemonic: str) -> str:
    """SCPI short form: the upper-case letters (and digits) of the long form."""
    return "".join(c for c in mnemonic if c.isupper() or c.isdigit()).upper()


@dataclass
class _Node:
    long: str  # e.g. "ATTenuation"
    optional: bool
    suffix: bool  # accepts a numeric suffix

    def match(self, token: str) -> int | None:
        """The numeric suffix (default 1) if ``token`` names this node, else None."""
        m = re.match(r"^([A-Za-z_]+)(\d*)$", token)
        if not m:
            return None
        word, digits = m.group(1).upper(), m.group(2)
        if word not in (self.long.upper(), _short(self.long)):
            return None
        if digits and not self.suffix:
            return None
        return int(digits) if digits else 1


@dataclass
class _Command:
    nodes: list[_Node]
    query: bool
    handler: Callable
    params: tuple
    suffix_range: tuple[int, int]


def _compile(pattern: str) -> tuple[list[_Node], bool]:
    """Compile ``"[SOURce]:INPut#:ATTenuation?"`` into nodes; ``#`` marks a numeric suffix."""
    query = pattern.endswith("?")
    body = pattern.rstrip("?").lstrip(":")
    nodes = []
    for part in re.findall(r"\[:?[^\]]+\]|[^:\[\]]+", body):
        optional = part.startswith("[")
        name = part.strip("[]:")
        suffix = name.endswith("#")
        nodes.append(_Node(name.rstrip("#"), optional, suffix))
    return nodes, query


def _match_nodes(nodes: list[_Node], tokens: list[str]) -> list[int] | None:
    """Match header tokens against nodes (optional nodes may be skipped); the suffixes."""
    if not nodes:
        return [] if not tokens else None
    node = nodes[0]
    if tokens:
        s = node.match(tokens[0])
        if s is not None:
            rest = _match_nodes(nodes[1:], tokens[1:])
            if rest is not None:
                return [s, *rest]
    if node.optional:
        rest = _match_nodes(nodes[1:], tokens)
        if rest is not None:
            return [1, *rest]
    return None


# ----------------------------------------------------------------------------- framing, parsing

_WS = b" \t"
_HEADER_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:*?")


def _valid_char(b: int) -> bool:
    # IEEE 488.2 7.4.1 / 7.7: program data outside blocks is 7-bit printable ASCII or tab.
    return 0x20 <= b <= 0x7E or b == 0x09


def find_message_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index of the ``\\n`` that ends the first program message in ``buf``, or -1 if the
    message is incomplete. Only a definite-length block may contain ``\\n``; a block starts
    where a parameter starts (after the header's whitespace or a comma), as in the parser."""
    return scan_message(buf, start)[0]


def scan_message(buf: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """``(end, needed)``: the index of the terminating ``\\n`` (-1 if incomplete) and, while
    inside a definite-length block, the buffer length the block needs (lets a server refuse an
    oversized block before its bytes arrive); 0 otherwise."""
    i, n = start, len(buf)
    in_params = False  # False: in a header; True: in the parameters of a unit
    at_param_start = False
    quote = 0
    while i < n:
        c = buf[i]
        if c == 0x0A:
            return i, 0
        if quote:
            if c == quote:
                quote = 0
        elif not in_params:
            if c in _WS:
                in_params = at_param_start = i > start and buf[i - 1] not in b" \t;"
        else:
            if c in (0x22, 0x27):
                quote, at_param_start = c, False
            elif c == 0x3B:
                in_params = at_param_start = False
            elif c == 0x2C:
                at_param_start = True
            elif c in _WS:
                pass
            elif c == 0x23 and at_param_start and i + 1 < n and 0x31 <= buf[i + 1] <= 0x39:
                nd = buf[i + 1] - 0x30
                digits = bytes(buf[i + 2 : i + 2 + nd])
                if len(digits) < nd:
                    return -1, 0
                if digits.isdigit():
                    end = i + 2 + nd + int(digits)
                    if end > n:
                        return -1, end
                    i, at_param_start = end, False
                    continue
                at_param_start = False
            else:
                at_param_start = False
        i += 1
    return -1, 0


_BLOCK_START = re.compile(rb"#[1-9]")


class BlockEnded(bytes):
    """A framed message whose last byte is a block's (a final ``\r`` is data, not CRLF)."""


class MessageFramer:
    """Frames the program messages of one connection's byte stream with bounded memory and
    work, so that no client can stall the others.

    The bytes of a message outside its blocks are bounded by ``max_text``; a definite-length
    block by what its command takes (``block_limit(header)``; 0: the block counts as text).
    A message beyond its bound is refused (-100) as soon as the bound is passed, or as soon as
    a block declares a length beyond its command's, and its rest up to the next ``\\n`` is
    dropped without being buffered. Each byte is examined once: runs without ``\\n`` or a
    possible block start are skipped at C speed, and only a ``#<digit>`` after whitespace or a
    comma makes the framer follow the quotes and parameter starts before it (a block begins
    only where a parameter starts, as in the parser)."""

    def __init__(self, max_text: int, block_limit: Callable[[str], int] = lambda h: 0):
        self.max_text = max_text
        self.block_limit = block_limit
        self.buf = bytearray()
        self.discarding = False  # dropping a refused message's rest up to its '\n'
        self._new_message()

    def _new_message(self) -> None:
        self.i = 0  # buf[:i] has been followed by the state below
        self.seen = 0  # buf[i:seen] holds neither '\n' nor '#'
        self.in_params = False  # False: in a header; True: in the parameters of a unit
        self.at_param_start = False
        self.quote = 0
        self.h0 = 0  # start of the header being read
        self.header = ""  # header of the unit whose parameters are being read
        self.block_end = 0  # inside a definite-length block: the index after it
        self.last_block_end = -1  # the index after the message's last block so far
        self.exempt = 0  # bytes of blocks that do not count against max_text
        self.nl_at = -1  # the next '\n' found at or after i (-1: none up to nl_checked)
        self.nl_checked = 0  # buf[:nl_checked] has been searched for '\n'

    def feed(self, data: bytes) -> list:
        """The messages ``data`` completes (bytes, terminator removed) and the refusals
        (ScpiError), in stream order."""
        out: list = []
        if self.discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            data = data[nl + 1 :]
            self.discarding = False
        self.buf += data
        while (item := self._frame()) is not None:
            out.append(item)
        return out

    def _too_long(self) -> str:
        return f"program message longer than {self.max_text} bytes"

    def _refuse(self, at: int, detail: str) -> ScpiError:
        nl = self.buf.find(b"\n", at)
        if nl < 0:
            self.buf.clear()
            self.discarding = True
        else:
            del self.buf[: nl + 1]
        self._new_message()
        return ScpiError(-100, detail)

    def _frame(self):
        buf = self.buf
        while True:
            n = len(buf)
            if self.block_end:
                if n < self.block_end:
                    return None  # the block's bytes are still coming (bounded by its limit)
                self.i = self.seen = self.last_block_end = self.block_end
                self.block_end = 0
            start = max(self.i, self.seen)
            if self.nl_at < start:  # search only bytes not searched before (a run of '#'s)
                self.nl_at = buf.find(b"\n", max(start, self.nl_checked))
                self.nl_checked = n if self.nl_at < 0 else self.nl_at
            nl = self.nl_at
            stop = nl if nl >= 0 else n
            h = self._candidate(start, stop)
            if h < 0:
                if nl >= 0:
                    if nl - self.exempt > self.max_text:
                        return self._refuse(nl, self._too_long())
                    # a '\r' that is a block's last byte is data, not half of a CRLF
                    kind = BlockEnded if self.last_block_end == nl else bytes
                    message = kind(buf[:nl])
                    del buf[: nl + 1]
                    self._new_message()
                    return message
                # a '#' at the end may begin a block once its digit arrives
                self.seen = n - 1 if buf.endswith(b"#") else n
                if n - self.exempt > self.max_text:
                    return self._refuse(self.i, self._too_long())
                return None
            self._follow(h)
            if h + 1 >= n:
                self.seen = h
                return None  # what follows the '#' decides; it has not arrived
            if not (
                not self.quote
                and self.in_params
                and self.at_param_start
                and 0x31 <= buf[h + 1] <= 0x39
            ):
                self._follow(h + 1)
                continue
            nd = buf[h + 1] - 0x30
            digits = bytes(buf[h + 2 : h + 2 + nd])
            if len(digits) < nd and b"\n" not in digits:
                self.seen = h
                if n - self.exempt > self.max_text:
                    return self._refuse(h, self._too_long())
                return None  # the block header is incomplete
            if not digits.isdigit():
                self._follow(h + 1)  # not a block: the parser reports it
                continue
            length = int(digits)
            end = h + 2 + nd + length
            limit = self.block_limit(self.header)
            if limit:
                if length > limit:
                    return self._refuse(
                        h, f"block of {length} bytes, at most {limit} for {self.header[:30]}"
                    )
                self.exempt += length
            elif end - self.exempt > self.max_text:
                return self._refuse(h, self._too_long())
            self.block_end = end
            self.at_param_start = False

    def _candidate(self, start: int, stop: int) -> int:
        """The first '#' in buf[start:stop] that may begin a block (a digit 1-9 after it,
        whitespace or ',' before it), or -1: other '#'s cost no walk of the parser's state."""
        buf = self.buf
        while (m := _BLOCK_START.search(buf, start, stop)) is not None:
            h = m.start()
            if h > 0 and buf[h - 1] in b" \t,":
                return h
            start = h + 1
        return -1

    def _follow(self, stop: int) -> None:
        """Advance the quote/header/parameter state over buf[i:stop] (no '\n' in it)."""
        buf, i = self.buf, self.i
        in_params, at_start, quote, h0 = self.in_params, self.at_param_start, self.quote, self.h0
        while i < stop:
            c = buf[i]
            if quote:
                if c == quote:
                    quote = 0
            elif not in_params:
                if c in _WS or c == 0x3B:
                    if c != 0x3B and i > h0:
                        in_params = at_start = True
                        self.header = buf[h0:i].decode("ascii", "replace")
                    else:
                        h0 = i + 1
            else:
                if c in (0x22, 0x27):
                    quote, at_start = c, False
                elif c == 0x3B:
                    in_params = at_start = False
                    h0 = i + 1
                elif c == 0x2C:
                    at_start = True
                elif c not in _WS:
                    at_start = False
            i += 1
        self.i = i
        self.in_params, self.at_param_start, self.quote, self.h0 = in_params, at_start, quote, h0


def split_message(data: bytes) -> list[tuple[str, list]]:
    """Split one program message (terminator removed) into ``(header, [params])`` units.

    Parameters are strings (character, numeric or quoted-string data, whitespace-trimmed) or
    bytes (arbitrary blocks). The whole message is checked before anything executes: a
    character or syntax error raises ScpiError (-101, -102, -151) and nothing runs.
    """
    units: list[tuple[str, list]] = []
    i, n = 0, len(data)
    while True:
        # -- header
        while i < n and data[i] in _WS:
            i += 1
        h0 = i
        while i < n and data[i] in _HEADER_CHARS:
            i += 1
        header = data[h0:i].decode("ascii")
        if i < n and not _valid_char(data[i]):
            raise ScpiError(-101, f"character 0x{data[i]:02x}")
        if i < n and data[i] not in _WS and data[i] != 0x3B:
            raise ScpiError(-102, f"unexpected {chr(data[i])!r} in header")
        if not header:
            if i >= n and not units:
                return units  # an empty message
            raise ScpiError(-102, "empty message unit")
        params: list = []
        while i < n and data[i] in _WS:
            i += 1
        if i < n and data[i] != 0x3B:
            i = _parse_params(data, i, params)
        units.append((header, params))
        if i >= n:
            return units
        i += 1  # the ';'


def _parse_params(data: bytes, i: int, params: list) -> int:
    """Parse ``param {, param}`` from ``data[i]``; returns the index of the ';' or the end."""
    n = len(data)
    while True:
        while i < n and data[i] in _WS:
            i += 1
        if i >= n or data[i] in b",;":
            raise ScpiError(-102, "empty parameter")
        c = data[i]
        if c in (0x22, 0x27):  # quoted string
            j = i + 1
            while True:
                k = data.find(bytes([c]), j)
                if k < 0:
                    raise ScpiError(-151, "unterminated string")
                if data[k + 1 : k + 2] == bytes([c]):
                    j = k + 2
                    continue
                break
            bad = next((b for b in data[i : k + 1] if not _valid_char(b)), None)
            if bad is not None:
                raise ScpiError(-101, f"character 0x{bad:02x} in string")
            params.append(data[i : k + 1].decode("ascii"))
            i = k + 1
        elif c == 0x23 and i + 1 < n and data[i + 1 : i + 2].isdigit():  # arbitrary block
            nd = data[i + 1] - 0x30
            if nd == 0:  # IEEE 488.2 7.7.6.2: indefinite block, ends with the message
                params.append(bytes(data[i + 2 :]))
                return n
            digits = data[i + 2 : i + 2 + nd]
            if len(digits) != nd or not digits.isdigit():
                raise ScpiError(-102, "bad block length")
            start = i + 2 + nd
            ln = int(digits)
            if start + ln > n:
                raise ScpiError(-102, "block shorter than its header")
            params.append(bytes(data[start : start + ln]))
            i = start + ln
        else:  # character or numeric data: up to the next separator
            j = i
            while j < n and data[j] not in b",;\"'":
                if not _valid_char(data[j]):
                    raise ScpiError(-101, f"character 0x{data[j]:02x}")
                j += 1
            if j < n and data[j] in b"\"'":
                raise ScpiError(-102, "quote inside a parameter")
            params.append(data[i:j].decode("ascii").strip())
            i = j
        while i < n and data[i] in _WS:
            i += 1
        if i >= n or data[i] == 0x3B:
            return i
        if data[i] != 0x2C:
            raise ScpiError(-103, f"{chr(data[i])!r} after a parameter")
        i += 1


# ----------------------------------------------------------------------------- device


class Session:
    """The state of one client connection (whether it has authenticated)."""

    def __init__(self) -> None:
        self.authenticated = False


class ScpiDevice:
    """An emulated SCPI instrument: command tree, IEEE 488.2 status model, error queue.

    Subclasses set ``IDN`` and register commands in ``__init__`` with :meth:`command`. Handlers
    receive ``(suffixes, *params)``; setters return None, queries return the response (str,
    bytes, number or bool). ``pending`` holds operations ``*OPC``/``*OPC?``/``*WAI`` wait for.
    """

    IDN: tuple[str, str, str, str] = ("qkd-hil", "EMULATED", "0", "0")

    def __init__(self) -> None:
        self._commands: list[_Command] = []
        self.errors = ErrorQueue()
        self.esr = ESR_PON  # IEEE 488.2 11.5.1.1.1: power-on sets PON
        self.ese = 0
        self.sre = 0
        self.pending: list = []
        self.internal_errors = 0  # handler bugs caught by execute (the fuzz test wants 0)
        self._responses: list[bytes] = []
        self.session: Session | None = None  # of the message being executed
        self._register_common()

    # -- registration -----------------------------------------------------------------------
    def command(
        self,
        pattern: str,
        handler: Callable,
        *params,
        suffix_range: tuple[int, int] = (1, 1),
    ) -> None:
        """Register ``pattern`` (e.g. ``"INPut#:ATTenuation"`` or ``"...?"``) to ``handler``."""
        nodes, query = _compile(pattern)
        self._commands.append(_Command(nodes, query, handler, params, suffix_range))

    def _register_common(self) -> None:
        c = self.command
        c("*IDN?", lambda s: ",".join(self.IDN))
        c("*RST", lambda s: self._rst())
        c("*CLS", lambda s: self.clear_status())
        c("*ESE", self._set_ese, Num(0, 255, integer=True))
        c("*ESE?", lambda s: self.ese)
        c("*ESR?", self._read_esr)
        c("*OPC", self._opc)
        c("*OPC?", self._opc_query)
        c("*SRE", self._set_sre, Num(0, 255, integer=True))
        c("*SRE?", lambda s: self.sre)
        c("*STB?", lambda s: self.status_byte(mav=bool(self._responses)))
        c("*TST?", lambda s: self.self_test())
        c("*WAI", lambda s: self.wait_pending())
        c("SYSTem:ERRor[:NEXT]?", lambda s: '{},"{}"'.format(*self.errors.pop()))
        c("SYSTem:ERRor:COUNt?", lambda s: len(self.errors))
        c("SYSTem:VERSion?", lambda s: "1999.0")

    def _set_ese(self, s, v):
        self.ese = v

    def _set_sre(self, s, v):
        self.sre = v & ~STB_MSS  # bit 6 cannot be enabled (IEEE 488.2 11.3.2.3)

    def _read_esr(self, s):
        v, self.esr = self.esr, 0
        return v

    def _rst(self):
        self.wait_pending()
        self.reset()

    def _opc(self, s):
        self.wait_pending()
        self.esr |= ESR_OPC

    def _opc_query(self, s):
        self.wait_pending()
        return 1

    # -- behaviour subclasses may extend -------------------------------------------------------
    def reset(self) -> None:
        """*RST: device settings to their defaults (status and error queue untouched)."""

    def clear_status(self) -> None:
        """*CLS: clear ESR and the error queue (IEEE 488.2 10.3)."""
        self.esr = 0
        self.errors.clear()

    def self_test(self) -> int:
        return 0

    def wait_pending(self) -> None:
        """Block until pending operations are done (subclasses advance their clocks)."""
        self.pending = [p for p in self.pending if not p.done()]

    def status_byte(self, mav: bool = False) -> int:
        """IEEE 488.2 11.2.1: STB from the error queue, MAV and the ESR summary; MSS if any
        enabled bit is set."""
        stb = 0
        if len(self.errors):
            stb |= STB_ERRQ
        if mav:
            stb |= STB_MAV
        if self.esr & self.ese:
            stb |= STB_ESB
        if stb & self.sre:
            stb |= STB_MSS
        return stb

    def error(self, code: int, detail: str = "") -> None:
        """Queue an error and set its ESR bit (and DDE when the queue overflowed)."""
        if not self.errors.push(code, detail):
            self.esr |= ESR_DDE
        self.esr |= esr_bit(code)

    def max_block_bytes(self, header: str) -> int:
        """The longest block a unit with ``header`` may carry, from the Block parameter of the
        command it names (0: none; the block then counts against the message's bound). A
        relative header of a compound message is matched by its tail."""
        is_query = header.endswith("?")
        tokens = (header[:-1] if is_query else header).lstrip(":").split(":")
        for cmd in self._commands:
            specs = [p.inner if isinstance(p, Optional) else p for p in cmd.params]
            limit = max((p.max_bytes for p in specs if isinstance(p, Block)), default=0)
            if limit and cmd.query == is_query:
                for k in range(len(cmd.nodes)):
                    if _match_nodes(cmd.nodes[k:], tokens) is not None:
                        return limit
        return 0

    # -- execution ---------------------------------------------------------------------------
    def execute(self, message: bytes, session: Session | None = None) -> bytes | None:
        """Execute one program message (terminator removed). Returns the response message
        with its ``\\n``, or None when the message asked nothing (no unrequested output).
        ``session``: the client connection's state (None: the emulator itself)."""
        self.session = session
        try:
            units = split_message(message)
        except ScpiError as e:
            self.error(e.code, e.detail)
            return None
        self._responses = []
        path: list[str] = []  # SCPI-1999 vol. 1 6.2.4: the current path, reset per message
        for header, params in units:
            try:
                path = self._execute_unit(header, params, path)
            except ScpiError as e:
                self.error(e.code, e.detail)
                if -199 <= e.code <= -100:
                    break  # IEEE 488.2 6.1.6.1.1: after a command error the message is dropped
            except Exception as e:  # noqa: BLE001 - a handler bug must not kill the server
                self.internal_errors += 1
                self.error(-300, f"internal {type(e).__name__}")
                break
        out, self._responses = self._responses, []
        if not out:
            return None
        return b";".join(out) + b"\n"

    def _execute_unit(self, header: str, params: list, path: list[str]) -> list[str]:
        cmd, used, is_query, path = self.resolve_unit(header, path)
        self._dispatch(cmd, used, params, is_query)
        return path

    def resolve_unit(self, header: str, path: list[str]) -> tuple:
        """``(command, suffixes, is_query, path after the unit)`` a header names (after
        ``path``, the current path of its message); raises ScpiError (-102, -113, -114)."""
        is_query = header.endswith("?")
        name = header[:-1] if is_query else header
        if "?" in name or "*" in name[1:]:
            raise ScpiError(-102, header[:30])
        if name.startswith("*"):
            for cmd in self._commands:
                if cmd.query == is_query and cmd.nodes and cmd.nodes[0].long == name.upper():
                    # common commands leave the path alone (SCPI vol. 1 6.2.5)
                    return cmd, [], is_query, path
            raise ScpiError(-113, header[:40])
        absolute = name.startswith(":")
        tokens = name[1:].split(":") if absolute else name.split(":")
        if any(t == "" for t in tokens):
            raise ScpiError(-102, header[:40])
        toks = tokens if absolute else path + tokens
        suffix_error = None
        for cmd in self._commands:
            if cmd.query != is_query or (cmd.nodes and cmd.nodes[0].long.startswith("*")):
                continue
            suffixes = _match_nodes(cmd.nodes, toks)
            if suffixes is None:
                continue
            lo, hi = cmd.suffix_range
            used = [s for s, node in zip(suffixes, cmd.nodes, strict=True) if node.suffix]
            bad = [s for s in used if not lo <= s <= hi]
            if bad:
                suffix_error = ScpiError(-114, f"suffix {bad[0]} not in [{lo}, {hi}]")
                continue
            return cmd, used, is_query, toks[:-1]
        if suffix_error is not None:
            raise suffix_error
        raise ScpiError(-113, header[:40])

    def _dispatch(self, cmd: _Command, suffixes: list[int], params: list, is_query: bool) -> None:
        args = self._parse_params(cmd, params)
        result = cmd.handler(suffixes, *args)
        if is_query:
            self._responses.append(_format(result))

    @staticmethod
    def _parse_params(cmd: _Command, params: list) -> list:
        specs = cmd.params
        required = sum(1 for s in specs if not isinstance(s, Optional))
        if len(params) > len(specs):
            raise ScpiError(-108, f"{len(params)} parameter(s), at most {len(specs)}")
        if len(params) < required:
            raise ScpiError(-109, f"{required} parameter(s) needed")
        parsed = []
        for spec, tok in zip(specs, params, strict=False):
            if isinstance(spec, Optional):
                spec = spec.inner
            if isinstance(tok, bytes) and not isinstance(spec, Block):
                raise ScpiError(-104, "block not allowed here")
            parsed.append(spec.parse(tok))
        return parsed


def _format(value) -> bytes:
    """IEEE 488.2 8.7: response data (NR1 integers, NR3 reals, 1/0 booleans, blocks as is)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return f"{value:+.8E}".encode()
    return str(value).encode()


def block(payload: bytes) -> bytes:
    """IEEE 488.2 8.7.9: definite-length arbitrary block ``#<n><len><data>``."""
    ln = str(len(payload))
    return b"#" + str(len(ln)).encode() + ln.encode() + payload
