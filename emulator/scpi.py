"""SCPI / IEEE 488.2 device core for the emulated instruments.

An emulated instrument is a :class:`ScpiDevice` subclass that registers its command tree with
:meth:`ScpiDevice.command`. The core parses program messages (compound headers, short and long
mnemonics, numeric suffixes, unit suffixes, MIN/MAX/DEF, booleans, quoted strings, definite-length
blocks), keeps the IEEE 488.2 status model (ESR/ESE, STB/SRE, error queue) and formats responses.

Written from IEEE 488.2-1992 (sections 7 and 11) and SCPI-1999 volume 1 (sections 6, 7 and 21);
it shares no code with ``hil.instruments``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# SCPI-1999 vol. 2, ch. 21.8: standard error numbers and texts used by the emulator.
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
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -241: "Hardware missing",
    -350: "Queue overflow",
    -410: "Query INTERRUPTED",
    -420: "Query UNTERMINATED",
}

# IEEE 488.2 11.5.1: Standard Event Status Register bits.
ESR_OPC, ESR_RQC, ESR_QYE, ESR_DDE, ESR_EXE, ESR_CME, ESR_URQ, ESR_PON = (1 << i for i in range(8))
# IEEE 488.2 11.2 + SCPI: Status Byte bits.
STB_ERRQ, STB_QUES, STB_MAV, STB_ESB, STB_MSS, STB_OPER = 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

ERROR_QUEUE_DEPTH = 16  # SCPI requires at least 2; 16 is a common instrument depth.


class ScpiError(Exception):
    """An error to put in the queue: raised by parsers and command handlers."""

    def __init__(self, code: int, detail: str = ""):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def _esr_bit(code: int) -> int:
    """IEEE 488.2 11.5.1: which ESR bit an error number sets."""
    if -199 <= code <= -100:
        return ESR_CME
    if -299 <= code <= -200:
        return ESR_EXE
    if -399 <= code <= -300 or code > 0:
        return ESR_DDE
    if -499 <= code <= -400:
        return ESR_QYE
    return 0


class ErrorQueue:
    """SCPI error/event queue: FIFO; when full, the newest entry becomes -350 Queue overflow."""

    def __init__(self, depth: int = ERROR_QUEUE_DEPTH):
        self.depth = depth
        self._q: deque[tuple[int, str]] = deque()

    def push(self, code: int, detail: str = "") -> None:
        if len(self._q) >= self.depth:
            self._q[-1] = (-350, ERROR_TEXT[-350])
            return
        text = ERROR_TEXT.get(code, "Device-specific error")
        if detail:
            text = f"{text}; {detail}"
        self._q.append((code, text))

    def pop(self) -> tuple[int, str]:
        return self._q.popleft() if self._q else (0, ERROR_TEXT[0])

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


# ----------------------------------------------------------------------------- parameters

_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)$")
# SCPI-1999 vol. 1, 7.7.3: suffix multipliers. "M" is milli; "MA" is mega (except MHZ, MOHM).
_MULT = {
    "EX": 1e18, "PE": 1e15, "T": 1e12, "G": 1e9, "MA": 1e6, "K": 1e3,
    "M": 1e-3, "U": 1e-6, "N": 1e-9, "P": 1e-12, "F": 1e-15, "A": 1e-18,
}  # fmt: skip


def _unit_factor(suffix: str, unit: str | None) -> float:
    """Factor that converts a number with ``suffix`` to the base ``unit``; raises -131/-138."""
    s = suffix.upper()
    if not s:
        return 1.0
    if unit is None:
        raise ScpiError(-138, suffix)
    u = unit.upper()
    if s == u:
        return 1.0
    if u == "HZ" and s == "MHZ":  # SCPI special case: MHZ is megahertz
        return 1e6
    if s.endswith(u):
        prefix = s[: -len(u)]
        if prefix in _MULT:
            return _MULT[prefix]
    raise ScpiError(-131, suffix)


@dataclass
class Num:
    """A numeric parameter in base unit ``unit`` within [lo, hi]; MIN/MAX/DEF allowed."""

    lo: float = -math.inf
    hi: float = math.inf
    unit: str | None = None
    default: float | None = None
    integer: bool = False

    def parse(self, tok: str) -> float:
        up = tok.upper()
        if up in ("MIN", "MINIMUM"):
            return self._typed(self.lo)
        if up in ("MAX", "MAXIMUM"):
            return self._typed(self.hi)
        if up in ("DEF", "DEFAULT") and self.default is not None:
            return self._typed(self.default)
        m = _NUMBER.match(tok)
        if not m:
            if tok[:1] in "\"'#":
                raise ScpiError(-104, tok[:20])
            if re.match(r"^[A-Za-z]", tok):
                raise ScpiError(-104, tok[:20])
            raise ScpiError(-120, tok[:20])
        value = float(m.group(1)) * _unit_factor(m.group(2), self.unit)
        if not math.isfinite(value):
            raise ScpiError(-120, tok[:20])
        if self.integer:
            value = round(value)
        if not (self.lo <= value <= self.hi):
            raise ScpiError(-222, f"{value:g} not in [{self.lo:g}, {self.hi:g}]")
        return self._typed(value)

    def _typed(self, value: float) -> float | int:
        return int(value) if self.integer else float(value)


@dataclass
class Bool:
    """ON|OFF|1|0 (numbers are rounded, as SCPI 7.3 allows)."""

    def parse(self, tok: str) -> bool:
        up = tok.upper()
        if up == "ON":
            return True
        if up == "OFF":
            return False
        m = _NUMBER.match(tok)
        if m and not m.group(2):
            return round(float(m.group(1))) != 0
        raise ScpiError(-104 if not m else -131, tok[:20])


@dataclass
class Choice:
    """Character data from a fixed set (long or short forms)."""

    options: tuple[str, ...]

    def parse(self, tok: str) -> str:
        up = tok.upper()
        for opt in self.options:
            if up in (opt.upper(), _short(opt).upper()):
                return opt.upper()
        if _NUMBER.match(tok) or tok[:1] in "\"'":
            raise ScpiError(-104, tok[:20])
        raise ScpiError(-224, tok[:20])


@dataclass
class Str:
    """A quoted string (single or double quotes, doubled quotes inside)."""

    def parse(self, tok: str) -> str:
        if len(tok) >= 2 and tok[0] in "\"'" and tok[-1] == tok[0]:
            q = tok[0]
            return tok[1:-1].replace(q + q, q)
        raise ScpiError(-104, tok[:20])


@dataclass
class Block:
    """An IEEE 488.2 definite-length arbitrary block (raw bytes)."""

    def parse(self, tok: bytes | str) -> bytes:
        if isinstance(tok, bytes):
            return tok
        raise ScpiError(-104, "block expected")


# ----------------------------------------------------------------------------- headers


def _short(mnemonic: str) -> str:
    """SCPI short form: the upper-case letters (and digits) of the long form."""
    return "".join(c for c in mnemonic if c.isupper() or c.isdigit())


@dataclass
class _Node:
    long: str  # e.g. "ATTenuation"
    optional: bool
    suffix: bool  # accepts a numeric suffix

    def match(self, token: str) -> int | None | bool:
        """Return the numeric suffix (default 1) if token names this node, else False."""
        m = re.match(r"^([A-Za-z_]+)(\d*)$", token)
        if not m:
            return False
        word, digits = m.group(1).upper(), m.group(2)
        if word not in (self.long.upper(), _short(self.long).upper()):
            return False
        if digits and not self.suffix:
            return False
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
    """Match header tokens against nodes (optional nodes may be skipped). Returns suffixes."""
    if not nodes:
        return [] if not tokens else None
    node = nodes[0]
    if tokens:
        s = node.match(tokens[0])
        if s is not False:
            rest = _match_nodes(nodes[1:], tokens[1:])
            if rest is not None:
                return [s, *rest]
    if node.optional:
        rest = _match_nodes(nodes[1:], tokens)
        if rest is not None:
            return [1, *rest]
    return None


# ----------------------------------------------------------------------------- message splitting


def split_message(data: bytes) -> list[tuple[str, list]]:
    """Split one program message into (header, [params]) units.

    Separators ``;`` split units, ``,`` split parameters, quotes and definite-length blocks are
    kept whole. Raises ScpiError(-102/-101) on malformed input.
    """
    units: list[tuple[str, list]] = []
    i, n = 0, len(data)
    header: str | None = None
    params: list = []
    buf = bytearray()
    in_params = False

    def flush_param() -> None:
        tok = bytes(buf).decode("ascii").strip()
        buf.clear()
        if tok:
            params.append(tok)
        elif in_params:
            raise ScpiError(-102, "empty parameter")

    while i < n:
        c = data[i : i + 1]
        if not in_params:
            if c in (b" ", b"\t"):
                if buf:
                    header = bytes(buf).decode("ascii")
                    buf.clear()
                    in_params = True
                    # skip the rest of the whitespace
                    while i < n and data[i : i + 1] in (b" ", b"\t"):
                        i += 1
                    if i < n and data[i : i + 1] == b";":
                        in_params = False
                    continue
                i += 1
                continue
            if c == b";":
                if buf:
                    units.append((bytes(buf).decode("ascii"), []))
                    buf.clear()
                elif header is None and not units:
                    raise ScpiError(-102, "empty command")
                header = None
                i += 1
                continue
            if c in (b",", b'"', b"'", b"#"):
                raise ScpiError(-102, f"unexpected {c.decode('ascii', 'replace')!r}")
            if not (c.isalnum() or c in (b":", b"*", b"?", b"_")):
                raise ScpiError(-101, f"character 0x{data[i]:02x}")
            buf += c
            i += 1
            continue
        # parameter section
        if c in (b'"', b"'"):
            q = c
            j = i + 1
            while True:
                k = data.find(q, j)
                if k < 0:
                    raise ScpiError(-151, "unterminated string")
                if data[k + 1 : k + 2] == q:
                    j = k + 2
                    continue
                break
            buf += data[i : k + 1]
            i = k + 1
            continue
        if c == b"#" and not bytes(buf).strip():
            if i + 1 >= n or not data[i + 1 : i + 2].isdigit():
                raise ScpiError(-102, "bad block header")
            nd = int(data[i + 1 : i + 2])
            if nd == 0:
                raise ScpiError(-102, "indefinite block not supported")
            ln_txt = data[i + 2 : i + 2 + nd]
            if len(ln_txt) != nd or not ln_txt.isdigit():
                raise ScpiError(-102, "bad block length")
            ln = int(ln_txt)
            start = i + 2 + nd
            if start + ln > n:
                raise ScpiError(-102, "block shorter than its header")
            params.append(bytes(data[start : start + ln]))
            buf.clear()
            i = start + ln
            # after a block: only whitespace, ',' or ';' may follow
            while i < n and data[i : i + 1] in (b" ", b"\t"):
                i += 1
            if i < n and data[i : i + 1] == b",":
                i += 1
            continue
        if c == b",":
            flush_param()
            i += 1
            continue
        if c == b";":
            flush_param()
            units.append((header or "", params))
            header, params, in_params = None, [], False
            i += 1
            continue
        if (data[i] < 0x20 or data[i] > 0x7E) and c != b"\t":
            raise ScpiError(-101, f"character 0x{data[i]:02x}")
        buf += c
        i += 1
    if in_params:
        tok = bytes(buf).decode("ascii").strip()
        if tok:
            params.append(tok)
        units.append((header or "", params))
    elif buf:
        units.append((bytes(buf).decode("ascii"), []))
    return units


# ----------------------------------------------------------------------------- device


@dataclass
class _Pending:
    """An operation that completes at a given time (e.g. an attenuator transition)."""

    done: Callable[[], bool]


@dataclass
class Response:
    """Collected responses of one program message; joined by ';' (IEEE 488.2 8.4.1)."""

    parts: list[bytes] = field(default_factory=list)


class ScpiDevice:
    """An emulated SCPI instrument: command tree, IEEE 488.2 status model, error queue.

    Subclasses set ``IDN`` and register commands in ``__init__`` with :meth:`command`. Handlers
    receive ``(suffixes, *params)``; setters return None, queries return the response (str, bytes,
    number or bool).
    """

    IDN: tuple[str, str, str, str] = ("qkd-hil", "EMULATED", "0", "0")

    def __init__(self) -> None:
        self._commands: list[_Command] = []
        self.errors = ErrorQueue()
        self.esr = ESR_PON  # IEEE 488.2: power-on sets PON
        self.ese = 0
        self.sre = 0
        self.pending: list[_Pending] = []
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
        c("*RST", lambda s: self.reset())
        c("*CLS", lambda s: self.clear_status())
        c("*ESE", self._set_ese, Num(0, 255, integer=True))
        c("*ESE?", lambda s: self.ese)
        c("*ESR?", self._read_esr)
        c("*OPC", self._opc)
        c("*OPC?", self._opc_query)
        c("*SRE", self._set_sre, Num(0, 255, integer=True))
        c("*SRE?", lambda s: self.sre)
        c("*STB?", lambda s: self.status_byte())
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
        """*CLS: clear ESR, the error queue and event registers."""
        self.esr = 0
        self.errors.clear()

    def self_test(self) -> int:
        return 0

    def wait_pending(self) -> None:
        """Block until pending operations are done (subclasses advance their clocks)."""
        self.pending = [p for p in self.pending if not p.done()]

    def status_byte(self, mav: bool = False) -> int:
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
        self.errors.push(code, detail)
        self.esr |= _esr_bit(code)

    # -- execution ---------------------------------------------------------------------------
    def execute(self, message: bytes) -> bytes | None:
        """Execute one program message (terminator stripped). Returns the response message
        (with its ``\\n``) or None when the message contained no query."""
        try:
            units = split_message(message)
        except ScpiError as e:
            self.error(e.code, e.detail)
            return None
        out = Response()
        prefix: list[str] = []
        for header, params in units:
            try:
                prefix = self._execute_unit(header, params, prefix, out)
            except ScpiError as e:
                self.error(e.code, e.detail)
                break  # IEEE 488.2 6.4.4: the rest of a message after a command error is skipped
        if not out.parts:
            return None
        return b";".join(out.parts) + b"\n"

    def _execute_unit(self, header: str, params: list, prefix: list[str], out: Response):
        if not header:
            raise ScpiError(-102, "missing header")
        is_query = header.endswith("?")
        if header.startswith("*"):
            tokens = [header.rstrip("?")]
            candidates = [tokens]
            new_prefix = prefix  # common commands leave the path alone
        else:
            absolute = header.startswith(":")
            tokens = [t for t in header.rstrip("?").lstrip(":").split(":")]
            if any(t == "" for t in tokens) or "?" in header.rstrip("?"):
                raise ScpiError(-102, header[:30])
            candidates = [tokens] if absolute or not prefix else [prefix + tokens, tokens]
            new_prefix = None
        for toks in candidates:
            for cmd in self._commands:
                if cmd.query != is_query:
                    continue
                if toks[0].startswith("*"):
                    if not cmd.nodes or cmd.nodes[0].long.upper() != toks[0].upper():
                        continue
                    suffixes: list[int] | None = []
                else:
                    if cmd.nodes and cmd.nodes[0].long.startswith("*"):
                        continue
                    suffixes = _match_nodes(cmd.nodes, toks)
                if suffixes is None:
                    continue
                lo, hi = cmd.suffix_range
                for sfx, node in zip(suffixes, cmd.nodes, strict=False):
                    if node.suffix and not (lo <= sfx <= hi):
                        raise ScpiError(-114, f"{node.long}{sfx}")
                args = self._parse_params(cmd, params)
                result = cmd.handler(
                    [s for s, n in zip(suffixes, cmd.nodes, strict=False) if n.suffix], *args
                )
                if is_query:
                    out.parts.append(_format(result))
                elif result is not None:
                    raise AssertionError("setter returned a value")  # pragma: no cover
                if new_prefix is None:
                    new_prefix = toks[:-1]
                return new_prefix
        raise ScpiError(-113, header[:40])

    def _parse_params(self, cmd: _Command, params: list) -> list:
        specs = cmd.params
        optional_tail = [s for s in specs if getattr(s, "optional", False)]
        required = len(specs) - len(optional_tail)
        if len(params) > len(specs):
            raise ScpiError(-108, f"{len(params)} parameters, at most {len(specs)}")
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


@dataclass
class Optional:
    """Wraps a parameter spec to make it optional (handler gets fewer arguments)."""

    inner: object
    optional: bool = True


def _format(value) -> bytes:
    """IEEE 488.2 8.7: response data formats."""
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
