"""The key plane of a bench: the KMEs of roles ``kme_a`` and ``kme_b`` (ETSI GS QKD 014 V1.1.1),
their clients, and the audit trail of every key event.

A bench file names its KMEs under ``kmes:`` (:class:`hil.config.KMESpec`): either
``resource: emulator`` (the emulated KME pair of ``hil emulator serve``: URLs, IDs and the
throwaway certificates come from its ready file), or a vendor's KMEs by URL, IDs and PEM paths
(relative to the bench file). ``kme_a`` is the KME at the master SAE's site, ``kme_b`` the one
at the slave's; ``sae_id`` is the SAE this bench plays at that site and ``peer_sae_id`` the one
at the other end.

Audit trail: every call through a bench's KME client is one JSON line in the run folder's
``keys.jsonl`` (and an event of :mod:`hil.telemetry.events`): what was asked, the key IDs and
sizes delivered, the HTTP status, the latency, the UTC time and the bench time (seconds since
the bench opened; an emulated KME pair's own clock runs at the same pace, see emulator/kme.py).
Never a key byte: the records are built from key IDs and sizes only.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .instruments.kme import Key, KMEClient, KMEError, Status

AUDIT_FILE = "keys.jsonl"
PROBE_MARGIN_S = 2.0  # a probe's wait beyond the client's own deadline


def resolve(spec, bench_path: Path, emulated: dict | None) -> dict[str, dict]:
    """Per KME role, everything needed to reach it: base_url, kme_id, sae_id, peer_sae_id,
    cert, key, ca (absolute paths), outsider_cert/outsider_key (or None), id_field,
    check_hostname, timeout_s, emulated."""
    out: dict[str, dict] = {}
    for role, k in spec.kmes.items():
        if k.resource is not None:
            if not emulated:
                raise ValueError(f"{bench_path}: kmes.{role}: the emulator has no KME pair")
            here, there = ("master", "slave") if role == "kme_a" else ("slave", "master")
            saes = emulated["saes"]
            out[role] = {
                "base_url": emulated["kmes"][role]["url"],
                "kme_id": emulated["kmes"][role]["kme_id"],
                "sae_id": saes[here]["sae_id"],
                "peer_sae_id": saes[there]["sae_id"],
                "cert": saes[here]["cert"],
                "key": saes[here]["key"],
                "ca": emulated["ca_cert"],
                "outsider_cert": saes["outsider"]["cert"],
                "outsider_key": saes["outsider"]["key"],
                "id_field": emulated["id_field"],
                "check_hostname": True,
                "timeout_s": k.timeout_s,
                "emulated": True,
            }
            continue
        base = bench_path.parent

        def where(p, base=base):
            return None if p is None else str((base / p).resolve())

        out[role] = {
            "base_url": k.base_url,
            "kme_id": k.kme_id,
            "sae_id": k.sae_id,
            "peer_sae_id": k.peer_sae_id,
            "cert": where(k.cert),
            "key": where(k.key),
            "ca": where(k.ca),
            "outsider_cert": where(k.outsider_cert),
            "outsider_key": where(k.outsider_key),
            "id_field": k.id_field,
            "check_hostname": k.check_hostname,
            "timeout_s": k.timeout_s,
            "emulated": False,
        }
    return out


def open_clients(info: dict[str, dict]) -> tuple[dict[str, AuditedKME], dict[str, str]]:
    """A client per KME role, each probed with Get status towards its peer SAE (at once, each
    within its timeout); returns (clients that answered, {role: one-line cause} of the rest)."""
    clients: dict[str, AuditedKME] = {}
    failures: dict[str, str] = {}
    boxes: dict[str, dict] = {}

    def probe(role: str, box: dict) -> None:
        i = info[role]
        try:
            client = KMEClient(
                i["base_url"],
                i["kme_id"],
                i["sae_id"],
                i["cert"],
                i["key"],
                i["ca"],
                id_field=i["id_field"],
                timeout_s=i["timeout_s"],
                check_hostname=i["check_hostname"],
                name=role,
            )
        except (ValueError, OSError) as exc:
            box["cause"] = str(exc)
            return
        try:
            client.status(i["peer_sae_id"])
            box["client"] = client
        except KMEError as exc:
            client.close()
            box["cause"] = str(exc)
        finally:
            box["done"].set()

    for role in info:
        box = boxes[role] = {"done": threading.Event()}
        threading.Thread(target=probe, args=(role, box), name=f"probe {role}", daemon=True).start()
    for role, box in boxes.items():
        deadline = info[role]["timeout_s"] + PROBE_MARGIN_S
        if not box["done"].wait(deadline) and "cause" not in box:
            failures[role] = f"no answer to Get status within {deadline:g} s"
        elif "client" in box:
            clients[role] = AuditedKME(box["client"], role, info[role])
        else:
            failures[role] = box.get("cause", "no answer")
    return clients, failures


class Audit:
    """Where the key events of a run go: ``keys.jsonl`` in the run folder (appended, one line
    per event, each written whole) and hil.telemetry.events; counts per event kind."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else None
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def record(self, kind: str, **fields) -> None:
        fields = {k: v for k, v in fields.items() if not isinstance(v, (bytes, bytearray))}
        rec = {
            "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "bench_time_s": round(time.monotonic() - self._t0, 6),
            "kind": kind,
            **fields,
        }
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock:
            self.counts[kind] += 1
            if self.path is not None:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
        try:
            from .telemetry.events import emit
        except ImportError:  # the event log is optional here
            return
        emit(kind, **fields)


