"""``hil audit verify FILE``: check an event log's hash chain (hil.telemetry.events)."""

from __future__ import annotations

import argparse
import sys


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from .events import verify

    try:
        ok, text = verify(args.file)
    except OSError as exc:
        print(f"hil audit verify: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def register(sub) -> None:
    audit = sub.add_parser("audit", help="check a run's tamper-evident event log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    ver = audit_sub.add_parser(
        "verify",
        help="check the hash chain of an event log (events.jsonl); exit 1 naming the first "
        "bad line",
    )
    ver.add_argument("file", help="the event log, e.g. results/<run>/events.jsonl")
    ver.set_defaults(func=_cmd_audit_verify)


def add_monitor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve the link's metrics (OpenMetrics) for Prometheus here while monitoring",
    )
    parser.add_argument("--link", help="the link label of the metrics (default: the file's stem)")
    parser.add_argument(
        "--events", metavar="FILE", help="write state transitions to this event log (JSON lines)"
    )
    parser.add_argument(
        "--syslog",
        metavar="[udp://|tcp://]HOST:PORT",
        help="also send the event log's records as RFC 5424 syslog to this collector",
    )


def start_monitor_telemetry(args: argparse.Namespace) -> str | None:
    """Open what ``hil monitor``'s telemetry options ask for; returns a one-line error or None."""
    from . import events

    if args.syslog and not args.events:
        return "--syslog needs --events FILE (the chained log the collector receives)"
    if args.events:
        try:
            events.open_log(args.events, args.syslog)
        except (OSError, ValueError) as exc:
            return f"--events {args.events}: {exc}"
    if args.metrics:
        from . import metrics

        try:
            tel = metrics.start(args.metrics, link=args.link or args.file.stem)
        except (OSError, ValueError) as exc:
            events.close_log()
            return f"--metrics {args.metrics}: {exc}"
        host = args.metrics.rpartition(":")[0] or "127.0.0.1"
        print(f"metrics: http://{host}:{tel.port}/metrics", flush=True)
    return None


def stop_monitor_telemetry() -> None:
    from . import events, metrics

    metrics.stop()
    events.close_log()
