"""`p9share conformance ADDR ...`: run the suite against a server."""

from __future__ import annotations

import argparse
import sys

from ..protocol.constants import Dialect
from .runner import SetupError, conforms, report_json, report_text, run

DIALECTS = {"9P2000.L": Dialect.P9P2000L, "9P2000.u": Dialect.P9P2000U, "9P2000": Dialect.P9P2000}


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "conformance", help="check a 9P server against docs/protocol.md, case by case"
    )
    p.add_argument("address", metavar="ADDR", help="tcp:HOST:PORT or unix:PATH of the server")
    p.add_argument("--aname", default="", help="attach name of a read-write export")
    p.add_argument("--ro-aname", default=None, metavar="NAME",
                   help="attach name of a read-only export of the same tree (enables §7.6 cases)")  # fmt: skip
    p.add_argument("--dialect", default="9P2000.L", choices=list(DIALECTS))
    p.add_argument("--only", metavar="PATTERN",
                   help="run only cases whose id or section matches (glob, or a substring of the "
                        "id, or a section such as §5.9)")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-': stdout)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    p.add_argument("--strict", action="store_true",
                   help="a MUST case that could not be checked (not applicable) fails the run "
                        "too (CI runs this way)")  # fmt: skip
    p.set_defaults(func=cmd_conformance)


def cmd_conformance(args: argparse.Namespace) -> int:
    """Exit status: 0 all MUST cases pass (with --strict: and none was left
    unchecked), 1 otherwise, 2 cannot run."""
    dialect = DIALECTS[args.dialect]
    try:
        results = run(args.address, dialect, aname=args.aname, ro_aname=args.ro_aname,
                      only=args.only, timeout=args.timeout)  # fmt: skip
    except SetupError as e:
        print(f"p9share conformance: error: {e}", file=sys.stderr)
        return 2
    if not results:
        print(f"p9share conformance: error: no {dialect.value} case matches {args.only!r}",
              file=sys.stderr)  # fmt: skip
        return 2
    where = {"address": args.address, "dialect": dialect.value, "strict": args.strict}
    if args.json == "-":
        sys.stdout.write(report_json(results, **where))
    else:
        sys.stdout.write(report_text(results, **where))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(report_json(results, **where))
    return 0 if conforms(results, strict=args.strict) else 1
