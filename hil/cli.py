"""The ``hil`` command: run a plan, serve the emulator, inspect or import a capture, plan key
rates, export schemas.

Every subcommand returns an exit status; errors a user can fix are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_emulator_serve(args: argparse.Namespace) -> int:
    from hil.emulator.server import serve

    ports = {}
    for item in args.port or []:
        role, _, port = item.partition("=")
        if not port.isdigit():
            print(f"hil emulator serve: --port expects ROLE=PORT, got {item!r}", file=sys.stderr)
            return 2
        ports[role] = int(port)
    serve(ready_file=args.ready_file, parent_pid=args.parent_pid, seed=args.seed, ports=ports)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import pytest

    argv = [args.plan]
    if args.bench:
        argv += ["--bench", args.bench]
    if args.results:
        argv += ["--results", args.results]
    return int(pytest.main(argv + list(args.pytest_args)))


def _cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from hil.store import open_capture

    try:
        cap = open_capture(args.file)
    except (FileNotFoundError, OSError) as exc:
        print(f"hil inspect: {args.file}: {exc}", file=sys.stderr)
        return 2
    with cap:
        n = cap.n_tags
        counts = np.zeros(256, dtype=np.int64)
        for _, ch in cap.iter_chunks():
            counts += np.bincount(ch, minlength=256)
        dur = cap.duration_s
        info = {
            "file": str(args.file),
            "complete": cap.complete,
            "duration_s": dur,
            "tags": n,
            "channels": {
                int(c): {
                    "counts": int(counts[c]),
                    "rate_hz": float(counts[c] / dur) if dur > 0 else None,
                }
                for c in np.flatnonzero(counts)
            },
            "events": [{"time_s": t * 1e-12, "kind": k, "detail": d} for t, k, d in cap.events()],
        }
        snap = cap.snapshot()
        info["bench"] = snap.get("bench_name")
        info["instruments"] = {r: e.get("idn") for r, e in snap.get("instruments", {}).items()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    state = "complete" if info["complete"] else "INCOMPLETE (writer did not finish)"
    print(f"{info['file']}: {state}")
    print(f"  duration {dur:.6g} s, {n} tags, bench {info['bench']}")
    for c, d in info["channels"].items():
        rate = f"{d['rate_hz']:.6g} Hz" if d["rate_hz"] is not None else "-"
        print(f"  channel {c:3d}: {d['counts']:12d} tags  {rate}")
    for role, idn in info["instruments"].items():
        print(f"  {role:11s} {idn}")
    for e in info["events"]:
        print(f"  event at {e['time_s']:.6f} s: {e['kind']} {e['detail']}")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    if args.kind == "bench":
        from hil.config import bench_json_schema

        schema = bench_json_schema()
    else:
        from hil.criteria import CriteriaFile

        schema = CriteriaFile.model_json_schema()
    print(json.dumps(schema, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hil", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    emu = sub.add_parser("emulator", help="the emulated bench")
    emu_sub = emu.add_subparsers(dest="emulator_command", required=True)
    serve = emu_sub.add_parser("serve", help="serve the emulated instruments on loopback")
    serve.add_argument("--ready-file", help="write the resource strings here (JSON) when ready")
    serve.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    serve.add_argument("--seed", type=int, default=None, help="seed of the emulated link")
    serve.add_argument(
        "--port",
        action="append",
        metavar="ROLE=PORT",
        help="fixed port for a role (default: free ports)",
    )
    serve.set_defaults(func=_cmd_emulator_serve)

    run = sub.add_parser("run", help="run a test plan (a thin wrapper over pytest)")
    run.add_argument("plan", help="test plan folder or file, e.g. testplans/pilot")
    run.add_argument("--bench", help="bench file or shipped bench name")
    run.add_argument("--results", help="results folder")
    run.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest")
    run.set_defaults(func=_cmd_run)

    insp = sub.add_parser("inspect", help="summarise a capture file")
    insp.add_argument("file", type=Path)
    insp.add_argument("--json", action="store_true", help="print JSON")
    insp.set_defaults(func=_cmd_inspect)

    sch = sub.add_parser("schema", help="print the JSON Schema of bench or criteria files")
    sch.add_argument("kind", choices=("bench", "criteria"))
    sch.set_defaults(func=_cmd_schema)

    from hil import cli_keyrate

    cli_keyrate.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
