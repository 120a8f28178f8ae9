"""The ``hil keyrate`` subcommand: expected secure key rate of a described link vs distance/loss.

Prints a table (or JSON) of the asymptotic and finite-key rates (per pulse and bits/s) from
:mod:`hil.analysis.planning`. The lead wires it in with ``cli_keyrate.register(subparsers)``;
the parser's ``func`` default is the handler, which returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields

import numpy as np

from hil.analysis.planning import LinkModel, rate_table

_DEFAULT = LinkModel()
#: 1-decoy defaults: the optimiser's choice (rounded) for 1e8-bit blocks at 10 dB on the
#: default receiver.
ONE_DECOY_MU = (0.37, 0.09)
ONE_DECOY_P = (0.77, 0.23)


def parse_range(text: str) -> np.ndarray:
    """Parse ``START:STOP:STEP`` (stop included) or a single value into an array."""
    parts = text.split(":")
    try:
        values = [float(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START:STOP:STEP or a number, got {text!r}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"range values must be finite, got {text!r}")
    if len(values) == 1:
        start = stop = values[0]
        step = 1.0
    elif len(values) == 3:
        start, stop, step = values
    else:
        raise argparse.ArgumentTypeError(f"expected START:STOP:STEP or a number, got {text!r}")
    if step <= 0 or stop < start or start < 0:
        raise argparse.ArgumentTypeError(f"need 0 <= START <= STOP and STEP > 0, got {text!r}")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n > 10000:
        raise argparse.ArgumentTypeError(f"{text!r} gives {n} points; at most 10000")
    return start + step * np.arange(n)


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``keyrate`` parser to an argparse subparsers object and return it."""
    p = subparsers.add_parser(
        "keyrate",
        help="expected secure key rate of a described link vs distance or loss",
        description=(
            "Expected key rate (asymptotic and finite-key) of a decoy-state BB84 link "
            "described by the options; defaults describe an illustrative metro pilot "
            "(see hil.analysis.planning.LinkModel)."
        ),
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--distance-km",
        type=parse_range,
        metavar="START:STOP:STEP",
        help="fiber lengths in km (default 0:150:10)",
    )
    where.add_argument(
        "--loss-db",
        type=parse_range,
        metavar="START:STOP:STEP",
        help="channel losses in dB instead of distances",
    )
    p.add_argument(
        "--block-size",
        type=_positive,
        default=1e8,
        help="key-basis detections per block for the finite-key rate (default 1e8)",
    )
    p.add_argument(
        "--protocol",
        choices=("three-intensity", "one-decoy"),
        default="three-intensity",
        help="three intensities (Lim et al. 2014) or 1-decoy (Rusca et al. 2018)",
    )
    p.add_argument(
        "--optimise",
        action="store_true",
        help="optimise intensities, probabilities and basis bias at every point",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d = _DEFAULT
    p.add_argument(
        "--mu",
        type=float,
        nargs="+",
        metavar="MU",
        help=f"mean photon numbers, strongest first (default {d.mu})",
    )
    p.add_argument(
        "--p-mu",
        type=float,
        nargs="+",
        metavar="P",
        help=f"their probabilities, summing to 1 (default {d.p_mu})",
    )
    p.add_argument("--q-z", type=float, default=d.q_z, help="key-basis (Z) probability")
    p.add_argument(
        "--eta-bob",
        type=float,
        default=d.eta_bob,
        help="detector efficiency times Bob's transmission",
    )
    p.add_argument(
        "--dark-count",
        type=float,
        default=d.p_dc,
        help="dark-count probability per gate per detector",
    )
    p.add_argument("--afterpulse", type=float, default=d.p_ap, help="afterpulse probability")
    p.add_argument("--misalignment", type=float, default=d.e_mis, help="optical error probability")
    p.add_argument(
        "--alpha-db-km", type=float, default=d.alpha_db_per_km, help="fiber attenuation in dB/km"
    )
    p.add_argument("--clock-hz", type=_positive, default=d.clock_hz, help="pulse rate in Hz")
    p.add_argument(
        "--dead-time-s", type=float, default=d.dead_time_s, help="detector dead time in s"
    )
    p.add_argument("--f-ec", type=float, default=d.f_ec, help="error-correction inefficiency")
    p.add_argument("--eps-sec", type=float, default=d.eps_sec, help="secrecy parameter")
    p.add_argument("--eps-cor", type=float, default=d.eps_cor, help="correctness parameter")
    p.set_defaults(func=run_keyrate)
    return p


def link_from_args(args) -> LinkModel:
    """Build the LinkModel the options describe (raises ValueError naming the bad option)."""
    one = args.protocol == "one-decoy"
    mu = tuple(args.mu) if args.mu else (ONE_DECOY_MU if one else _DEFAULT.mu)
    p_mu = tuple(args.p_mu) if args.p_mu else (ONE_DECOY_P if one else _DEFAULT.p_mu)
    if len(mu) != (2 if one else 3):
        raise ValueError(f"--mu needs {2 if one else 3} values for --protocol {args.protocol}")
    if len(p_mu) != len(mu):
        raise ValueError(f"--p-mu needs {len(mu)} values, one per --mu")
    if not 0 < args.eps_sec < 1 or not 0 < args.eps_cor < 1:
        raise ValueError("--eps-sec and --eps-cor must be in (0, 1)")
    if args.f_ec < 1:
        raise ValueError(f"--f-ec is an inefficiency >= 1, got {args.f_ec}")
    return LinkModel(
        mu=mu,
        p_mu=p_mu,
        q_z=args.q_z,
        eta_bob=args.eta_bob,
        p_dc=args.dark_count,
        p_ap=args.afterpulse,
        e_mis=args.misalignment,
        alpha_db_per_km=args.alpha_db_km,
        clock_hz=args.clock_hz,
        dead_time_s=args.dead_time_s,
        f_ec=args.f_ec,
        eps_sec=args.eps_sec,
        eps_cor=args.eps_cor,
    )


def _format_table(link: LinkModel, rows, block_size) -> str:
    head = (
        f"# {link.protocol} link: mu={link.mu} p_mu={link.p_mu} q_z={link.q_z} "
        f"eta_bob={link.eta_bob} p_dc={link.p_dc} p_ap={link.p_ap} e_mis={link.e_mis} "
        f"alpha={link.alpha_db_per_km} dB/km clock={link.clock_hz:g} Hz f_ec={link.f_ec} "
        f"block={block_size:g}"
    )
    cols = (
        f"{'km':>7} {'dB':>6} {'asym/pulse':>11} {'asym b/s':>11} {'finite/pulse':>12} "
        f"{'finite b/s':>11}"
    )
    lines = [head, cols]
    for r in rows:
        km = r["distance_km"]
        lines.append(
            f"{(f'{km:.1f}' if km is not None else '-'):>7} {r['loss_db']:6.1f} "
            f"{r['asymptotic_per_pulse']:11.4g} {r['asymptotic_bps']:11.4g} "
            f"{r['finite_per_pulse']:12.4g} {r['finite_bps']:11.4g}"
        )
    return "\n".join(lines)


def run_keyrate(args, out=None) -> int:
    """Handle ``hil keyrate``: print the table or JSON; return the exit status."""
    out = out or sys.stdout
    try:
        link = link_from_args(args)
    except ValueError as exc:
        print(f"hil keyrate: error: {exc}", file=sys.stderr)
        return 2
    if args.loss_db is not None:
        losses = args.loss_db
    else:
        km = args.distance_km if args.distance_km is not None else parse_range("0:150:10")
        losses = link.loss_db(km)
    rows = rate_table(link, losses, block_size=args.block_size, optimise=args.optimise)
    if args.json:
        doc = {
            "link": {f.name: getattr(link, f.name) for f in fields(link)},
            "protocol": link.protocol,
            "block_size": args.block_size,
            "optimised": bool(args.optimise),
            "rows": rows,
        }
        print(json.dumps(doc, indent=2), file=out)
    else:
        print(_format_table(link, rows, args.block_size), file=out)
    return 0


def main(argv=None) -> int:
    """Run ``keyrate`` standalone (the lead's ``hil`` command wires :func:`register`)."""
    parser = argparse.ArgumentParser(prog="hil")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
