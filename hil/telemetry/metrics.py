"""Link metrics for Prometheus (OpenMetrics), through ``prometheus_client``.

One :class:`LinkTelemetry` per process holds the metric families in its own registry and is fed
three ways, none of which changes what it watches:

- every :class:`hil.monitor.LinkMonitor` window (``hil.monitor.WINDOW_OBSERVERS``): link state,
  key-rate estimate, QBER per basis, count rate per detector, sync status and residual;
- the event log's listeners (``hil.telemetry.events.add_listener``): verdicts, captures that
  lost data, bench errors, dark counts, key-plane events of ``hil.keys`` (``key_delivery``,
  ``key_status``);
- a poller thread over the open bench (``watch_bench``): detector temperatures, set points and
  dark-count rates, one SCPI round trip per instrument, and each KME's stored keys, every
  ``poll_s``; the tagger is never polled (its connection streams tags during a capture), its
  round trip is the one measured when the bench opened.

Names follow the Prometheus conventions: base units in the name, ``_total`` for counters,
labels ``link``, ``detector`` (1..4: H, V, D, A), ``basis`` (Z, X), ``instrument`` (role).
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client import Enum as StateSet

from ..store import count_channels
from . import events

log = logging.getLogger("hil.telemetry")

DETECTORS = (1, 2, 3, 4)  # tagger channels of H, V, D, A (hil.postprocess.DETECTOR_CHANNELS)
STATES = ("UP", "DEGRADED", "DOWN", "ABORTED")
# bench poll period: temperatures drift over seconds, and each poll costs ~2 ms of CPU in SCPI
# round trips (benchmarks/bench_telemetry.py)
POLL_S = 5.0


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` or ``PORT`` alone: loopback) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9108")
    return (host.strip("[]") or "127.0.0.1") if sep else "127.0.0.1", int(port)


class LinkTelemetry:
    """The metric families of one link (see the README's "Watching a link" for the table)."""

    def __init__(self, link: str = "qkd-link", registry: CollectorRegistry | None = None):
        self.link = link
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        L = ["link"]
        self.state = StateSet(
            "qkd_link_state", "Link state of the last monitor window", L, states=list(STATES),
            registry=r,
        )  # fmt: skip
        self.up = Gauge(
            "qkd_link_up", "1 while the link can make key (UP or DEGRADED), else 0", L, registry=r
        )
        self.key_rate = Gauge(
            "qkd_secret_key_rate_estimate_bits_per_second",
            "Asymptotic secret-key-rate estimate of the last window (two-decoy, GLLP)",
            L,
            registry=r,
        )
        self.qber = Gauge(
            "qkd_qber_ratio", "Quantum bit error ratio of the last window", L + ["basis"],
            registry=r,
        )  # fmt: skip
        self.count_rate = Gauge(
            "qkd_detector_count_rate_hertz", "Detection rate per detector, last window",
            L + ["detector"], registry=r,
        )  # fmt: skip
        self.temperature = Gauge(
            "qkd_detector_temperature_celsius", "Detector temperature (instrument reading)",
            L + ["detector"], registry=r,
        )  # fmt: skip
        self.setpoint = Gauge(
            "qkd_detector_temperature_setpoint_celsius",
            "Detector temperature setpoint (instrument reading)",
            L + ["detector"],
            registry=r,
        )
        self.dark = Gauge(
            "qkd_detector_dark_count_rate_hertz",
            "Dark count rate per detector, last dark measurement (source off, shutter closed)",
            L + ["detector"],
            registry=r,
        )
        self.in_sync = Gauge(
            "qkd_sync_locked", "1 while the receiver's clock recovery is locked to the sync", L,
            registry=r,
        )  # fmt: skip
        self.sync_rate = Gauge(
            "qkd_sync_rate_hertz", "Sync tag rate of the last window", L, registry=r
        )
        self.sync_residual = Gauge(
            "qkd_sync_residual_seconds",
            "Largest |residual| of an accepted sync tag to the recovered clock, last window",
            L,
            registry=r,
        )
        self.rtt = Gauge(
            "qkd_scpi_round_trip_seconds", "Control-plane round trip of one query",
            L + ["instrument"], registry=r,
        )  # fmt: skip
        self.data_lost = Counter(
            "qkd_capture_data_lost", "Captures in which the tagger reported lost tags", L,
            registry=r,
        )  # fmt: skip
        self.captures = Counter("qkd_captures", "Captures finished", L, registry=r)
        self.windows = Counter(
            "qkd_monitor_windows", "Monitor windows closed, by state", L + ["state"], registry=r
        )
        self.transitions = Counter(
            "qkd_link_state_transitions", "Link state changes, by new state", L + ["state"],
            registry=r,
        )  # fmt: skip
        self.link_time = Gauge(
            "qkd_link_time_seconds", "Link time at the end of the last monitor window", L,
            registry=r,
        )  # fmt: skip
        self.verdicts = Counter(
            "qkd_verdicts", "Criterion verdicts, by outcome", L + ["outcome"], registry=r
        )
        self.bench_errors = Counter("qkd_bench_errors", "Bench errors", L, registry=r)
        # key plane (feature-detected: present once a key event arrives)
        self.stored_keys = Gauge(
            "qkd_kme_stored_keys", "Keys a KME holds for its peer (ETSI GS QKD 014 status)",
            L + ["kme"], registry=r,
        )  # fmt: skip
        self.delivered = Counter(
            "qkd_delivered_key_bits", "Key bits delivered to SAEs", L, registry=r
        )
        self.delivered_rate = Gauge(
            "qkd_delivered_key_rate_bits_per_second",
            "Key bits delivered to SAEs per second, over the last poll interval",
            L,
            registry=r,
        )
        self._rate_mark: tuple[float, float] | None = None  # (monotonic s, delivered bits)
        self._delivered_bits = 0.0  # the counter's value, kept here for the rate
        for s in STATES:  # the counters exist (at 0) from the start: rate() needs a first sample
            self.windows.labels(link, s)
            self.transitions.labels(link, s)
        for o in ("PASS", "MARGINAL", "FAIL"):
            self.verdicts.labels(link, o)
        self.data_lost.labels(link)
        self.captures.labels(link)
        self.bench_errors.labels(link)
        self.delivered.labels(link)
        self._children: dict | None = None
        self._bench = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.server = None
        self.port: int | None = None

    # -- feeds -----------------------------------------------------------------------------
    def _window_children(self) -> dict:
        """The label children a window sets, made on the first window (not before: a gauge
        that reads 0 before anything was measured would be a false value)."""
        link = self.link
        c = {
            "state": self.state.labels(link),
            "up": self.up.labels(link),
            "key_rate": self.key_rate.labels(link),
            "qber_z": self.qber.labels(link, "Z"),
            "qber_x": self.qber.labels(link, "X"),
            "in_sync": self.in_sync.labels(link),
            "sync_rate": self.sync_rate.labels(link),
            "residual": self.sync_residual.labels(link),
            "link_time": self.link_time.labels(link),
        }
        for d in DETECTORS:
            c[d] = self.count_rate.labels(link, str(d))
        for st in STATES:
            c["windows", st] = self.windows.labels(link, st)
            c["transitions", st] = self.transitions.labels(link, st)
        return c

    def observe_window(self, monitor, w, channels: np.ndarray) -> None:
        """A monitor window closed (``hil.monitor.WINDOW_OBSERVERS``); never raises."""
        try:
            c = self._children or self._window_children()
            self._children = c
            dur = w.t_stop_s - w.t_start_s
            state = w.state.value
            c["state"].state(state)
            c["up"].set(1.0 if state in ("UP", "DEGRADED") else 0.0)
            rate = w.key_rate_estimate_bps
            c["key_rate"].set(rate if math.isfinite(rate) else 0.0)
            c["qber_z"].set(w.qber_z)
            c["qber_x"].set(w.qber_x)
            if dur > 0:
                # the capture writer's numba counter (~8x cheaper than np.bincount on uint8)
                counts = count_channels(channels) if len(channels) else np.zeros(8, np.int64)
                for d in DETECTORS:
                    c[d].set(counts[d] / dur)
            c["in_sync"].set(1.0 if w.in_sync else 0.0)
            c["sync_rate"].set(w.sync_rate_hz)
            c["residual"].set(getattr(w, "sync_residual_s", math.nan))
            c["windows", state].inc()
            c["link_time"].set(w.t_stop_s)
            t = monitor.transitions[-1] if monitor.transitions else None
            if t is not None and t.time_s == w.t_stop_s:
                c["transitions", state].inc()
        except Exception as e:  # noqa: BLE001 - telemetry must not break the monitor
            log.warning("metrics: monitor window not recorded: %s", e)

    def observe_event(self, record: dict) -> None:
        """An event-log record (``events.add_listener``); never raises."""
        try:
            kind, link = record.get("kind"), self.link
            if kind == "verdict":
                self.verdicts.labels(link, str(record.get("outcome", "?"))).inc()
            elif kind == "capture":
                self.captures.labels(link).inc()
                if record.get("data_lost"):
                    self.data_lost.labels(link).inc()
            elif kind == "bench_error":
                self.bench_errors.labels(link).inc()
            elif kind == "dark_counts":
                for d, v in zip(DETECTORS, record.get("rates_hz") or (), strict=False):
                    self.dark.labels(link, str(d)).set(float(v))
            elif kind == "key_status" and record.get("stored_key_count") is not None:
                kme = str(record.get("kme", "kme"))
                self.stored_keys.labels(link, kme).set(float(record["stored_key_count"]))
            elif kind == "key_delivery":
                # hil.keys records the distinct key sizes of a delivery: exact when there is one
                # size (the usual case), a lower bound (smallest size) otherwise
                sizes = record.get("sizes") or [0]
                bits = float(record.get("number") or 0) * float(min(sizes))
                self.delivered.labels(link).inc(bits)
                self._delivered_bits += bits
        except Exception as e:  # noqa: BLE001
            log.warning("metrics: event not recorded: %s", e)

    def poll_bench(self, bench) -> None:
        """Detector temperatures and a round trip per instrument (not the tagger's)."""
        link = self.link
        skip = set(getattr(bench, "broken", {})) | set(getattr(bench, "unreachable", {}))
        for role, inst in list(bench.instruments.items()):
            if role in skip or self._stop.is_set():
                continue
            query = getattr(inst, "round_trip_query", None)
            if role == "tagger" or query is None or not hasattr(inst, "query"):
                continue
            try:
                t0 = time.perf_counter()
                inst.query(query)
                self.rtt.labels(link, role).set(time.perf_counter() - t0)
                if role == "detectors":
                    for ch in inst.channels:
                        d = str(ch.channel)
                        self.temperature.labels(link, d).set(ch.temperature_c)
                        self.setpoint.labels(link, d).set(ch.temperature_setpoint_c)
                        # the detector unit's own dark-count estimate at its temperature
                        # (DET<n>:DARK?, this project's command set); units without it skip
                        dark = inst.query(f"DET{ch.channel}:DARK?")
                        self.dark.labels(link, d).set(float(dark))
            except Exception as e:  # noqa: BLE001 - an instrument error is reported by its test
                log.debug("metrics: poll of %s failed: %s", role, e)

    def poll_kmes(self, bench) -> None:
        """Stored keys per KME role (ETSI GS QKD 014 Get status), when the bench has the key
        plane; through the plain client, so that polls stay out of the key audit."""
        kmes = list(getattr(bench, "kmes", {}).items())
        if kmes:  # delivered key rate over the last poll interval (0 when none was delivered)
            now, bits = time.monotonic(), self._delivered_bits
            if self._rate_mark is not None and now > self._rate_mark[0]:
                rate = (bits - self._rate_mark[1]) / (now - self._rate_mark[0])
                self.delivered_rate.labels(self.link).set(rate)
            self._rate_mark = (now, bits)
        for role, kme in kmes:
            if self._stop.is_set():
                return
            try:
                client = getattr(kme, "client", kme)
                status = client.status(kme.peer_sae_id)
                self.stored_keys.labels(self.link, role).set(float(status.stored_key_count))
            except Exception as e:  # noqa: BLE001 - the key plane's tests report its errors
                log.debug("metrics: status of %s failed: %s", role, e)

    def watch_bench(self, bench, poll_s: float = POLL_S) -> None:
        """Poll ``bench`` every ``poll_s`` in a daemon thread until :meth:`unwatch_bench`."""
        self.unwatch_bench()
        for role, s in getattr(bench, "latency_s", {}).items():  # measured when it opened
            self.rtt.labels(self.link, role).set(s)
        self._bench = bench
        self._stop = threading.Event()
        self._rate_mark = (time.monotonic(), self._delivered_bits)  # the first poll has a rate

        def loop() -> None:
            while not self._stop.is_set():
                self.poll_bench(bench)
                self.poll_kmes(bench)
                self._stop.wait(poll_s)

        self._poller = threading.Thread(target=loop, name="hil-metrics-poll", daemon=True)
        self._poller.start()

    def unwatch_bench(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout_s)
            self._poller = None
        self._bench = None

    # -- serving ---------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on ``host:port`` (port 0: a free one); returns the port. Prometheus
        asks for OpenMetrics in its Accept header and gets it; plain clients get the text
        format 0.0.4."""
        self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = self.server.server_port
        return self.port

    def close(self) -> None:
        self.unwatch_bench()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


_active: LinkTelemetry | None = None


def start(address: str, link: str = "qkd-link") -> LinkTelemetry:
    """Serve metrics at ``HOST:PORT`` and feed them from every monitor and event of this
    process; returns the telemetry (its ``port`` is the bound one)."""
    global _active
    from hil import monitor

    host, port = parse_address(address)
    tel = LinkTelemetry(link)
    tel.serve(host, port)
    monitor.WINDOW_OBSERVERS.append(tel.observe_window)
    events.add_listener(tel.observe_event)
    _active = tel
    return tel


def stop() -> None:
    global _active
    from hil import monitor

    tel, _active = _active, None
    if tel is None:
        return
    if tel.observe_window in monitor.WINDOW_OBSERVERS:
        monitor.WINDOW_OBSERVERS.remove(tel.observe_window)
    events.remove_listener(tel.observe_event)
    tel.close()


def active() -> LinkTelemetry | None:
    return _active