class AuditedKME:
    """A :class:`KMEClient` whose every call is recorded (:class:`Audit`): ``key_request``
    before, then ``key_delivery`` (key IDs, sizes, latency) or ``key_refusal`` (HTTP status,
    the rule, latency). ``info``: the role's URL, IDs and PEM paths (see :func:`resolve`)."""

    def __init__(self, client: KMEClient, role: str, info: dict):
        self.client = client
        self.role = role
        self.info = info
        self.audit = Audit()

    @property
    def sae_id(self) -> str:
        return self.info["sae_id"]

    @property
    def peer_sae_id(self) -> str:
        return self.info["peer_sae_id"]

    @property
    def kme_id(self) -> str:
        return self.info["kme_id"]

    @property
    def unreachable(self) -> str | None:
        return None

    def _run(self, call: str, peer: str, asked: dict, fn) -> Any:
        base = {"kme": self.role, "kme_id": self.kme_id, "sae": self.sae_id, "call": call}
        base["peer_sae"] = peer
        self.audit.record("key_request", **base, **asked)
        t0 = time.perf_counter()
        try:
            result = fn()
        except KMEError as exc:
            ms = 1e3 * (time.perf_counter() - t0)
            self.audit.record(
                "key_refusal",
                **base,
                **asked,
                status=exc.status,
                error_kind=exc.kind,
                rule=exc.rule,
                latency_ms=round(ms, 3),
            )
            raise
        ms = 1e3 * (time.perf_counter() - t0)
        if isinstance(result, list):
            self.audit.record(
                "key_delivery",
                **base,
                status=200,
                key_IDs=[k.key_ID for k in result],
                sizes=sorted({k.size for k in result}),
                number=len(result),
                latency_ms=round(ms, 3),
            )
        else:
            self.audit.record(
                "key_status",
                **base,
                status=200,
                stored_key_count=result.stored_key_count,
                latency_ms=round(ms, 3),
            )
        return result

    def status(self, slave_sae_id: str | None = None) -> Status:
        peer = slave_sae_id or self.peer_sae_id
        return self._run("status", peer, {}, lambda: self.client.status(peer))

    def enc_keys(self, slave_sae_id: str | None = None, number=None, size=None, **kw) -> list[Key]:
        peer = slave_sae_id or self.peer_sae_id
        asked = {"number": number, "size": size, "method": kw.get("method", "POST")}
        return self._run(
            "enc_keys", peer, asked, lambda: self.client.enc_keys(peer, number, size, **kw)
        )

    def dec_keys(self, master_sae_id: str | None, key_ids, **kw) -> list[Key]:
        peer = master_sae_id or self.peer_sae_id
        ids = list(key_ids)
        asked = {"key_IDs": ids, "method": kw.get("method", "POST")}
        return self._run("dec_keys", peer, asked, lambda: self.client.dec_keys(peer, ids, **kw))

    def settings(self) -> dict:
        return {k: self.info[k] for k in ("base_url", "kme_id", "sae_id", "peer_sae_id")}

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"AuditedKME({self.role}: {self.client!r})"


def event_counts(folder: Path) -> dict | None:
    """What the run folder's audit trail holds, counted (for summary.json): events per kind,
    keys and bits delivered, refusals per HTTP status; None when there is no trail."""
    path = Path(folder) / AUDIT_FILE
    if not path.is_file():
        return None
    counts: Counter = Counter()
    refusals: Counter = Counter()
    keys = bits = bad = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1  # a line cut short (a killed worker): counted, not trusted
                continue
            kind = rec.get("kind", "?")
            counts[kind] += 1
            if kind == "key_delivery":
                keys += int(rec.get("number", 0))
                bits += sum(
                    int(rec.get("number", 0)) * s for s in rec.get("sizes", [])[:1]
                )  # one size per delivery: enc_keys asks one size
            elif kind == "key_refusal":
                refusals[str(rec.get("status"))] += 1
    return {
        "file": AUDIT_FILE,
        "counts": dict(counts),
        "keys_delivered": keys,
        "bits_delivered": bits,
        "refusals_by_status": dict(refusals),
        "unreadable_lines": bad,
    }
