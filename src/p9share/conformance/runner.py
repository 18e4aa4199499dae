"""Running the cases against a server, and the reports."""

from __future__ import annotations

import errno
import fnmatch
import json
import traceback
from dataclasses import asdict, dataclass

from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.constants import Dialect
from .context import ROOT_FID, Conn, Context, is_error, scratch_name
from .registry import MUST, Case, Failure, NotApplicable, all_cases, section_key

PASS = "pass"
FAIL = "fail"
NA = "n/a"


class SetupError(Exception):
    """The suite could not start: no connection, no attach, no scratch directory."""


@dataclass
class Result:
    id: str
    section: str
    level: str
    title: str
    status: str  # pass / fail / n/a
    observed: str


def select(pattern: str | None) -> list[Case]:
    """The cases whose id or section matches the glob pattern (a plain word
    matches as a substring), every case when there is none."""
    return [k for k in all_cases() if not pattern or _matches(pattern, k)]


def _matches(pattern: str, k: Case) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(k.id, pattern) or fnmatch.fnmatchcase(k.section, pattern)
    return pattern in k.id or k.section == pattern or k.section.startswith(pattern + ".")


def run(
    address: str,
    dialect: Dialect = Dialect.P9P2000L,
    *,
    aname: str = "",
    ro_aname: str | None = None,
    only: str | None = None,
    timeout: float = 5.0,
) -> list[Result]:
    """Run the selected cases of the dialect in a fresh scratch directory
    under the attach root, which is removed again at the end."""
    cases = [k for k in select(only) if dialect in k.dialects]
    if not cases:
        return []
    scratch = scratch_name()
    xattrs = _setup(address, dialect, aname, scratch, timeout)
    results: list[Result] = []
    try:
        for k in cases:
            results.append(
                run_case(k, address, dialect, aname, ro_aname, scratch, timeout, xattrs=xattrs)
            )
    finally:
        _cleanup(address, dialect, aname, scratch, timeout)
    return results


def run_case(
    k: Case,
    address: str,
    dialect: Dialect,
    aname: str,
    ro_aname: str | None,
    scratch: str,
    timeout: float,
    *,
    xattrs: bool | None = None,
) -> Result:
    def result(status: str, observed: str) -> Result:
        return Result(k.id, k.section, k.level, k.title, status, observed)

    ctx = Context(
        address, dialect, aname, scratch, k.id, ro_aname=ro_aname, timeout=timeout, xattrs=xattrs
    )
    try:
        observed = k.func(ctx)
        return result(PASS, observed or (ctx.notes[-1] if ctx.notes else "ok"))
    except NotApplicable as e:
        return result(NA, str(e))
    except Failure as e:
        return result(FAIL, str(e))
    except TimeoutError:
        last = f" after {ctx.notes[-1]}" if ctx.notes else ""
        return result(FAIL, f"no reply within {timeout:g}s{last}")
    except (ConnectionError, OSError) as e:
        last = f" after {ctx.notes[-1]}" if ctx.notes else ""
        return result(FAIL, f"connection failed: {e}{last}")
    except Exception as e:  # a reply the suite cannot even decode is a failure too
        where = traceback.extract_tb(e.__traceback__)[-1]
        return result(FAIL, f"unexpected {type(e).__name__}: {e} (at {where.name}:{where.lineno})")
    finally:
        ctx.close()


def _root(address: str, dialect: Dialect, aname: str, timeout: float) -> Conn:
    ctx = Context(address, dialect, aname, "", "setup", timeout=timeout)
    try:
        return ctx.conn()
    except NotApplicable as e:
        raise SetupError(str(e)) from None
    except Failure as e:
        raise SetupError(f"cannot attach to {aname!r}: {e}") from None
    except OSError as e:
        raise SetupError(f"cannot connect to {address}: {e}") from None


def _setup(address: str, dialect: Dialect, aname: str, scratch: str, timeout: float) -> bool | None:
    """Make the scratch directory; under .L, probe once whether the export
    has user xattrs (None: not a question in this dialect)."""
    conn = _root(address, dialect, aname, timeout)
    try:
        try:
            conn.mkdir(ROOT_FID, scratch, 0o777)
        except Failure as e:
            raise SetupError(f"cannot create the scratch directory {scratch!r}: {e}") from None
        try:
            return _probe_xattrs(conn, scratch) if conn.dotl else None
        except Failure as e:
            raise SetupError(f"cannot create a file in {scratch!r}: {e}") from None
    finally:
        conn.rc.close()


