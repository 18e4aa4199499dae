"""Run the suite against Debian's diod and write docs/conformance-diod.md.

    python -m p9share.conformance.publish [OUTPUT]

Every case where diod's behaviour differs from docs/protocol.md (a failure
or a case that cannot apply) is listed with the reason, from REASONS below.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..protocol.constants import Dialect
from .runner import FAIL, NA, Result, run, summary

DEFAULT_OUTPUT = Path(__file__).resolve().parents[3] / "docs" / "conformance-diod.md"

# Why diod differs, by case id pattern (first match wins). "diod" is right
# nowhere in this list: where it was, p9share or the spec was changed instead.
REASONS: list[tuple[str, str]] = [
    (
        "dialect.served.9P2000*",
        "diod serves 9P2000.L only; it answers any other version with "
        "Rlerror(EIO) instead of Rversion 'unknown'.",
    ),
    (
        "version.*",
        "diod answers a Tversion it does not accept (unknown string, empty, wrong case, "
        "msize below 4096) with Rlerror(EIO), not Rversion 'unknown'; it accepts msize below 4096.",
    ),
    ("notes.version-dot-anything", "diod answers '9P2000.x' with Rlerror(EIO), not Rversion."),
    (
        "frame.check5.*",
        "Before Tversion diod answers Rlerror(EIO), a .L message on an "
        "un-negotiated connection; the spec uses the 9P2000 Rerror form there.",
    ),
    ("frame.errors.rerror-before-version", "As frame.check5: Rlerror(EIO) before negotiation."),
    ("frame.int.little-endian", "diod's maximum msize is 65536; the case asks for less."),
    (
        "frame.string.*",
        "diod does not validate UTF-8 or NUL bytes in strings; the name is "
        "looked up (ENOENT). p9share refuses such frames as malformed (EPROTO).",
    ),
    (
        "frame.qid.version-changes",
        "diod sets qid.version 0 for every file; p9share derives it "
        "from mtime and size so that the Linux client can notice changes (cache=loose).",
    ),
    (
        "frame.check1.*",
        "diod answers a frame whose size is below 7 instead of closing the connection.",
    ),
    ("frame.check4.*", "diod closes the connection on a malformed Tversion."),
    (
        "frame.check6.*",
        "diod executes requests sent under NOTAG; the spec reserves NOTAG for Tversion (EINVAL).",
    ),
    ("tags.notag-einval", "As frame.check6: diod executes a request under NOTAG."),
    ("flush.notag", "As frame.check6: diod answers a Tflush under NOTAG with Rflush."),
    (
        "frame.check7.*",
        "diod closes the connection on a message type it does not serve "
        "(unknown, reply numbers, Tlerror, Terror, 9P2000-only requests); p9share answers "
        "EOPNOTSUPP and keeps the connection.",
    ),
    ("lerror.tlerror", "As frame.check7: diod closes the connection on Tlerror."),
    (
        "frame.check8.left-over",
        "diod ignores bytes after the last field; p9share refuses them (EPROTO).",
    ),
    (
        "frame.check8.*",
        "diod closes the connection on a malformed body; p9share answers EPROTO "
        "and keeps the connection.",
    ),
    ("frame.compound.*", "diod closes the connection on a malformed Twalk/Twrite."),
    ("walk.17-names", "diod closes the connection on nwname > 16."),
    ("frame.errors.dotl-rlerror", "diod answers an unknown fid with EIO; the spec says EBADF."),
    (
        "frame.errors.emsgsize",
        "diod sends an Rreadlink that does not fit the negotiated msize "
        "(4096) instead of an error; p9share never sends a reply longer than msize.",
    ),
    ("msize.iounit", "diod sends iounit 0 ('no limit given'); p9share sends msize - 24."),
    ("lopen.dir-readonly", "As msize.iounit: diod's iounit is 0."),
    ("lcreate.new-open", "As msize.iounit: diod's iounit is 0."),
    (
        "reset.fids-clunked",
        "diod keeps the fids of a session across a second Tversion; the "
        "spec says Tversion clunks every fid.",
    ),
    (
        "reset.xattr-committed",
        "diod drops a pending xattr value at Tversion instead of committing it as Tclunk would.",
    ),
    (
        "replysize.*",
        "diod answers a Tread/Treaddir whose count exceeds msize - 24 with EIO; "
        "p9share clamps the count to what fits (as the Linux client expects).",
    ),
    ("read.msize-boundary", "As replysize: diod refuses a count above msize - 24 (EIO)."),
    (
        "write.msize-boundary",
        "diod refuses a Twrite carrying more than msize - 24 bytes (EIO), "
        "though the frame fits in msize.",
    ),
    ("write.large", "As write.msize-boundary (diod's msize is also at most 65536)."),
    ("notes.msize-1mib", "diod's maximum msize is 65536, so it answers 1 MiB with 65536."),
    ("fids.unknown.*", "diod answers an unknown fid with EIO; the spec says EBADF (§9.9)."),
    ("notes.unknown-fid", "As fids.unknown: EIO for an unknown fid."),
    ("clunk.unknown", "As fids.unknown: EIO for an unknown fid."),
    (
        "remove.file",
        "diod removes the file, but a later Tclunk of the removed fid gets EIO "
        "(unknown fid), not EBADF.",
    ),
    ("remove.fid-gone-on-error", "As remove.file: EIO for the removed fid."),
    ("fids.per-connection", "As fids.unknown: EIO for a fid of another connection."),
    (
        "fids.in-use.*",
        "diod replaces a fid in use (Tattach, Twalk) instead of answering "
        "EEXIST, silently dropping the old fid.",
    ),
    ("fids.nofid", "diod accepts NOFID as a new fid number."),
    ("fids.open.relopen", "diod answers a second Tlopen with EINVAL; the spec says EBADF."),
    ("fids.open.lcreate", "diod answers Tlcreate on an open fid with EINVAL; the spec says EBADF."),
    ("fids.open.xattrcreate", "diod turns an open fid into an xattr-write fid."),
    ("fids.open.walk-onto-itself", "diod allows walking an open fid onto itself (§9.6)."),
    ("notes.walk-open", "As fids.open.walk-onto-itself."),
    (
        "fids.xattr.*",
        "diod's xattr fids still refer to the file: Tgetattr, Twalk and Tremove "
        "act on it (Tremove of an xattr fid removes the file).",
    ),
    ("walk.empty-name", "diod accepts an empty walk name (it stays on the directory)."),
    (
        "walk.slash-name",
        "diod looks names up one by one and answers the first failure "
        "(ENOENT) instead of refusing a name containing '/' before any lookup.",
    ),
    (
        "walk.partial",
        "After a partial walk diod creates newfid anyway (it clunks without "
        "error); the spec says newfid is not created.",
    ),
    ("walk.partial-onto-itself", "diod moves fid even when the walk stops part-way."),
    ("clunk.after-error", "diod does not check the length of an xattr value at Tclunk."),
    (
        "common.bad-name.*",
        "diod passes '.', '..', '' and 'a/b' to the host (EISDIR, ENOENT); "
        "p9share refuses them as names (EINVAL).",
    ),
    ("confine.names", "As common.bad-name: diod answers EISDIR for '..'."),
    ("mkdir.bad-name", "As common.bad-name: diod answers EEXIST for '..'."),
    ("renameat.bad-newname", "Debian's diod 1.0.24 does not implement Trenameat (EOPNOTSUPP)."),
    ("renameat.*", "Debian's diod 1.0.24 does not implement Trenameat (EOPNOTSUPP)."),
    ("unlinkat.*", "Debian's diod 1.0.24 does not implement Tunlinkat (EOPNOTSUPP)."),
    (
        "auth.not-offered",
        "diod run with -n has no authentication and answers Tauth ENOENT; "
        "the spec says EOPNOTSUPP.",
    ),
    ("authn.not-offered", "As auth.not-offered."),
    ("attach.afid-not-nofid", "diod answers EPERM for an afid without authentication."),
    ("attach.unknown-aname", "diod answers EPERM for an aname it does not export."),
    ("aname.*", "diod answers EPERM for an aname it does not export; the spec says ENOENT."),
    (
        "attach.nonuname-uname-digits",
        "diod looks uid 1000 up in the host's passwd file and "
        "refuses an unknown user (EPERM); p9share takes guest ids as numbers.",
    ),
    ("identity.*", "As attach.nonuname-uname-digits: diod refuses uid 4321 (no such host user)."),
    ("ownership.*", "As attach.nonuname-uname-digits: diod refuses uid 4321."),
    (
        "lopen.fifo",
        "diod opens a FIFO on the host, which blocks its worker thread with no "
        "reply (and wedges the server); p9share never opens FIFOs (ENXIO).",
    ),
    ("lopen.socket", "diod opens the socket path on the host (ENXIO from the host)."),
    ("lopen.noaccess", "diod accepts access mode 3."),
    ("lopen.unknown-flag", "diod ignores unknown open flags (§9.4)."),
    (
        "lopen.symlink",
        "diod follows the symlink on the host (ENOENT for a dangling one); "
        "p9share never opens through a symlink (ELOOP).",
    ),
    (
        "openflags.dropped",
        "diod refuses the flag combination (EINVAL); p9share drops the flags "
        "that have no meaning for a server (§5.7.1).",
    ),
    ("lcreate.bad-flags", "diod ignores Tlcreate's flags (§9.4)."),
    (
        "lcreate.exists-fifo",
        "diod opens an existing FIFO named by Tlcreate (O_CREAT without "
        "O_EXCL); p9share never opens FIFOs.",
    ),
    (
        "confine.symlink-lcreate",
        "diod's Tlcreate follows a symlink and creates its target; "
        "p9share never creates through a symlink.",
    ),
    ("remove.root", "diod tries rmdir on the export root (ENOTEMPTY); the spec says EBUSY."),
    ("rename.root", "diod answers EINVAL for renaming the export root; the spec says EBUSY."),
    (
        "getattr.valid",
        "diod claims every field valid (0x3fff) including GEN and DATA_VERSION "
        "that it does not fill; p9share's valid mask is the truth (§5.13).",
    ),
    (
        "getattr.mask-ignored",
        "diod honours request_mask (valid 0 for mask 0); p9share ignores it (§9.7), as QEMU does.",
    ),
    ("notes.getattr-mask", "As getattr.mask-ignored."),
    (
        "setattr.mode-symlink",
        "diod follows the symlink (ENOENT for a dangling one); the spec says EOPNOTSUPP.",
    ),
    ("setattr.unknown-bit", "diod ignores unknown Tsetattr bits (§9.19)."),
    ("notes.setattr-bits", "As setattr.unknown-bit."),
    (
        "readdir.count-too-small",
        "diod answers an empty Rreaddir (end of directory) when the "
        "next entry does not fit; a client cannot tell that from the real end.",
    ),
    ("readdir.dot-first", "diod lists entries in host order, '.' and '..' not first."),
    (
        "readdir.root-dotdot",
        "diod's '..' entry at the export root is the host parent; "
        "p9share gives the root itself (§8.3).",
    ),
    ("readdir.file", "diod answers Treaddir on a file EINVAL; the spec says ENOTDIR."),
    ("mknod.*device", "diod creates device nodes when run as root; p9share never does (§8.5)."),
    ("confine.device", "As mknod.device: diod creates a device node."),
    ("mknod.directory-type", "diod answers EPERM for S_IFDIR in Tmknod; the spec says EINVAL."),
    ("xattrwalk.newfid-in-use", "As fids.in-use: diod replaces the fid."),
    ("xattrcreate.*", "diod does not check Txattrcreate's flags, size or name up front."),
    ("xattr.out-of-order", "diod does not check the order of xattr writes."),
    ("xattr.too-long", "diod does not check writes past attr_size."),
    ("xattr.short-at-clunk", "diod does not check the value's length at Tclunk."),
    (
        "lock.read-on-write-only",
        "diod locks whole files itself and does not pass the open mode's rule through (§9.8).",
    ),
    ("lock.start-2-63", "diod does not check lock ranges."),
    ("getlock.conflict", "diod widens locks to whole files (start 0, length 0, §9.8)."),
    (
        "getlock.unlck-as-wrlck",
        "diod answers Tgetlock type UNLCK with EINVAL (§9.11), so F_GETLK fails in a Linux guest.",
    ),
    ("notes.getlock-unlck", "As getlock.unlck-as-wrlck."),
    ("locks.byte-ranges", "diod widens locks to whole files, so disjoint ranges conflict."),
    (
        "renamed.fid-follows",
        "diod does not update other fids' names after a Trename, so "
        "Tremove through them fails (ENOENT).",
    ),
    (
        "confine.dotdot-*",
        "Debian's diod walks '..' out of the export root (§9.5): a client "
        "reaches the host directory above the export.",
    ),
    ("notes.dotdot-root", "As confine.dotdot: diod walks out of the export."),
    (
        "notes.flush-order",
        "diod does not answer a flushed request that had already been "
        "executed: only the Rflush comes; the spec sends the reply first (§3.6). Depends on "
        "timing: in some runs diod answers both.",
    ),
    (
        "concurrency.inline-order",
        "diod runs every request on a pool of threads, so replies can "
        "come out of request order (in some runs only: this row may come and go).",
    ),
    (
        "flush.never-cancels",
        "As notes.flush-order: diod sends only the Rflush for a flushed Twrite, not the Rwrite.",
    ),
    (
        "lifetime.unlinked-getattr",
        "diod acts on paths, not on the inode a fid holds: after "
        "the file is unlinked, Tgetattr fails (ENOENT) instead of reporting nlink 0.",
    ),
    (
        "unlinked.io",
        "As lifetime.unlinked-getattr: Tsetattr of an open, unlinked file fails (ENOENT).",
    ),
    (
        "remove.name-replaced",
        "diod's fids are paths: Tremove through a fid whose file was "
        "unlinked removes the new file that now has the name.",
    ),
    (
        "confine.race-name-swapped",
        "As remove.name-replaced: diod renames the file that now has the name, not the fid's file.",
    ),
    (
        "confine.handles",
        "As remove.name-replaced: after a rename, diod's old fid opens the new "
        "file that took the old name.",
    ),
    (
        "reset.pooled-completed",
        "diod answers a Tversion before the reply to a Tfsync still outstanding; the spec "
        "completes outstanding requests and sends their replies first (§3.3).",
    ),
    (
        "tags.duplicate-pooled-closes",
        "diod does not notice a tag reused while its request (a Tfsync) runs: it answers "
        "the duplicate as a new request and keeps the connection (§3.4).",
    ),
    (
        "flush.*",
        "As notes.flush-order: diod drops the reply of a flushed request it has run and sends "
        "only the Rflush (depends on timing: this row may come and go).",
    ),
]


# Cases whose outcome against diod depends on thread timing.
RACY = frozenset(
    {
        "concurrency.inline-order",
        "flush.never-cancels",
        "flush.pending",
        "flush.repeated",
        "notes.flush-order",
    }
)


def reason_for(case_id: str) -> str:
    for pattern, reason in REASONS:
        if fnmatch.fnmatchcase(case_id, pattern):
            return reason
    return "not explained"


def diod_version() -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "diod"],
                             capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run_against_diod(timeout: float = 2.0, only: str | None = None) -> list[Result]:
    """Start diod (as src/p9share/vmlab/diod.py does) on a fresh temporary
    export, run the .L suite, stop it."""
    from ..vmlab.diod import Diod

    with tempfile.TemporaryDirectory(prefix="p9conf-diod-") as tmp:
        os.chmod(tmp, 0o755)
        export = Path(tmp) / "export"
        export.mkdir(mode=0o755)
        with Diod(export) as d:
            address = f"tcp:127.0.0.1:{d.port}"
            return run(address, Dialect.P9P2000L, aname=d.aname, only=only, timeout=timeout)


def render(results: list[Result], version: str) -> str:
    by_section: dict[str, list[Result]] = {}
    no_ro = [r for r in results if r.status == NA and "--ro-aname" in r.observed]
    for r in results:
        if r.status in (FAIL, NA) and r not in no_ro:
            by_section.setdefault(r.section, []).append(r)
    lines = [
        "# Conformance: Debian's diod against docs/protocol.md",
        "",
        "Generated by `python -m p9share.conformance.publish` (do not edit by hand):",
        "the conformance suite (`p9share conformance`, dialect 9P2000.L) run against",
        f"Debian's diod {version} (`diod -f -c /dev/null -n -e EXPORT`, as root) on loopback.",
        "p9share itself passes every case of all three dialects with `--strict`, no case",
        "left not applicable (tests/conformance).",
        "",
        "Each row is a case where diod does not do what the spec says, with diod's reply",
        "and why the two differ. None of these differences is one where diod is right and",
        "the spec wrong; where that happened (see the end), p9share or the spec was changed.",
        "",
        "```",
        summary(results),
        "```",
        "",
        "Only the 9P2000.L cases run (diod serves 9P2000.L only; see `dialect.served.*`).",
        f"Not applicable and not listed below: {len(no_ro)} cases of §7.6 that need a",
        "read-only export of the same tree (`--ro-aname`), which diod's command line cannot",
        "give. Every other case that could not be checked is listed, with the reason.",
    ]
    from .registry import section_key

    for section in sorted(by_section, key=section_key):
        lines += ["", f"## {section}", "", "| case | | diod | why |", "|---|---|---|---|"]
        for r in by_section[section]:
            status = "fail" if r.status == FAIL else "n/a"
            observed = r.observed.replace("|", "\\|").replace("\n", " ")
            if len(observed) > 160:
                observed = observed[:157] + "..."
            lines.append(f"| `{r.id}` | {status} | {observed} | {reason_for(r.id)} |")
    lines += ["", "## Where diod was right", "", *RIGHT, ""]
    return "\n".join(lines)


RIGHT = [
    "No case was found where diod does what the spec forbids and diod is right. The run",
    "against p9share found statements in docs/protocol.md that no longer matched the code",
    "(fixed in the spec with this suite): NOFID is refused as a fid number (KI-3),",
    "passthrough ownership no longer uses the uid as the gid (KI-6), set-id bits are",
    "stripped and xattr namespaces filtered by the policy (KI-13), 9P2000.u and 9P2000 are",
    "served (KI-12), and `..` from an unlinked directory still leads to its parent inside",
    "the export (§5.32).",
]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUTPUT
    results = run_against_diod()
    out.write_text(render(results, diod_version()), encoding="utf-8")
    print(summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
