"""Success criteria (YAML) and verdicts: PASS, MARGINAL or FAIL, with the margin.

A criteria file maps requirement ids to criteria::

    plan: pilot
    criteria:
      PIL-RATE-001:
        title: Detector count rate at 10 dB
        quantity: count_rate
        unit: kHz
        limits: {min: 100}
        marginal: {min: 150}      # passes, but close to the limit: reported prominently
        conditions: {attenuation_db: 10, duration_s: 1}

A MARGINAL verdict passes; FAIL fails the test that measured it. Values are stored in the
criterion's unit; ``judge`` takes values in the quantity's SI base unit, and optionally the
measurement's standard uncertainty (same unit), kept in the verdict so that ``hil report`` can
tell a real change from counting noise.

Conditions: each quantity accepts the condition keys listed in :data:`CONDITIONS` (each checked
for its type and range); any other key is refused at load with one line ``file:line: key:``, so a
condition the measurement would not honour (a typo, or a setting no plan applies) cannot sit in
a criteria file looking as if it did. A plan reads every condition of the criteria it judges.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .config import ConfigError, error_line, load_yaml, validate

_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "min": 60.0, "h": 3600.0}
_RATE = {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "1/s": 1.0}
_BITS = {"bit/s": 1.0, "kbit/s": 1e3, "Mbit/s": 1e6, "bps": 1.0, "kbps": 1e3, "Mbps": 1e6}
_RATIO = {"1": 1.0, "%": 0.01, "fraction": 1.0}

# quantity -> (SI base unit, accepted units with their factor to the base unit, description)
QUANTITIES: dict[str, tuple[str, dict[str, float], str]] = {
    "count_rate": ("Hz", _RATE, "detector count rate"),
    "sync_rate": ("Hz", _RATE, "sync channel rate"),
    "secure_key_rate": ("bit/s", _BITS, "finite-key secure key rate"),
    "asymptotic_key_rate": ("bit/s", _BITS, "asymptotic secure key rate"),
    "sifted_key_rate": ("bit/s", _BITS, "sifted key rate"),
    "qber": ("1", _RATIO, "quantum bit error rate"),
    "uptime": ("1", _RATIO, "share of windows with key rate above the floor"),
    "integration_time": ("s", _TIME, "time from link start to first secure key"),
    "detection_latency": ("s", _TIME, "time from fault to detection"),
    "recovery_time": ("s", _TIME, "time from restoration to secure key"),
    "dark_count_rate": ("Hz", _RATE, "dark count rate"),
    "detection_efficiency": ("1", _RATIO, "detection efficiency"),
    "control_latency": ("s", _TIME, "SCPI round-trip time"),
    "clock_drift": ("ppm", {"ppm": 1.0}, "recovered clock drift"),
    "sync_residual": ("s", _TIME, "max residual of the recovered clock"),
    "key_rate_ratio": ("1", _RATIO, "key rate relative to a reference"),
    "secure_key_length": ("bit", {"bit": 1.0, "kbit": 1e3, "Mbit": 1e6}, "finite-key length"),
    # the key plane (ETSI GS QKD 014 KMEs; ITU-T Y.3807 QoS parameters), hil.keys
    "key_delivery_rate": ("bit/s", _BITS, "key throughput delivered to SAEs"),
    "key_response_delay": ("s", _TIME, "KME answer latency (KKRD)"),
    "key_error_ratio": ("1", _RATIO, "keys differing between master and slave (KKDER)"),
    "key_loss_ratio": ("1", _RATIO, "keys issued the slave cannot fetch (KKDLR)"),
    "key_availability": ("1", _RATIO, "share of key requests served"),
    "key_outage_time": ("s", _TIME, "time until the KME refuses (503) or serves again"),
    "rule_violations": ("count", {"count": 1.0}, "ETSI GS QKD 014 rules a KME broke"),
}


# -- conditions: the keys each quantity's measurement honours, with their checks -----------------
# A check returns None when the value is acceptable, else what is wrong with it.
_Check = Any


def _number(lo: float = -math.inf, hi: float = math.inf, *, lo_open=False, hi_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "must be a finite number"
        if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            return f"{v!r} is outside {left}{lo:g}, {hi:g}{right}"
        return None

    return check


def _numbers(lo: float = -math.inf, hi: float = math.inf):
    """A number or a non-empty list of numbers within [lo, hi] (a sweep)."""
    one = _number(lo, hi)

    def check(v):
        items = v if isinstance(v, list) else [v]
        if not items:
            return "an empty list measures nothing"
        return next((f"{e}" for e in map(one, items) if e), None)

    return check


def _choice(*allowed: str):
    def check(v):
        return None if v in allowed else f"{v!r} is not one of {', '.join(map(repr, allowed))}"

    return check


def _detectors(v):
    """Detector names H, V, D, A as a list or a comma-separated string."""
    names = v if isinstance(v, list) else str(v).split(",")
    names = [str(n).strip() for n in names]
    bad = [n for n in names if n not in DETECTOR_NAMES]
    if bad or not names:
        return f"{v!r}: name detectors among {', '.join(DETECTOR_NAMES)}"
    return None


from .roles import DETECTOR_NAMES  # noqa: E402 - the channel map, defined in hil.roles

_POS = _number(0.0, lo_open=True)
_TIME_AT = _number(0.0)
_ATT = _numbers(0.0, 100.0)
# Security parameters of the finite-key bound (Lim et al., PRA 89, 022307 (2014)): failure
# probabilities in (0, 1); the error-correction efficiency f_EC >= 1 (1 is the Shannon limit,
# below it a code would leak less than the conditional entropy allows).
_KEY = {
    "eps_sec": ("secrecy failure probability", _number(0.0, 1.0, lo_open=True, hi_open=True)),
    "eps_cor": ("correctness failure probability", _number(0.0, 1.0, lo_open=True, hi_open=True)),
    "f_ec": ("error-correction efficiency (leak / n h(QBER))", _number(1.0, 10.0)),
}
_LINK = {
    "attenuation_db": ("attenuator setting (dB); a list is a sweep", _ATT),
    "duration_s": ("acquisition length in link time", _POS),
}
_WINDOW = {"window_s": ("monitor or analysis window", _POS)}
# fault injections (testplans/pilot/faults): when and how much
_FAULTS = {
    "cut_at_s": ("fiber cut, link-time offset", _TIME_AT),
    "restore_at_s": ("fiber restored, link-time offset", _TIME_AT),
    "step_db": ("loss step", _POS),
    "step_at_s": ("step, link-time offset", _TIME_AT),
    "key_rate_floor_kbps": ("monitor key-rate floor (kbit/s)", _number(0.0)),
    "drift_at_s": ("drift start, link-time offset", _TIME_AT),
    "e_mis_final": ("misalignment error reached", _number(0.0, 0.5)),
    "e_mis_rate_per_s": ("misalignment growth per s", _POS),
    "runaway_at_s": ("temperature runaway start", _TIME_AT),
    "rate_c_per_s": ("temperature ramp (degC/s)", _POS),
    "target_c": ("temperature the runaway heads for (degC)", _number(-60.0, 60.0)),
    "poll_s": ("temperature poll interval", _POS),
    "attack_at_s": ("attack start, link-time offset", _TIME_AT),
    "fraction": ("share of pulses attacked", _number(0.0, 1.0)),
    "lost_at_s": ("sync lost, link-time offset", _TIME_AT),
    "back_at_s": ("sync back, link-time offset", _TIME_AT),
    "off_at_s": ("laser off, link-time offset", _TIME_AT),
}
_TEMPS = {"temperatures_c": ("detector temperature sweep (degC)", _numbers(-60.0, 25.0))}

# quantity -> condition key -> (description, check)
# the key plane's measurement conditions (testplans/keys, testplans/etsi014)
_KEYPLANE = {
    "demand_keys_per_s": ("steady enc_keys demand (keys/s)", _number(0.0, 1e6, lo_open=True)),
    "key_size_bits": ("size of each key (bits)", _number(8, 1e5)),
    "keys_per_request": ("keys asked per enc_keys", _number(1, 1e4)),
    "requests": ("requests timed", _number(1, 1e6)),
    "soak_s": ("soak length (s)", _POS),
    "cut_at_s": _FAULTS["cut_at_s"],
    "restore_at_s": _FAULTS["restore_at_s"],
    "percentile": ("percentile judged", _number(0.0, 100.0)),
    "clause": ("ETSI GS QKD 014 V1.1.1 clause checked", lambda v: None),
}
_KEYPLANE_QUANTITIES = (
    "key_delivery_rate",
    "key_response_delay",
    "key_error_ratio",
    "key_loss_ratio",
    "key_availability",
    "key_outage_time",
    "rule_violations",
)

CONDITIONS: dict[str, dict[str, tuple[str, _Check]]] = {
    "count_rate": {**_LINK, "channels": ("detectors counted (H, V, D, A)", _detectors)},
    "sync_rate": dict(_LINK),
    "secure_key_rate": {
        **_LINK,
        **_KEY,
        **_TEMPS,
        **_WINDOW,
        "drift_db": ("slow loss drift added", _POS),
        "drift_s": ("length of the drift", _POS),
    },
    "asymptotic_key_rate": {**_LINK, "f_ec": _KEY["f_ec"]},
    "sifted_key_rate": dict(_LINK),
    "qber": {
        **_LINK,
        **_TEMPS,
        "basis": ("basis of the sifted bits", _choice("Z", "X")),
        "intensity": ("intensity class", _choice("signal", "decoy", "vacuum")),
    },
    "uptime": {
        "attenuation_db": _LINK["attenuation_db"],
        **_WINDOW,
        "soak_s": ("soak length in link time", _POS),
        "key_rate_floor_kbps": _FAULTS["key_rate_floor_kbps"],
    },
    "integration_time": {
        **_LINK,
        **_KEY,
        **_WINDOW,
        "source_on_at_s": ("source output on, link-time offset", _TIME_AT),
    },
    "detection_latency": {"attenuation_db": _LINK["attenuation_db"], **_WINDOW, **_FAULTS},
    "recovery_time": {"attenuation_db": _LINK["attenuation_db"], **_WINDOW, **_FAULTS},
    "dark_count_rate": {
        "integration_s": ("counter integration time", _number(1e-3, 60.0)),
        # the procedure measures with the source off and the shutter closed, nothing else
        "source": ("source output during the count", _choice("off")),
        "shutter": ("attenuator shutter during the count", _choice("closed")),
    },
    "detection_efficiency": {
        **_LINK,
        "channel_loss_db": ("calibrated loss besides the attenuator (dB)", _number(0.0, 100.0)),
    },
    "control_latency": {"queries": ("round trips whose median is taken", _number(1, 100_000))},
    "clock_drift": {
        **_LINK,
        "drift_ppm": ("injected clock drift step", _number(-1000.0, 1000.0)),
        "step_at_s": _FAULTS["step_at_s"],
    },
    "sync_residual": dict(_LINK),
    "key_rate_ratio": {**_LINK, **_KEYPLANE},
    **{q: {**_LINK, **_KEYPLANE} for q in _KEYPLANE_QUANTITIES},
    "secure_key_length": {
        **_LINK,
        **_KEY,
        "attack_fraction": ("share of pulses intercepted and resent", _number(0.0, 1.0)),
    },
}


# A limit is a plain finite number: a quoted "100" or "100 kHz" is a mistake, not a limit.
LimitValue = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _at(key: str, message: str) -> PydanticCustomError:
    """A validation error reported at the sub-key ``key`` of the model that raised it."""
    # the message goes in as context, not as the template: user text may hold braces
    return PydanticCustomError("hil_at", "{hil_message}", {"hil_at": key, "hil_message": message})


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: LimitValue | None = None
    max: LimitValue | None = None

    @model_validator(mode="after")
    def _some(self) -> Limits:
        if self.min is None and self.max is None:
            raise ValueError("give at least one of min, max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _at("min", f"min {self.min:g} is above max {self.max:g}")
        return self


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    quantity: str
    unit: str
    limits: Limits
    marginal: Limits | None = Field(
        None, description="inner band: passing values beyond it are MARGINAL"
    )
    conditions: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @field_validator("quantity")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if v not in QUANTITIES:
            raise ValueError(f"unknown quantity {v!r}; known: {', '.join(sorted(QUANTITIES))}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Criterion:
        units = QUANTITIES[self.quantity][1]
        if self.unit not in units:
            raise _at(
                "unit",
                f"unit {self.unit!r} does not measure {self.quantity}; use one of "
                f"{', '.join(units)}",
            )
        lim, m = self.limits, self.marginal
        if m is not None:
            for side in ("min", "max"):
                mv, lv = getattr(m, side), getattr(lim, side)
                if mv is None:
                    continue
                if lv is None:
                    raise _at(f"marginal.{side}", f"marginal.{side} given without limits.{side}")
                inside = mv >= lv if side == "min" else mv <= lv
                if not inside:
                    raise _at(
                        f"marginal.{side}",
                        f"marginal.{side} {mv:g} lies outside limits.{side} {lv:g} "
                        "(the marginal band is the passing edge inside the limit)",
                    )
        return self

    @model_validator(mode="after")
    def _known_conditions(self) -> Criterion:
        accepted = CONDITIONS.get(self.quantity, {})
        for key, value in self.conditions.items():
            if key not in accepted:
                raise _at(
                    f"conditions.{key}",
                    f"unknown condition {key!r} for {self.quantity} (no measurement would honour "
                    f"it); accepted: {', '.join(sorted(accepted)) or 'none'}",
                )
            problem = accepted[key][1](value)
            if problem:
                raise _at(f"conditions.{key}", problem)
        return self

    @field_validator("conditions")
    @classmethod
    def _conditions(cls, v: dict) -> dict:
        # Conditions are printed in reports and compared across runs: keep them flat scalars.
        for k, c in v.items():
            items = c if isinstance(c, list) else [c]
            if not all(isinstance(x, (str, int, float, bool)) for x in items):
                raise _at(
                    str(k),
                    "a condition is a number, a string, a boolean or a list of them "
                    "(name its unit in the key, e.g. attenuation_db)",
                )
        return v


class CriteriaFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str
    criteria: dict[str, Criterion]

    @field_validator("criteria")
    @classmethod
    def _ids(cls, v: dict) -> dict:
        if not v:
            raise ValueError("no criteria")
        return v


# Requirement ids: letters, digits, '-', '_' and '.', so they survive allure links and JUnit.
_ID_OK = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def _validate_criteria(data: Any, path: Path, lines: dict) -> CriteriaFile:
    """Like config.validate, but an error raised with ``_at`` names the sub-key it is about."""
    if isinstance(data, dict):
        try:
            return CriteriaFile.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            if err["type"] == "hil_at":
                loc = tuple(
                    p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function"))
                )
                loc = (*loc, *err["ctx"]["hil_at"].split("."))
                raise ConfigError(error_line(path, lines, loc, err["msg"])) from None
    return validate(CriteriaFile, data, path, lines)


def load_criteria(path: str | Path) -> tuple[CriteriaFile, Path]:
    """Load and validate a criteria file; a bad one raises one ConfigError line
    ``file:line: key.path: message``."""
    path = Path(path)
    # bounded YAML: syntax errors, duplicate keys, aliases, size and encoding refused in one line
    data, lines = load_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("criteria"), dict):
        for cid in data["criteria"]:
            if not isinstance(cid, str) or not cid or set(cid) - _ID_OK:
                line = lines.get(("criteria", cid), "?")
                raise ConfigError(
                    f"{path}:{line}: criteria.{cid}: requirement id may only hold "
                    "letters, digits, '-', '_' and '.'"
                )
    spec = _validate_criteria(data, path, lines)
    return spec, path


Outcome = Literal["PASS", "MARGINAL", "FAIL"]


@dataclass
class Verdict:
    """The judgement of one measured value against one criterion."""

    criterion_id: str
    title: str
    quantity: str
    value: float  # in ``unit``
    unit: str
    limits: dict
    marginal: dict | None
    outcome: Outcome
    margin: float  # distance to the nearest limit in ``unit``; negative when outside
    conditions: dict
    plan: str = ""
    test: str = ""
    evidence: list[str] = field(default_factory=list)
    criteria_file: str = ""
    # standard uncertainty of ``value`` (one sigma, in ``unit``), when the measurement states it
    uncertainty: float | None = None

    @property
    def passed(self) -> bool:
        return self.outcome != "FAIL"

    def limit_text(self) -> str:
        parts = []
        if self.limits.get("min") is not None:
            parts.append(f">= {self.limits['min']:g} {self.unit}")
        if self.limits.get("max") is not None:
            parts.append(f"<= {self.limits['max']:g} {self.unit}")
        return " and ".join(parts)

    def line(self) -> str:
        pm = f" +- {self.uncertainty:.2g}" if self.uncertainty is not None else ""
        return (
            f"{self.criterion_id} {self.quantity} = {self.value:.6g}{pm} {self.unit}, limit "
            f"{self.limit_text()}: {self.outcome} (margin {self.margin:+.4g} {self.unit})"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def judge(
    criterion_id: str,
    criterion: Criterion,
    value_si: float,
    *,
    plan: str = "",
    test: str = "",
    evidence: list[str] | None = None,
    criteria_file: str = "",
    conditions: dict | None = None,
    uncertainty: float | None = None,
) -> Verdict:
    """Judge ``value_si`` (in the quantity's SI base unit) against ``criterion``.

    ``uncertainty``: the measurement's standard uncertainty (one sigma) in the same SI unit,
    or None when the measurement does not state one. It does not change the outcome (a limit
    is judged on the value); ``hil report`` uses it to tell a change from noise."""
    factor = QUANTITIES[criterion.quantity][1][criterion.unit]
    value = float(value_si) / factor
    u = None
    if uncertainty is not None:
        u = float(uncertainty) / factor
        if not (u >= 0 and math.isfinite(u)):  # NaN or negative: nothing stated
            u = None
    lim, mar = criterion.limits, criterion.marginal
    margins = []
    if lim.min is not None:
        margins.append(value - lim.min)
    if lim.max is not None:
        margins.append(lim.max - value)
    margin = min(margins)
    if math.isnan(value) or margin < 0:
        outcome: Outcome = "FAIL"
    else:
        outcome = "PASS"
        if mar is not None and (
            (mar.min is not None and value < mar.min) or (mar.max is not None and value > mar.max)
        ):
            outcome = "MARGINAL"
    if math.isnan(value):
        margin = float("nan")
    return Verdict(
        criterion_id=criterion_id,
        title=criterion.title,
        quantity=criterion.quantity,
        value=value,
        unit=criterion.unit,
        limits=lim.model_dump(),
        marginal=mar.model_dump() if mar else None,
        outcome=outcome,
        margin=margin,
        conditions={**criterion.conditions, **(conditions or {})},
        plan=plan,
        test=test,
        evidence=list(evidence or []),
        criteria_file=criteria_file,
        uncertainty=u,
    )
