"""The policy matrix: several clients and exports on one live server; every
combination of attach and operation gets the decision the policy says.

The expected decisions are computed here from the grants as written in the
test (a second, independent statement of the rules), not by asking the
policy code, so a policy bug shows as a mismatch."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p9share.audit import AuditLog
from p9share.client.raw import RawClient, ServerError
from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.server.server import Server
from p9share.server.transport import parse_address


@dataclass(frozen=True)
class Grant:
    """A grant as the test states it: access and the optional rights."""

    access: str  # "ro" | "rw"
    fifos: bool = False
    symlinks: bool = True
    hardlinks: bool = True
    xattrs: tuple[str, ...] = ("user",)

    def rights(self) -> Rights:
        return Rights(readonly=self.access == "ro", fifos=self.fifos, symlinks=self.symlinks,
                      hardlinks=self.hardlinks, xattr_namespaces=frozenset(self.xattrs))  # fmt: skip


EXPORTS = {"src": False, "pub": True, "priv": False}  # name -> read-only export
GRANTS: dict[str, dict[str, Grant]] = {
    "vm1": {"src": Grant("rw"), "pub": Grant("ro")},
    "vm2": {"src": Grant("rw", fifos=True, symlinks=False, hardlinks=False,
                         xattrs=("user", "trusted"))},
    "lab": {"pub": Grant("rw")},  # rw granted, but the export itself is read-only
}  # fmt: skip
OPS = ["read", "create", "mkdir", "fifo", "symlink", "link", "chmod-setuid", "xattr-user",
       "xattr-trusted"]  # fmt: skip


def expected(client: str, export: str, op: str) -> int:
    """The errno the policy must answer (0: allowed) — the rules, restated."""
    g = GRANTS[client].get(export)
    if g is None:
        return errno.EACCES  # attach refused
    if op == "read":
        return 0
    if g.access == "ro" or EXPORTS[export]:
        return errno.EROFS
    if op == "fifo" and not g.fifos:
        return errno.EPERM
    if op == "symlink" and not g.symlinks:
        return errno.EPERM
    if op == "link" and not g.hardlinks:
        return errno.EPERM
    if op == "xattr-trusted" and "trusted" not in g.xattrs:
        return errno.EOPNOTSUPP
    return 0


@dataclass
class Matrix:
    server: Server
    root: Path
    sockets: dict[str, str]
    tcp: str
    audit_path: Path

    def connect(self, client: str) -> RawClient:
        addr = self.tcp if client == "lab" else f"unix:{self.sockets[client]}"
        c_ = RawClient.connect(addr, timeout=10)
        c_.version()
        return c_

    def audit(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


@pytest.fixture
def matrix(tmp_path: Path) -> Iterator[Matrix]:
    root = tmp_path / "exports"
    exports = {}
    for name, ro in EXPORTS.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "file").write_text(f"{name}\n")
        exports[name] = Export(name, str(d), readonly=ro)
    clients = {
        "vm1": Client("vm1", (Match(listener="vm1"),),
                      {e: g.rights() for e, g in GRANTS["vm1"].items()}),
        "vm2": Client("vm2", (Match(listener="vm2"),),
                      {e: g.rights() for e, g in GRANTS["vm2"].items()}),
        "lab": Client("lab", (Match(network=ipaddress.ip_network("127.0.0.0/8")),),
                      {e: g.rights() for e, g in GRANTS["lab"].items()}),
    }  # fmt: skip
    audit_path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(audit_path))
    srv = Server(Policy(exports, clients), audit=audit)
    socks = {}
    for name in ("vm1", "vm2", "stranger"):
        socks[name] = str(tmp_path / f"{name}.sock")
        srv.listen(parse_address(f"unix:{socks[name]}"), name=name)
    tcp = str(srv.listen(parse_address("tcp:127.0.0.1:0")))
    try:
        yield Matrix(srv, root, socks, tcp, audit_path)
    finally:
        srv.stop()
        audit.close()


def attempt(c_: RawClient, root: Path, export: str, op: str, tag: str) -> int:
    """Try op in export with fid 0 attached to it; 0 or the errno."""
    name = f"{op}-{tag}"
    try:
        if op == "read":
            c_.walk(0, 1, ["file"])
            c_.rpc(m.Tlopen(1, c.L_O_RDONLY))
            r = c_.rpc(m.Tread(1, 0, 100))
            assert isinstance(r, m.Rread) and bytes(r.data) == f"{export}\n".encode()
        elif op == "create":
            c_.walk(0, 1, [])
            c_.rpc(m.Tlcreate(1, name, c.L_O_RDWR, 0o644, 0))
        elif op == "mkdir":
            c_.rpc(m.Tmkdir(0, name, 0o755, 0))
        elif op == "fifo":
            c_.rpc(m.Tmknod(0, name, stat.S_IFIFO | 0o644, 0, 0, 0))
        elif op == "symlink":
            c_.rpc(m.Tsymlink(0, name, "file", 0))
        elif op == "link":
            c_.walk(0, 1, ["file"])
            c_.rpc(m.Tlink(0, 1, name))
        elif op == "chmod-setuid":
            c_.walk(0, 1, ["file"])
            c_.rpc(m.Tsetattr(1, c.SetattrValid.MODE, 0o4755, 0, 0, 0, 0, 0, 0, 0))
            # allowed, but the set-uid bit never lands (no client may set it)
            assert not (root / export / "file").stat().st_mode & stat.S_ISUID
        elif op.startswith("xattr-"):
            ns = op.removeprefix("xattr-")
            c_.walk(0, 1, ["file"])
            c_.rpc(m.Txattrcreate(1, f"{ns}.{name}", 1, 0))
            c_.rpc(m.Twrite(1, 0, b"v"))
            c_.rpc(m.Tclunk(1))
            assert os.getxattr(root / export / "file", f"{ns}.{name}") == b"v"
            return 0
        return 0
    except ServerError as e:
        return e.errno or -1
    finally:
        for fid in (1,):
            try:
                c_.rpc(m.Tclunk(fid))
            except ServerError:
                pass


@pytest.mark.parametrize("client", sorted(GRANTS))
def test_every_attach_and_operation_gets_the_policys_decision(matrix: Matrix, client: str) -> None:
    got: dict[tuple[str, str], int] = {}
    want: dict[tuple[str, str], int] = {}
    for export in EXPORTS:
        c_ = matrix.connect(client)
        try:
            try:
                c_.attach(0, export, uname="root", n_uname=0)
            except ServerError as e:
                for op in OPS:
                    got[export, op] = e.errno or -1
                    want[export, op] = expected(client, export, op)
                continue
            for op in OPS:
                got[export, op] = attempt(c_, matrix.root, export, op, client)
                want[export, op] = expected(client, export, op)
        finally:
            c_.close()
    assert got == want


def test_unknown_export_is_enoent_and_unmatched_connection_is_refused(matrix: Matrix) -> None:
    c_ = matrix.connect("vm1")
    with pytest.raises(ServerError) as ei:
        c_.attach(0, "nonesuch")
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(ServerError) as ei:
        c_.attach(0, "")  # vm1 may attach two exports: the name must be given
    assert ei.value.errno == errno.ENOENT
    c_.close()
    # the "stranger" listener carries no identity any client matches
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(matrix.sockets["stranger"])
    assert s.recv(1) == b""  # closed at once, before a word of 9P
    s.close()
    # the empty attach name selects a client's only export
    c_ = matrix.connect("lab")
    c_.attach(0, "")
    c_.walk(0, 1, ["file"])
    c_.close()


def test_decisions_are_audited(matrix: Matrix) -> None:
    c_ = matrix.connect("vm2")
    with pytest.raises(ServerError):
        c_.attach(0, "pub")
    c_.attach(0, "src")
    with pytest.raises(ServerError):
        c_.rpc(m.Tsymlink(0, "nope", "file", 0))
    c_.close()
    s = socket.socket(socket.AF_UNIX)
    s.connect(matrix.sockets["stranger"])
    s.settimeout(5)
    s.recv(1)
    s.close()
    matrix.server.audit.close()
    recs = matrix.audit()
    events = [r["event"] for r in recs]
    assert "connect" in events and "refused" in events
    denied_attach = [r for r in recs if r["event"] == "attach-denied"]
    assert denied_attach and denied_attach[0]["client"] == "vm2"
    assert denied_attach[0]["aname"] == "pub" and denied_attach[0]["rule"] == "grant"
    attach = [r for r in recs if r["event"] == "attach"]
    assert attach[0]["export"] == "src" and attach[0]["client"] == "vm2"
    denied = [r for r in recs if r["event"] == "denied"]
    assert denied[0]["op"] == "symlink" and denied[0]["rule"] == "symlinks"
    assert denied[0]["path"] == "src:/" and denied[0]["name"] == "nope"
