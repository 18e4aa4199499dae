#!/usr/bin/env python3
"""Disable the security checks one at a time and see that a test notices.

Each mutation below names one check (in the operations layer, the policy or
the quota ledger), the exact source text that makes it and what to put in its
place. For each, the tree (src/, tests/, pyproject.toml) is copied to a
temporary directory, the one text is replaced there, and the tests named for
it run against the copy. A mutation the tests pass with is MISSED: that check
could be deleted without any test failing. A mutation whose text is no longer
in the source is STALE (the list must follow the code).

    scripts/mutation_check.py            # every mutation, its own tests (CI)
    scripts/mutation_check.py --full     # every mutation, the whole non-VM suite
    scripts/mutation_check.py --only remove-grant,drop-setid --list

Exit status 1 if any mutation is missed or stale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = "src/p9share/operations.py"
POLICY = "src/p9share/policy/__init__.py"
QUOTA = "src/p9share/policy/quota.py"
GRANTS = "tests/security/test_grant_rules.py"
QUOTA_TESTS = "tests/security/test_quota.py"
MATRIX = "tests/security/test_policy_matrix.py"
ATTACKS = "tests/security/test_attacks.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str  # the check, in words
    path: str
    find: str  # must occur exactly once
    replace: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "remove-grant",
        "Tremove/ORCLOSE ask the grant",
        OPS,
        '        """Remove the file t was reached by (9P\'s Tremove and ORCLOSE)."""\n'
        "        self.policy.check_write(t.rights)\n",
        '        """Remove the file t was reached by (9P\'s Tremove and ORCLOSE)."""\n',
        (GRANTS,),
    ),
    Mutation(
        "setattr-grant",
        "attribute changes ask the grant",
        OPS,
        '        mode the permission bits (07777)."""\n        self.policy.check_write(t.rights)\n',
        '        mode the permission bits (07777)."""\n',
        (GRANTS,),
    ),
    Mutation(
        "dir-change-grant",
        "creates, unlinks, renames and links ask the grant",
        OPS,
        "        self.policy.check_new_name(name)\n        self.policy.check_write(d.rights)\n",
        "        self.policy.check_new_name(name)\n",
        (GRANTS,),
    ),
    Mutation(
        "open-grant",
        "opens for writing, truncating or removing ask the grant",
        OPS,
        "        if wants_write(flags) or removes:\n"
        "            self.policy.check_write(t.rights)\n",
        "",
        (GRANTS,),
    ),
    Mutation(
        "rename-node-grant",
        "Trename / Twstat renames ask the grant",
        OPS,
        "        self.policy.check_new_name(newname)\n        self.policy.check_write(t.rights)\n",
        "        self.policy.check_new_name(newname)\n",
        (GRANTS,),
    ),
    Mutation(
        "xattr-set-grant",
        "xattr writes ask the grant",
        OPS,
        '            raise OSError(errno.EINVAL, "empty xattr name")\n'
        "        self.policy.check_write(t.rights)\n",
        '            raise OSError(errno.EINVAL, "empty xattr name")\n',
        (GRANTS,),
    ),
    Mutation(
        "drop-setid",
        "the first write drops set-id bits",
        OPS,
        "        if t.rights.setid and t.uid in (0, NO_ID):\n            return\n"
        "        self._kill_setid(t, t.file)\n",
        "        return\n",
        (GRANTS,),
    ),
    Mutation(
        "setid-non-root",
        "a non-root writer clears granted set-id bits",
        OPS,
        "        if t.rights.setid and t.uid in (0, NO_ID):\n",
        "        if t.rights.setid:\n",
        (GRANTS,),
    ),
    Mutation(
        "truncate-kills-setid",
        "truncate and chown by non-root clear set-id bits",
        OPS,
        "            self._kill_setid(t, t.file)\n\n    def _apply(",
        "            pass\n\n    def _apply(",
        (GRANTS,),
    ),
    Mutation(
        "create-opens-existing",
        "a create that finds the file opens it as an open",
        OPS,
        "            if not flags & os.O_EXCL:\n                try:\n",
        "            if False:\n                try:\n",
        (GRANTS,),
    ),
    Mutation(
        "new-mode-setid",
        "set-id bits are stripped on create and chmod",
        POLICY,
        "        return mode if rights.setid else mode & ~SETID_BITS\n",
        "        return mode\n",
        (MATRIX, GRANTS),
    ),
    Mutation(
        "mknod-devices",
        "device nodes need the devices grant",
        POLICY,
        "        if kind in (stat.S_IFCHR, stat.S_IFBLK) and not rights.devices:\n",
        "        if False:\n",
        (GRANTS, ATTACKS),
    ),
    Mutation(
        "mknod-fifos",
        "FIFOs need the fifos grant",
        POLICY,
        "        if kind == stat.S_IFIFO and not rights.fifos:\n",
        "        if False:\n",
        (MATRIX,),
    ),
    Mutation(
        "device-range",
        "device numbers within Linux's dev_t",
        OPS,
        "            if not (0 <= major <= MAJOR_MAX and 0 <= minor <= MINOR_MAX):\n",
        "            if False:\n",
        (GRANTS,),
    ),
    Mutation(
        "symlinks",
        "symlinks need the symlinks grant",
        POLICY,
        "        if not rights.symlinks:\n",
        "        if False:\n",
        (MATRIX,),
    ),
    Mutation(
        "hardlinks",
        "hard links need the hardlinks grant",
        POLICY,
        "        if not rights.hardlinks:\n",
        "        if False:\n",
        (MATRIX,),
    ),
    Mutation(
        "xattr-reserved",
        "reserved xattr names are unreachable",
        POLICY,
        "        if name.startswith(RESERVED_XATTR_PREFIXES):\n            err =",
        "        if False:\n            err =",
        (ATTACKS, MATRIX),
    ),
    Mutation(
        "xattr-namespace",
        "xattr namespaces need a grant",
        POLICY,
        "        if ns not in rights.xattr_namespaces:\n",
        "        if False:\n",
        (MATRIX,),
    ),
    Mutation(
        "new-name",
        "new names are one component",
        POLICY,
        '        if not name or "/" in name or "\\0" in name or name in (".", ".."):\n'
        '            raise PolicyError(errno.EINVAL, f"bad file name {name!r}", "name")\n',
        "        pass\n",
        (GRANTS, ATTACKS),
    ),
    Mutation(
        "walk-name",
        "walked names are one component",
        POLICY,
        '        if not name or "/" in name or "\\0" in name:\n'
        '            raise PolicyError(errno.EINVAL, f"bad path element {name!r}", "name")\n',
        "        pass\n",
        (ATTACKS,),
    ),
    Mutation(
        "max-file-size",
        "max_file_size bounds writes and truncates",
        POLICY,
        "        if exp.max_file_size and end > exp.max_file_size:\n",
        "        if False:\n",
        (QUOTA_TESTS, "tests/server/test_limits.py"),
    ),
    Mutation(
        "append-lands-at-end",
        "an O_APPEND write is checked where it lands",
        OPS,
        "        if t.open_flags & os.O_APPEND and limited:\n",
        "        if False:\n",
        (QUOTA_TESTS,),
    ),
    Mutation(
        "quota-files",
        "creates are charged to the file quota",
        OPS,
        "        q.charge(nfiles=1)\n",
        "        pass\n",
        (QUOTA_TESTS,),
    ),
    Mutation(
        "quota-write-bytes",
        "growing writes are charged to the byte quota",
        OPS,
        "                q.charge(nbytes=end - size)\n",
        "                pass\n",
        (QUOTA_TESTS,),
    ),
    Mutation(
        "quota-ledger-limit",
        "the ledger refuses past the limit",
        QUOTA,
        "            if nbytes > 0 and limit_b and self.bytes_used + nbytes > limit_b:\n",
        "            if False:\n",
        (QUOTA_TESTS,),
    ),
    Mutation(
        "rename-refund",
        "a rename over a name refunds what it replaced",
        OPS,
        "        self._refund(d, freed_by(replaced))\n",
        "        pass\n",
        (GRANTS,),
    ),
    Mutation(
        "rename-same-inode",
        "a rename onto the same file refunds nothing",
        OPS,
        "        if replaced is None or (moved is not None and moved.qid.path == "
        "replaced.qid.path):\n",
        "        if replaced is None:\n",
        (GRANTS,),
    ),
    Mutation(
        "cross-export",
        "links and renames stay in one export",
        OPS,
        "        if old.export is not new.export:\n",
        "        if False:\n",
        (ATTACKS,),
    ),
    Mutation(
        "attach-grant",
        "a client attaches only exports granted to it",
        POLICY,
        "        if name not in visible:\n",
        "        if False:\n",
        (MATRIX,),
    ),
]


