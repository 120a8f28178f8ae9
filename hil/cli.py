"""The hil command: run a plan, serve the emulator, inspect, import or monitor captures.

Also plans key rates, reports trends across runs and exports schemas.

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
    serve(
        ready_file=args.ready_file,
        parent_pid=args.parent_pid,
        seed=args.seed,
        ports=ports,
        sampling_threads=args.sampling_threads,
    )
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

    from hil.store import open_capture, repair_capture, writer_state

    if args.repair:  # the one step that lets other HDF5 tools open a killed writer's file
        try:
            done = repair_capture(args.file)
        except OSError as exc:  # FileNotFoundError included; messages name the file
            print(f"hil inspect --repair: {exc}", file=sys.stderr)
            return 2
        print(
            f"{args.file}: repaired ({', '.join(done)}): any HDF5 reader opens it now"
            if done
            else f"{args.file}: nothing to repair (any HDF5 reader opens it)"
        )
        return 0
    try:
        cap = open_capture(args.file)
    except (FileNotFoundError, OSError) as exc:
        print(f"hil inspect: {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        writer = writer_state(args.file)
    except OSError:  # a superblock this tool does not parse: no advice about the writer
        writer = None
    with cap:
        n = cap.n_tags
        counts = cap.counts()  # recorded by the writer at every flush
        if sum(counts.values()) != n:  # tags past the last recorded counts (a killed writer)
            acc = np.zeros(256, dtype=np.int64)
            for _, ch in cap.iter_chunks():
                acc += np.bincount(ch, minlength=256)
            counts = {int(c): int(acc[c]) for c in np.flatnonzero(acc)}
        labels = cap.channel_labels()
        dur = cap.duration_s
        bench = cap.bench_info()
        snap = cap.snapshot()
        info = {
            "file": str(args.file),
            "complete": cap.complete,
            "writer": writer,  # closed, running, died (needs --repair for other tools), unknown
            "duration_s": dur,
            "tags": n,
            "channels": {
                c: {
                    "label": labels.get(c, ""),
                    "counts": k,
                    "rate_hz": float(k / dur) if dur > 0 else None,
                }
                for c, k in sorted(counts.items())
            },
            "events": [{"time_s": t * 1e-12, "kind": k, "detail": d} for t, k, d in cap.events()],
            "bench": bench.get("bench_name") or snap.get("source"),
            "host": bench.get("host"),
            "start_time_utc": bench.get("start_time_utc"),
            "stop_time_utc": bench.get("stop_time_utc") or None,
            "qkd_hil_version": bench.get("qkd_hil_version"),
            "git_revision": bench.get("git_revision") or None,
            "provenance": cap.provenance(),
            "instruments": {r: e.get("idn") for r, e in snap.get("instruments", {}).items()},
            "settings": _snapshot_highlights(snap),
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    state = "complete" if info["complete"] else "INCOMPLETE (writer did not finish)"
    if writer == "running":
        state = "INCOMPLETE (still being written)"
    print(f"{info['file']}: {state}")
    if writer == "died":
        print(
            f"  written by a process that died: run `hil inspect --repair {args.file}` "
            "to let other HDF5 tools open it"
        )
    elif writer == "unknown":  # file locks unsupported: --repair would refuse in place
        print(
            "  left open for writing, and file locks cannot tell here whether its writer runs: "
            "copy it to a local disk and run `hil inspect --repair COPY`"
        )
    print(f"  duration {dur:.6g} s, {n} tags, bench {info['bench']}")
    print(
        f"  written {info['start_time_utc']} .. {info['stop_time_utc'] or '?'} on {info['host']}"
        f", qkd-hil {info['qkd_hil_version']} git {(info['git_revision'] or '-')[:12]}"
    )
    if info["provenance"].get("filename"):
        prov = info["provenance"]
        print(f"  converted from {prov['filename']} ({prov.get('software', '')})")
    for c, d in info["channels"].items():
        rate = f"{d['rate_hz']:.6g} Hz" if d["rate_hz"] is not None else "-"
        print(f"  channel {c:3d} {d['label']:>10s}: {d['counts']:12d} tags  {rate}")
    for role, idn in info["instruments"].items():
        print(f"  {role:11s} {idn}")
    for key, value in info["settings"].items():
        print(f"  {key} = {value}")
    for e in info["events"]:
        print(f"  event at {e['time_s']:.6f} s: {e['kind']} {e['detail']}")
    return 0


def _snapshot_highlights(snap: dict) -> dict:
    """The few settings that decide what a capture means (rates, loss, detector state)."""
    out = {}
    inst = snap.get("instruments", {})
    picks = {
        "source": ("clock_hz", "output_enabled", "intensities", "sync_divider"),
        "attenuator": ("attenuation_db", "wavelength_m"),
        "switch": ("position",),
    }
    for role, keys in picks.items():
        settings = inst.get(role, {}).get("settings") or {}
        for k in keys:
            if k in settings:
                out[f"{role}.{k}"] = settings[k]
    dets = inst.get("detectors", {}).get("settings") or {}
    for name, d in dets.items():
        if isinstance(d, dict) and "efficiency" in d:
            out[f"detectors.{name}"] = (
                f"efficiency {d['efficiency']}, dead time {d.get('dead_time_s')} s, "
                f"{d.get('temperature_c')} C"
            )
    for role, e in inst.items():
        if "broken" in e or "settings_error" in e:
            out[f"{role}.problem"] = e.get("broken") or e.get("settings_error")
    return out


def _cmd_import(args: argparse.Namespace) -> int:
    from hil.ptu import import_ptu

    if args.file.suffix.lower() != ".ptu":
        print(f"hil import: {args.file}: expected a PicoQuant .ptu file", file=sys.stderr)
        return 2
    try:
        out = import_ptu(args.file, args.output)
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"hil import: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from hil.monitor import LinkMonitor, Thresholds, follow_capture
    from hil.postprocess import LinkSettings
    from hil.store import open_capture

    try:
        with open_capture(args.file) as cap:
            src = cap.snapshot().get("instruments", {}).get("source", {}).get("settings", {})
    except (FileNotFoundError, OSError, KeyError) as exc:
        print(f"hil monitor: {args.file}: {exc}", file=sys.stderr)
        return 2
    sifter = None
    if args.source:
        from hil.instruments.source import QKDSource

        source = QKDSource(args.source, "source")
        link = LinkSettings.from_source(source)
        sifter = source.sift
    else:
        try:
            link = LinkSettings(
                float(src["clock_hz"]),
                int(src["sync_divider"]),
                tuple(src["intensities"]),
                tuple(src["probabilities"]),
                float(src["z_probability"]),
            )
        except KeyError as exc:
            print(
                f"hil monitor: {args.file}: the snapshot has no source setting {exc}; "
                "give --source RESOURCE",
                file=sys.stderr,
            )
            return 2
    th = Thresholds(
        down_rate_hz=args.down_rate_hz,
        abort_qber=args.abort_qber,
        degraded_qber=args.degraded_qber,
        key_rate_floor_bps=args.floor_bps,
    )
    mon = LinkMonitor(
        link,
        sifter,
        window_s=args.window,
        thresholds=th,
        on_window=lambda w: print(w.line(), flush=True),
    )
    if sifter is None:
        print("(no --source: rates and sync only; QBER and key need the source's answers)")
    from hil.telemetry import cli as telemetry_cli

    error = telemetry_cli.start_monitor_telemetry(args)
    if error:
        print(f"hil monitor: {error}", file=sys.stderr)
        return 2
    try:
        for ts, ch in follow_capture(args.file, follow=args.follow):
            mon.feed(ts, ch)
    except KeyboardInterrupt:
        pass
    finally:
        mon.flush()
        telemetry_cli.stop_monitor_telemetry()
    for t in mon.transitions:
        old = t.old.value if t.old else "-"
        print(f"transition at {t.time_s:.3f} s: {old} -> {t.new.value} ({t.reason})")
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


def _cmd_drivers(args: argparse.Namespace) -> int:
    from hil.config import ConfigError
    from hil.roles import DEFAULT_DRIVERS, DRIVERS, driver_roles

    for name in sorted(DRIVERS):
        try:
            roles = ", ".join(driver_roles(name)) or "(no role's interface)"
        except ConfigError as exc:  # an installed package whose driver does not import
            roles = f"(broken: {exc})"
        default = [r for r, d in DEFAULT_DRIVERS.items() if d == name]
        extra = f"  [default for {', '.join(default)}]" if default else ""
        print(f"{name:<22} {roles}  ({DRIVERS[name]}){extra}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hil", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    emu = sub.add_parser("emulator", help="the emulated bench")
    emu_sub = emu.add_subparsers(dest="emulator_command", required=True)
    serve = emu_sub.add_parser("serve", help="serve the emulated instruments on loopback")
    serve.add_argument("--ready-file", help="write the resource strings here (JSON) when ready")
    serve.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    serve.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the emulated channel (not of the source's pattern, which is secret)",
    )
    serve.add_argument(
        "--sampling-threads",
        type=int,
        choices=(1, 2),
        default=None,
        help="threads sampling the link's clicks (default: 2 with two cores or more; same tags)",
    )
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
    insp.add_argument(
        "--repair",
        action="store_true",
        help="clear the consistency flags a killed writer left, so that h5py, phconvert and "
        "HDFView open the file (refused while a capture writes it)",
    )
    insp.set_defaults(func=_cmd_inspect)

    imp = sub.add_parser("import", help="convert a PicoQuant PTU file (T2/T3) into a capture")
    imp.add_argument("file", type=Path, help="the .ptu file")
    imp.add_argument("-o", "--output", type=Path, help="capture file (default: FILE with .h5)")
    imp.set_defaults(func=_cmd_import)

    mon = sub.add_parser("monitor", help="link states window by window over a capture file")
    mon.add_argument("file", type=Path)
    mon.add_argument("--follow", action="store_true", help="keep reading a growing capture")
    mon.add_argument("--window", type=float, default=0.25, help="window length in s")
    mon.add_argument("--source", help="VISA resource of the source, for QBER and key")
    mon.add_argument("--down-rate-hz", type=float, default=20e3)
    mon.add_argument("--abort-qber", type=float, default=0.11)
    mon.add_argument("--degraded-qber", type=float, default=0.05)
    mon.add_argument("--floor-bps", type=float, default=0.0, help="key-rate floor (bit/s)")
    from hil.telemetry import cli as telemetry_cli

    telemetry_cli.add_monitor_options(mon)  # --metrics, --link, --events, --syslog
    mon.set_defaults(func=_cmd_monitor)

    drv = sub.add_parser("drivers", help="installed drivers and the roles each serves")
    drv.set_defaults(func=_cmd_drivers)

    sch = sub.add_parser("schema", help="print the JSON Schema of bench or criteria files")
    sch.add_argument("kind", choices=("bench", "criteria"))
    sch.set_defaults(func=_cmd_schema)

    from hil import cli_keyrate

    cli_keyrate.register(sub)
    from hil import trend

    trend.register(sub)  # hil report RESULTS_DIR: trend across runs
    telemetry_cli.register(sub)  # hil audit verify FILE
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
