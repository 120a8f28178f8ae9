"""Bench files (YAML): schema, loading, and errors that name the file, the key and the line.

The schema is pydantic; ``hil schema bench`` exports it as JSON Schema so editors can complete
bench files. Every validation error becomes one :class:`ConfigError` line such as
``lab.yaml:12: instruments.tagger.resource: 'TCPIP::x' is not a VISA resource string``.

A bench or criteria file is data from outside the program, so :func:`load_yaml` reads it with
bounds: size, nesting depth, values after alias expansion (a "billion laughs" file is refused,
not expanded), integer length; it refuses duplicate keys, text that is not UTF-8, control
characters and more than one document. Scalars resolve as in YAML 1.2 (only ``true``/``false``
are booleans: ``yes``, ``no``, ``on``, ``off`` stay strings), and the bench schema is strict: a
quoted ``'false'`` is not a boolean and ``"5"`` is not a number.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# DEFAULT_DRIVERS is re-exported for modules that imported it from here before hil.roles
from .roles import DEFAULT_DRIVERS, DRIVERS, KME_ROLES, ROLES, unknown_driver_message  # noqa: F401

EMULATOR = "emulator"  # resource placeholder: the emulator started for the session fills it in

# VISA resource string grammar (VPP-4.3, table 4.3.1), the forms pyvisa-py opens.
_RESOURCE = re.compile(
    r"""^(?:
        TCPIP\d*::[A-Za-z0-9_.\-\[\]:]+?::(?P<port>\d{1,5})::SOCKET
      | TCPIP\d*::[A-Za-z0-9_.\-\[\]]+(?:::[A-Za-z0-9_,.\-]+)?::INSTR
      | ASRL[^\s:]+::INSTR
      | ASRL\d+::INSTR
      | USB\d*::(?:0x[0-9A-Fa-f]+|\d+)::(?:0x[0-9A-Fa-f]+|\d+)::[^\s:]+(?:::\d+)?::(?:INSTR|RAW)
      | GPIB\d*::\d+(?:::\d+)?::INSTR
    )$""",
    re.VERBOSE | re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Swabian Time Tagger through its vendor API: swabian:<serial> or swabian:<host>:<port>
_SWABIAN_RESOURCE = re.compile(r"^swabian:(?:[A-Za-z0-9]*|[A-Za-z0-9_.\-]+:(?P<port>\d{1,5}))$")
# ZeroMQ instruments (ID Quantique Time Controller): tcp://host:port[?dlt=host:port]
_ZMQ_RESOURCE = re.compile(
    r"^tcp://[A-Za-z0-9_.\-]+:(?P<port>\d{1,5})(?:\?dlt=[A-Za-z0-9_.\-]+:\d{1,5})?$"
)

# pyvisa resource attributes a bench file may set through ``options`` (pyvisa sets each keyword
# of open_resource as an attribute, so an open list would let a bench file set any attribute);
# the driver itself sets timeout and terminations from timeout_s and its protocol.
VISA_OPTIONS = (
    "baud_rate",
    "data_bits",
    "parity",
    "stop_bits",
    "flow_control",
    "end_input",
    "xon_char",
    "xoff_char",
    "discard_null",
    "break_length",
    "chunk_size",
    "query_delay",
    "encoding",
    "send_end",
)


class ConfigError(ValueError):
    """A bench or criteria file is wrong; the message is one line naming file, line and key."""


def _at(key: str, message: str) -> PydanticCustomError:
    """A validation error reported at the sub-key ``key`` of the field that raised it."""
    return PydanticCustomError(
        "hil_at", message.replace("{", "{{").replace("}", "}}"), {"hil_at": key}
    )


class InstrumentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    resource: str = Field(max_length=256, description="VISA resource string, or 'emulator'")
    driver: str | None = Field(
        None,
        description="registered driver name (hil.roles.DRIVERS, e.g. TimeTagger); "
        "default: the role's own driver",
    )
    timeout_s: float = Field(5.0, gt=0, le=600, allow_inf_nan=False, description="I/O timeout in s")
    check_errors: bool = Field(True, description="read SYST:ERR? after every setter")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="pyvisa resource settings, e.g. baud_rate: one of " + ", ".join(VISA_OPTIONS),
    )

    @field_validator("resource")
    @classmethod
    def _resource(cls, v: str) -> str:
        if "," in v and v != EMULATOR:  # several instruments as one role (four ID120s)
            for part in v.split(","):
                cls._resource(part.strip())
            return v
        m = _RESOURCE.match(v) or _ZMQ_RESOURCE.match(v) or _SWABIAN_RESOURCE.match(v)
        if v != EMULATOR and not m:
            raise ValueError(
                f"{v!r} is not a VISA resource string (e.g. "
                "TCPIP::10.0.0.5::5025::SOCKET, ASRL/dev/ttyUSB0::INSTR), a ZeroMQ endpoint "
                "(tcp://10.0.0.5:5555[?dlt=host:6060]), swabian:<serial> nor 'emulator'"
            )
        if m and m.group("port") and not 0 < int(m.group("port")) < 65536:
            raise ValueError(f"{v!r}: port {int(m.group('port'))} is not in 1..65535")
        return v

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str | None) -> str | None:
        if v is not None and v not in DRIVERS:
            raise ValueError(unknown_driver_message(v))
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict) -> dict:
        for key, value in v.items():
            if key not in VISA_OPTIONS:
                raise _at(key, f"unknown option {key!r}; options are {', '.join(VISA_OPTIONS)}")
            if not isinstance(value, (bool, int, float, str)):
                raise _at(key, f"an option is a number, string or boolean, not {_describe(value)}")
        return v


class EmulatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    seed: int = Field(
        1,
        ge=0,
        le=2**63 - 1,
        description="seed of the emulated channel (noise, losses, detections); the source's "
        "pattern seed is secret and drawn anew at each start",
    )
    start_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="wait this long for the emulator (a cold numba compile is slow)",
    )


class KMESpec(BaseModel):
    """A key management entity reached over HTTPS with mutual TLS (ETSI GS QKD 014 V1.1.1).
    ``resource: emulator`` takes everything from the emulated KME pair; otherwise the URL, the
    IDs and this SAE's certificate, key and CA bundle (PEM paths relative to the bench file)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    resource: str | None = Field(None, description="'emulator': the emulated KME pair")
    base_url: str | None = Field(None, max_length=512, description="https://host[:port][/path]")
    kme_id: str | None = Field(None, max_length=256, description="the KME ID its cert carries")
    sae_id: str | None = Field(None, max_length=256, description="this site's SAE ID")
    peer_sae_id: str | None = Field(
        None, max_length=256, description="the SAE at the other end (kme_a: slave; kme_b: master)"
    )
    cert: str | None = Field(None, max_length=1024, description="this SAE's certificate (PEM)")
    key: str | None = Field(None, max_length=1024, description="this SAE's private key (PEM)")
    ca: str | None = Field(None, max_length=1024, description="the CA bundle to trust (PEM)")
    outsider_cert: str | None = Field(
        None, max_length=1024, description="a certificate the KME must refuse (PEM; optional)"
    )
    outsider_key: str | None = Field(None, max_length=1024, description="its private key (PEM)")
    id_field: str = Field("cn", description="certificate field of the IDs: cn, san_dns, ...")
    check_hostname: bool = Field(True, description="check the URL's host in the KME certificate")
    timeout_s: float = Field(5.0, gt=0, le=600, allow_inf_nan=False, description="per request")

    @field_validator("resource")
    @classmethod
    def _resource(cls, v: str | None) -> str | None:
        if v is not None and v != EMULATOR:
            raise ValueError(f"{v!r}: a KME's resource is 'emulator' or absent (give base_url)")
        return v

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https://[A-Za-z0-9_.\-\[\]:]+(?:/\S*)?$", v):
            raise ValueError(f"{v!r} is not an https://host[:port][/path] URL")
        return v

    @field_validator("id_field")
    @classmethod
    def _id_field(cls, v: str) -> str:
        fields = ("cn", "san_dns", "san_uri", "serial")
        if v not in fields:
            raise ValueError(f"{v!r} is not one of {', '.join(fields)}")
        return v

    PEM_FIELDS: ClassVar[tuple[str, ...]] = ("cert", "key", "ca", "outsider_cert", "outsider_key")
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "base_url", "kme_id", "sae_id", "peer_sae_id", "cert", "key", "ca"
    )  # fmt: skip

    @model_validator(mode="after")
    def _complete(self) -> KMESpec:
        if self.resource == EMULATOR:
            others = (*self.REQUIRED, "outsider_cert", "outsider_key")
            given = [f for f in others if getattr(self, f)]
            if given:
                raise _at(given[0], "not given with resource: emulator (the emulator's own)")
            return self
        for f in self.REQUIRED:
            if getattr(self, f) is None:
                raise _at(f, "required key is missing (or give resource: emulator)")
        if (self.outsider_cert is None) != (self.outsider_key is None):
            raise _at("outsider_cert", "give outsider_cert and outsider_key together")
        return self


class BenchFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=2000)
    emulator: EmulatorSpec | None = None
    instruments: dict[str, InstrumentSpec] = Field(default_factory=dict)
    kmes: dict[str, KMESpec] = Field(
        default_factory=dict, description="key management entities by role: kme_a, kme_b"
    )
    safe_state: bool = Field(True, description="source off, attenuator at maximum at the end")
    auth_key_file: str | None = Field(
        None,
        max_length=4096,
        description="file of the pre-shared authentication key pool for distillation (raw "
        "bytes, 16 to 1 MiB; relative to the bench file); none: the emulated bench draws one",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # the name goes into run folders' summaries, allure's environment file and HTML
        if _CONTROL.search(v):
            raise ValueError(f"{v!r} holds a control character")
        return v

    @field_validator("instruments")
    @classmethod
    def _roles(cls, v: dict) -> dict:
        for role in v:
            if role not in ROLES:
                raise _at(role, f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        return v

    @field_validator("kmes")
    @classmethod
    def _kme_roles(cls, v: dict) -> dict:
        for role in v:
            if role not in KME_ROLES:
                raise _at(role, f"unknown KME role {role!r}; KME roles are {', '.join(KME_ROLES)}")
        return v


# ----------------------------------------------------------------------------- bounded YAML

MAX_BYTES = 1 << 20  # a bench file is ~1 kB, the pilot criteria ~4 kB
MAX_DEPTH = 32  # nesting levels (the bench schema needs 4)
MAX_NODES = 50_000  # values (keys, scalars, collections) after aliases are expanded
MAX_CHARS = 4 << 20  # scalar characters after aliases are expanded (quadratic blow-up)
MAX_INT_DIGITS = 30  # a 64-bit seed has 20

# What the YAML reader itself refuses (yaml.reader.Reader.NON_PRINTABLE), checked first so the
# error can name the line and byte offset.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


class _Refused(yaml.MarkedYAMLError):
    """A bound of :func:`load_yaml` was crossed at ``problem_mark``."""

    def __init__(self, mark: yaml.Mark, problem: str):
        super().__init__(problem=problem, problem_mark=mark)


class _Resolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core schema: only true/false are booleans; no sexagesimal or octal-by-0 ints,
    no implicit timestamps; ``1e3`` is a number."""


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Resolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"])
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)


class _Composer(yaml.composer.Composer):
    """Counts every value as if aliases were expanded, and the nesting depth, while composing;
    refuses at the first value past a bound, before anything large exists. (PyYAML shares an
    aliased node instead of copying it, but the line map, the schema validation and any dump of
    the result walk it as a tree.)"""

    def __init__(self) -> None:
        super().__init__()
        self._nodes = 0
        self._chars = 0
        self._open: list[int] = []  # per open collection: height of its tallest child so far
        self._size: dict[int, tuple[int, int, int]] = {}  # id(node) -> nodes, chars, height

    def _add(self, nodes: int, chars: int, mark: yaml.Mark, via: str) -> None:
        self._nodes += nodes
        self._chars += chars
        if self._nodes > MAX_NODES:
            raise _Refused(mark, f"more than {MAX_NODES} values{via}")
        if self._chars > MAX_CHARS:
            raise _Refused(mark, f"more than {MAX_CHARS} characters of values{via}")

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                size = self._size.get(id(node))
                if size is None:
                    raise _Refused(
                        event.start_mark, f"alias *{event.anchor} refers to a value containing it"
                    )
                nodes, chars, height = size
                if len(self._open) + height > MAX_DEPTH:
                    raise _Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
                self._add(
                    nodes,
                    chars,
                    event.start_mark,
                    f" once aliases are expanded (at *{event.anchor}; a YAML bomb?)",
                )
                if self._open:
                    self._open[-1] = max(self._open[-1], height)
            return super().compose_node(parent, index)
        if len(self._open) >= MAX_DEPTH:
            raise _Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        nodes0, chars0 = self._nodes, self._chars
        self._add(1, 0, event.start_mark, "")
        self._open.append(0)
        node = super().compose_node(parent, index)
        height = self._open.pop() + 1
        if isinstance(node, yaml.ScalarNode):
            self._add(0, len(node.value), node.start_mark, "")
        if self._open:
            self._open[-1] = max(self._open[-1], height)
        self._size[id(node)] = (self._nodes - nodes0, self._chars - chars0, height)
        return node


class _Constructor(yaml.constructor.SafeConstructor):
    def construct_object(self, node, deep=False):  # noqa: ANN001 (PyYAML's signature)
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            # an explicit tag on a value it cannot hold (``!!bool maybe``, ``!!float x``)
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(node.value)[:40]!r} is not a valid {node.tag}", node.start_mark
            ) from None

    def construct_yaml_int(self, node):  # noqa: ANN001
        value = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if value.startswith("-") else 1
        digits = value.lstrip("+-")
        if len(digits) > MAX_INT_DIGITS:
            raise _Refused(
                node.start_mark, f"an integer of {len(digits)} digits (at most {MAX_INT_DIGITS})"
            )
        if digits[:2] in ("0o", "0x"):
            return sign * int(digits[2:], 8 if digits[1] == "o" else 16)
        return sign * int(digits, 10)


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)


class _Loader(
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _Composer, _Constructor, _Resolver
):
    """PyYAML's pure-Python safe loader with the bounded composer and the 1.2 resolver (the C
    loader composes in C, where the bounds could not be counted)."""

    def __init__(self, stream: str):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


def _key_path_at(text: str, line: int) -> str:
    """The block-style key path of the key on 1-based ``line`` (by indentation), or ''."""
    rows = text.splitlines()
    if not 0 < line <= len(rows):
        return ""
    path: list[str] = []
    indent = None
    for row in reversed(rows[:line]):
        m = re.match(r"^(\s*)([^\s#:{}\[\]-][^:#{}]*?)\s*:(\s|$)", row)
        if not m or (indent is not None and len(m.group(1)) >= indent):
            continue
        # a parent opens a block: nothing but a comment after its colon
        if indent is None or re.match(r"^\s*(#.*)?$", row[m.end() :]):
            path.insert(0, m.group(2).strip("'\""))
            indent = len(m.group(1))
            if indent == 0:
                break
    return ".".join(path)


def _read_text(path: Path) -> str:
    """The file's text: a regular file of at most MAX_BYTES of UTF-8 without control characters."""
    try:
        if not path.is_file():
            raise ConfigError(
                f"{path}: file not found" if not path.exists() else f"{path}: not a regular file"
            )
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # never more, whatever stat said
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes (1 MiB); not a bench file?")
    for bom, name in _BOMS.items():
        if raw.startswith(bom):
            raise ConfigError(f"{path}:1: {name} text (byte-order mark); save the file as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        ) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is allowed by YAML
    bad = _NON_PRINTABLE.search(text)
    if bad:
        offset = len(text[: bad.start()].encode())
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError(
            f"{path}:{line}: control character U+{ord(bad.group()):04X} at byte offset {offset} "
            "(YAML is printable text)"
        )
    return text


def _walk(node: yaml.Node, path: tuple, out: dict) -> tuple | None:
    """Fill ``out`` with key path -> 1-based line; return the first problem found as
    (key path, line, message): a repeated key or a key that is not a plain value."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for k, v in node.value:
            line = k.start_mark.line + 1
            if not isinstance(k, yaml.ScalarNode):
                kind = "list" if isinstance(k, yaml.SequenceNode) else "mapping"
                return path, line, f"a key must be a plain value, not a {kind}"
            key = (*path, k.value)
            if k.value in seen and k.tag != "tag:yaml.org,2002:merge":
                return key, line, f"duplicate key (first given on line {seen[k.value]})"
            seen[k.value] = line
            out[key] = line
            problem = _walk(v, key, out)
            if problem:
                return problem
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[(*path, i)] = v.start_mark.line + 1
            problem = _walk(v, (*path, i), out)
            if problem:
                return problem
    return None


def load_yaml(path: Path) -> tuple[Any, dict]:
    """Load one YAML document within the bounds above, and its key-path -> line map; every
    refusal is one ConfigError line ``file:line: key.path: problem``."""
    path = Path(path)
    text = _read_text(path)
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
            lines: dict = {}
            if node is not None:
                problem = _walk(node, (), lines)
                if problem:
                    loc, line, msg = problem
                    key = ".".join(str(p) for p in loc) or "(top level)"
                    raise ConfigError(f"{path}:{line}: {key}: {msg}")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.context_mark or exc.problem_mark
        if mark is None:
            raise ConfigError(f"{path}: invalid YAML: {_one_line(exc)}") from None
        line = mark.line + 1
        key = _key_path_at(text, line)
        key = f"{key}: " if key else ""
        what = f"{exc.context}, " if exc.context else ""
        where = (
            f" on line {exc.problem_mark.line + 1}" if exc.problem_mark and exc.context_mark else ""
        )
        if isinstance(exc, _Refused):
            raise ConfigError(f"{path}:{line}: {key}{exc.problem}") from None
        raise ConfigError(f"{path}:{line}: {key}invalid YAML: {what}{exc.problem}{where}") from None
    except (yaml.YAMLError, RecursionError, MemoryError, ValueError) as exc:
        # not expected past the bounds above; still one line, never a traceback
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot read as YAML: {_one_line(exc)}") from None
    return data, lines


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


def error_line(path: Path, lines: dict, loc: tuple, msg: str) -> str:
    """One line ``file:line: key.path: message`` for the deepest known location of ``loc``."""
    loc = tuple(loc)
    key = ".".join(str(p) for p in loc) or "(top level)"
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            return f"{path}:{lines[loc[:i]]}: {key}: {msg}"
        # keys of the line map are the text of the YAML keys; a constructed key may be a number
        as_text = tuple(str(p) for p in loc[:i])
        if as_text in lines:
            return f"{path}:{lines[as_text]}: {key}: {msg}"
    return f"{path}: {key}: {msg}"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"the string {shown!r}" + (" (remove the quotes?)" if _looks_typed(value) else "")
    if isinstance(value, (int, float)):
        return f"the number {value!r}"[:80]
    if value is None:
        return "nothing (null)"
    return f"a {'list' if isinstance(value, list) else type(value).__name__}"


def _looks_typed(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return value.strip().lower() in ("true", "false")


def validate(model: type[BaseModel], data: Any, path: Path, lines: dict) -> BaseModel:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        if loc and loc[-1] == "[key]":  # a mapping key of the wrong type (``1:`` for a role)
            loc, msg = loc[:-1], f"key: {msg}"
        if err["type"] == "hil_at":
            loc = (*loc, *err["ctx"]["hil_at"].split("."))
        elif err["type"].endswith("_type") or err["type"] in _BOUND_ERRORS:
            # name what was given: "'false'" in quotes is a string, not a boolean
            msg = f"{msg}, got {_describe(err.get('input'))}"
        raise ConfigError(error_line(path, lines, loc, msg)) from None


_BOUND_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
    "string_too_short",
    "string_too_long",
}


# ----------------------------------------------------------------------------- bench files


def builtin_bench_dir() -> Path:
    return Path(str(resources.files("hil.fixtures") / "benches"))


def resolve_bench(name_or_path: str) -> Path:
    """A bench name (``emulated``) names a shipped bench file; anything else is a path."""
    p = Path(name_or_path)
    try:
        exists = p.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        exists = False
    if p.suffix in (".yaml", ".yml") or exists or "/" in name_or_path:
        return p
    candidate = builtin_bench_dir() / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(x.stem for x in builtin_bench_dir().glob("*.yaml")))
    raise ConfigError(f"{name_or_path}: no such bench file, and not a shipped bench ({known})")


def load_bench(name_or_path: str | Path) -> tuple[BenchFile, Path]:
    path = resolve_bench(str(name_or_path))
    data, lines = load_yaml(path)
    bench = validate(BenchFile, data, path, lines)
    for role, spec in bench.instruments.items():
        if spec.resource == EMULATOR and bench.emulator is None:
            raise ConfigError(
                error_line(
                    path,
                    lines,
                    ("instruments", role, "resource"),
                    "'emulator' needs an 'emulator:' section",
                )
            )
    for role, kspec in bench.kmes.items():
        if kspec.resource == EMULATOR and bench.emulator is None:
            raise ConfigError(
                error_line(
                    path,
                    lines,
                    ("kmes", role, "resource"),
                    "'emulator' needs an 'emulator:' section",
                )
            )
        for field in KMESpec.PEM_FIELDS:
            given = getattr(kspec, field)
            if given is None:
                continue
            problem = _pem_problem(path.parent / given, private=field.endswith("key"))
            if problem:
                raise ConfigError(error_line(path, lines, ("kmes", role, field), problem))
    return bench, path


def _pem_problem(file: Path, private: bool) -> str | None:
    """Why ``file`` is not a readable PEM certificate (or private key), or None."""
    try:
        if not file.is_file():
            return f"{file}: {'not a regular file' if file.exists() else 'file not found'}"
        with file.open("rb") as f:
            head = f.read(MAX_BYTES)
    except OSError as exc:
        return f"{file}: cannot read ({exc.strerror})"
    want = b"PRIVATE KEY-----" if private else b"-----BEGIN CERTIFICATE-----"
    if b"-----BEGIN " not in head or want not in head:
        what = "private key" if private else "certificate"
        return f"{file}: not a PEM {what} (no '-----BEGIN ...{want.decode().strip('-')}' block)"
    return None


def bench_json_schema() -> dict:
    """The JSON Schema of bench files, with the choices an editor can offer: roles, registered
    drivers and pyvisa options (pydantic checks these in validators it cannot export)."""
    schema = BenchFile.model_json_schema()
    schema["properties"]["instruments"]["propertyNames"] = {"enum": list(ROLES)}
    spec = schema["$defs"]["InstrumentSpec"]["properties"]
    spec["driver"]["anyOf"] = [{"enum": sorted(DRIVERS)}, {"type": "null"}]
    spec["options"]["propertyNames"] = {"enum": list(VISA_OPTIONS)}
    spec["options"]["additionalProperties"] = {"type": ["boolean", "integer", "number", "string"]}
    return schema