def run(mut: Mutation, full: bool, timeout: float) -> tuple[str, float]:
    source = (ROOT / mut.path).read_text()
    if source.count(mut.find) != 1:
        return f"STALE (found {source.count(mut.find)} times)", 0.0
    with tempfile.TemporaryDirectory(prefix="p9share-mutant-") as tmp:
        t = Path(tmp)
        for part in ("src", "tests"):
            shutil.copytree(ROOT / part, t / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
        shutil.copy(ROOT / "pyproject.toml", t / "pyproject.toml")
        (t / mut.path).write_text(source.replace(mut.find, mut.replace))
        tests = ["tests", "-m", "not vm"] if full else list(mut.tests)
        env = dict(os.environ, PYTHONPATH=str(t / "src"), PYTHONDONTWRITEBYTECODE="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
        start = time.monotonic()
        try:
            r = subprocess.run(cmd, cwd=t, env=env, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "caught (timed out)", time.monotonic() - start
        took = time.monotonic() - start
        if r.returncode == 1:
            return "caught", took
        if r.returncode == 0:
            return "MISSED", took
        tail = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()[-3:]
        return f"ERROR (pytest exit {r.returncode}: {' / '.join(tail)})", took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="run the whole non-VM suite per mutation")
    ap.add_argument("--only", default="", help="comma-separated mutation names")
    ap.add_argument("--list", action="store_true", help="list the checks covered and exit")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    chosen = [mu for mu in MUTATIONS if not args.only or mu.name in args.only.split(",")]
    if args.list:
        for mu in chosen:
            print(f"{mu.name:24} {mu.path}: {mu.what}")
        return 0
    bad = 0
    for mu in chosen:
        verdict, took = run(mu, args.full, args.timeout)
        bad += not verdict.startswith("caught")
        print(f"{mu.name:24} {verdict:10} {took:5.1f}s  {mu.what}", flush=True)
    print(f"mutation check: {len(chosen) - bad} caught, {bad} missed or stale "
          f"of {len(chosen)}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