def _probe_xattrs(conn: Conn, scratch: str) -> bool:
    """Whether a user xattr can be set on a file of the export: False only
    for EOPNOTSUPP (§5.26: the filesystem has none); any other refusal is
    left to the cases to report."""
    d = conn.walk(ROOT_FID, scratch)
    conn.create(d, "xattr-probe")
    x = conn.walk(d, "xattr-probe")
    r = conn.call(m.Txattrcreate(x, "user.p9conf-probe", 1, 0))
    if isinstance(r, m.Rxattrcreate):
        conn.call(m.Twrite(x, 0, b"1"))
        r = conn.call(m.Tclunk(x))
    return not (isinstance(r, m.Rlerror) and r.ecode == errno.EOPNOTSUPP)


def _cleanup(address: str, dialect: Dialect, aname: str, scratch: str, timeout: float) -> None:
    """Remove the scratch tree (best effort: a server that breaks the
    connection here leaves it behind)."""
    try:
        conn = _root(address, dialect, aname, timeout)
    except SetupError:
        return
    try:
        _remove_tree(conn, ROOT_FID, scratch)
    except (Failure, OSError):
        pass
    finally:
        conn.rc.close()


def _remove_tree(conn: Conn, dirfid: int, name: str) -> None:
    fid = conn.fid()
    r = conn.call(m.Twalk(dirfid, fid, [name]))
    if is_error(r):
        return
    assert isinstance(r, m.Rwalk)
    if r.qids[0].type & c.QidType.DIR:
        for child in _list(conn, fid):
            _remove_tree(conn, fid, child)
    conn.call(m.Tremove(fid))


def _list(conn: Conn, dirfid: int) -> list[str]:
    fid = conn.clone(dirfid)
    conn.open(fid)
    names: list[str] = []
    try:
        if conn.dotl:
            off = 0
            while True:
                r = conn.ok(m.Treaddir(fid, off, 8192), m.Rreaddir)
                assert isinstance(r, m.Rreaddir)
                ents = m.decode_dirents(r.data)
                if not ents:
                    break
                names += [e.name for e in ents if e.name not in (".", "..")]
                off = ents[-1].offset
        else:
            data = conn.read_all(fid)
            names = [s.name for s in m.decode_stats(data, conn.dialect)]
    finally:
        conn.call(m.Tclunk(fid))
    return names


# ------------------------------------------------------------------ reports --
def must_not_applicable(results: list[Result]) -> list[Result]:
    """MUST cases that were not checked: each hides a rule the server may break."""
    return [r for r in results if r.status == NA and r.level == MUST]


def summary(results: list[Result]) -> str:
    p = sum(r.status == PASS for r in results)
    f = sum(r.status == FAIL for r in results)
    n = sum(r.status == NA for r in results)
    mn = len(must_not_applicable(results))
    return f"conformance: {p} passed, {f} failed, {n} not applicable ({mn} of them MUST)"


def must_failed(results: list[Result]) -> bool:
    return any(r.status == FAIL and r.level == MUST for r in results)


def conforms(results: list[Result], *, strict: bool = False) -> bool:
    """No MUST case failed; with strict, none was left unchecked either."""
    return not must_failed(results) and not (strict and must_not_applicable(results))


def report_text(
    results: list[Result], *, address: str = "", dialect: str = "", strict: bool = False
) -> str:
    """The readable report: cases grouped by section, then the summary line."""
    lines = [f"p9share conformance: {address} {dialect}".rstrip()]
    by_section: dict[str, list[Result]] = {}
    for r in results:
        by_section.setdefault(r.section, []).append(r)
    for section in sorted(by_section, key=section_key):
        lines.append("")
        lines.append(section)
        for r in by_section[section]:
            mark = {PASS: "PASS", FAIL: "FAIL", NA: "N/A "}[r.status]
            lines.append(f"  {mark} {r.id} [{r.level}] {r.title}")
            lines.append(f"       {r.observed}")
    lines.append("")
    lines.append(summary(results))
    if strict and must_not_applicable(results):
        ids = ", ".join(r.id for r in must_not_applicable(results))
        lines.append(f"--strict: MUST cases not checked count as failed: {ids}")
    return "\n".join(lines) + "\n"


def report_json(
    results: list[Result], *, address: str = "", dialect: str = "", strict: bool = False
) -> str:
    p = sum(r.status == PASS for r in results)
    f = sum(r.status == FAIL for r in results)
    n = sum(r.status == NA for r in results)
    doc = {
        "address": address,
        "dialect": dialect,
        "strict": strict,
        "summary": {
            "passed": p,
            "failed": f,
            "not_applicable": n,
            "must_not_applicable": len(must_not_applicable(results)),
        },
        "must_failed": must_failed(results),
        "conforms": conforms(results, strict=strict),
        "cases": [asdict(r) for r in results],
    }
    return json.dumps(doc, indent=1) + "\n"
