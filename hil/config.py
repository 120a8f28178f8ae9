"""Bench files (YAML): schema, loading, and errors that name the file, the key and the line.

The schema is pydantic; ``hil schema bench`` exports it as JSON Schema so editors can complete
bench files. Every validation error becomes one :class:`ConfigError` line such as
``lab.yaml:12: instruments.tagger.resource: 'TCPIP::x' is not a VISA resource string``.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# DEFAULT_DRIVERS is re-exported for modules that imported it from here before hil.roles
from .roles import DEFAULT_DRIVERS, DRIVERS, ROLES, unknown_driver_message  # noqa: F401

EMULATOR = "emulator"  # resource placeholder: the emulator started for the session fills it in

# VISA resource string grammar (VPP-4.3, table 4.3.1), the forms pyvisa-py opens.
_RESOURCE = re.compile(
    r"""^(?:
        TCPIP\d*::[A-Za-z0-9_.\-\[\]:]+?::\d{1,5}::SOCKET
      | TCPIP\d*::[A-Za-z0-9_.\-\[\]]+(?:::[A-Za-z0-9_,.\-]+)?::INSTR
      | ASRL[^\s:]+::INSTR
      | ASRL\d+::INSTR
      | USB\d*::(?:0x[0-9A-Fa-f]+|\d+)::(?:0x[0-9A-Fa-f]+|\d+)::[^\s:]+(?:::\d+)?::(?:INSTR|RAW)
      | GPIB\d*::\d+(?:::\d+)?::INSTR
    )$""",
    re.VERBOSE | re.IGNORECASE,
)


class ConfigError(ValueError):
    """A bench or criteria file is wrong; the message is one line naming file, line and key."""


class InstrumentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource: str = Field(description="VISA resource string, or 'emulator'")
    driver: str | None = Field(
        None, description="registered driver name (hil.roles.DRIVERS); default: the role's"
    )
    timeout_s: float = Field(5.0, gt=0, le=600, description="I/O timeout in s")
    check_errors: bool = Field(True, description="read SYST:ERR? after every setter")
    options: dict[str, Any] = Field(default_factory=dict, description="driver keyword arguments")

    @field_validator("resource")
    @classmethod
    def _resource(cls, v: str) -> str:
        if v != EMULATOR and not _RESOURCE.match(v):
            raise ValueError(
                f"{v!r} is not a VISA resource string (e.g. "
                "TCPIP::10.0.0.5::5025::SOCKET, ASRL/dev/ttyUSB0::INSTR) "
                "nor 'emulator'"
            )
        return v

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str | None) -> str | None:
        if v is not None and v not in DRIVERS:
            raise ValueError(unknown_driver_message(v))
        return v


class EmulatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(1, ge=0, description="seed of every random choice of the emulated link")
    start_timeout_s: float = Field(
        120.0, gt=0, description="wait this long for the emulator (a cold numba compile is slow)"
    )


class BenchFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    emulator: EmulatorSpec | None = None
    instruments: dict[str, InstrumentSpec]
    safe_state: bool = Field(True, description="source off, attenuator at maximum at the end")

    @field_validator("instruments")
    @classmethod
    def _roles(cls, v: dict) -> dict:
        for role in v:
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        return v


# ----------------------------------------------------------------------------- YAML with lines


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    """Map every key path of a composed YAML document to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = (*path, k.value)
            out[key] = k.start_mark.line + 1
            _line_map(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[(*path, i)] = v.start_mark.line + 1
            _line_map(v, (*path, i), out)
    return out


def load_yaml(path: Path) -> tuple[Any, dict]:
    """Load YAML and its key-path -> line map; errors name the file and line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    return data, (_line_map(node) if node is not None else {})


def error_line(path: Path, lines: dict, loc: tuple, msg: str) -> str:
    """One line ``file:line: key.path: message`` for the deepest known location of ``loc``."""
    loc = tuple(loc)
    key = ".".join(str(p) for p in loc) or "(top level)"
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            return f"{path}:{lines[loc[:i]]}: {key}: {msg}"
    return f"{path}: {key}: {msg}"


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
        # a bad role is reported at the role's own key
        if loc == ("instruments",) and "unknown role" in msg:
            role = re.search(r"role '([^']+)'", msg)
            if role:
                loc = ("instruments", role.group(1))
        raise ConfigError(error_line(path, lines, loc, msg)) from None


# ----------------------------------------------------------------------------- bench files


def builtin_bench_dir() -> Path:
    return Path(str(resources.files("hil.fixtures") / "benches"))


def resolve_bench(name_or_path: str) -> Path:
    """A bench name (``emulated``) names a shipped bench file; anything else is a path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in name_or_path:
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
    return bench, path


def bench_json_schema() -> dict:
    return BenchFile.model_json_schema()
