"""`serve --listen vhost-user:SOCKET`: the server's virtio-fs listener driven by
the fake front end (real socket, memfd guest memory, rings): the policy's
identity per socket, the export it serves, and reconnects after the front end
goes away (a guest reboot), with a 9P listener in the same server."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.client.raw import RawClient
from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.protocol import messages as m
from p9share.server.server import Server
from p9share.server.transport import AddressError, parse_address
from p9share.virtiofs import fuse

from .frontend import FakeQueue, Frontend

UID = GID = 0


def call(q: FakeQueue, req: fuse.Request, room: int = 8192) -> fuse.Reply:
    data = q.roundtrip([fuse.encode_request(req)], [room])
    return fuse.decode_reply(data)


def mount(path: str) -> tuple[Frontend, FakeQueue]:
    """What QEMU and the guest's virtiofs driver do first: set up, INIT."""
    fe = Frontend(path)
    fe.start()
    q = fe.queues[1]  # queue 0 is hiprio (FORGET); requests go to the others
    r = call(q, fuse.Init(1, 0, UID, GID, 1, 7, 38, 1 << 20, 0))
    assert r.error == 0
    assert fuse.parse_init_out(r.body).major == 7
    return fe, q


def lookup(q: FakeQueue, parent: int, name: str, unique: int) -> fuse.Reply:
    return call(q, fuse.Lookup(unique, parent, UID, GID, 1, name))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "hello").write_text(f"in {name}\n")
    exports = {n: Export(n, str(tmp_path / n)) for n in ("a", "b")}
    clients = {
        "vm1": Client("vm1", (Match(listener="vm1"),), {"a": Rights()}),
        "vm2": Client("vm2", (Match(listener="vm2"),), {"b": Rights(readonly=True)}),
    }
    srv = Server(Policy(exports, clients))
    srv.bind(parse_address(f"vhost-user:{tmp_path}/vm1.fs"), name="vm1")
    srv.bind(parse_address(f"vhost-user:{tmp_path}/vm2.fs"), name="vm2", export="b")
    srv.bind(parse_address(f"unix:{tmp_path}/vm1.9p"), name="vm1")
    srv.start()
    yield srv, tmp_path
    srv.stop()


def test_each_socket_serves_its_clients_export(server: tuple[Server, Path]) -> None:
    _, tmp = server
    fe, q = mount(f"{tmp}/vm1.fs")
    r = lookup(q, fuse.ROOT_ID, "hello", 2)
    assert r.error == 0
    entry = fuse.parse_entry_out(r.body)
    r = call(q, fuse.Open(3, entry.nodeid, UID, GID, 1, os.O_RDONLY, 0))
    fh, _ = fuse.parse_open_out(r.body)
    r = call(q, fuse.Read(4, entry.nodeid, UID, GID, 1, fh, 0, 100, 0, 0, 0))
    assert r.error == 0 and r.body == b"in a\n"
    fe.close()

    fe, q = mount(f"{tmp}/vm2.fs")  # read-only grant of export b
    assert fuse.parse_entry_out(lookup(q, fuse.ROOT_ID, "hello", 2).body).nodeid
    r = call(q, fuse.Mkdir(3, fuse.ROOT_ID, UID, GID, 1, 0o755, 0o022, "new"))
    assert r.error == errno.EROFS
    assert not (tmp / "b" / "new").exists()
    fe.close()


def test_the_socket_keeps_serving_after_the_front_end_goes(server: tuple[Server, Path]) -> None:
    _, tmp = server
    for boot in range(3):  # three guest boots, one p9share
        fe, q = mount(f"{tmp}/vm1.fs")
        r = call(q, fuse.Mkdir(2, fuse.ROOT_ID, UID, GID, 1, 0o755, 0o022, f"boot{boot}"))
        assert r.error == 0
        fe.close()
    assert sorted(p.name for p in (tmp / "a").iterdir()) == ["boot0", "boot1", "boot2", "hello"]
    # and the 9P listener of the same server is unaffected
    cl = RawClient.connect(f"unix:{tmp}/vm1.9p", timeout=10)
    cl.version()
    cl.attach(0, "")
    assert cl.walk(0, 1, ["boot2"]).qids
    assert isinstance(cl.rpc(m.Tclunk(1)), m.Rclunk)
    cl.close()


def test_a_listener_whose_client_may_not_attach_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    policy = Policy({"a": Export("a", str(tmp_path / "a"))},
                    {"vm1": Client("vm1", (Match(listener="vm1"),), {"a": Rights()})})  # fmt: skip
    srv = Server(policy)
    try:
        with pytest.raises(AddressError, match="no client identity matches"):
            srv.bind(parse_address(f"vhost-user:{tmp_path}/x.fs"), name="stranger")
    finally:
        srv.stop()


def test_serve_command_line_vhost_user(tmp_path: Path) -> None:
    """The contract: `p9share serve PATH --listen vhost-user:SOCKET --cache MODE`."""
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "f").write_text("x")
    sock = tmp_path / "fs.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p9share", "serve", str(tmp_path / "share"), "--listen",
         f"vhost-user:{sock}", "--cache", "none", "--landlock", "off"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and "serving on" not in line:
            line = proc.stderr.readline()
        assert f"serving on vhost-user:{sock}" in line
        fe, q = mount(str(sock))
        r = lookup(q, fuse.ROOT_ID, "f", 2)
        entry = fuse.parse_entry_out(r.body)
        assert entry.entry_valid == 0 and entry.attr_valid == 0  # cache=none
        fe.close()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_virtio_fs_requests_in_the_live_metrics(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from p9share.server.metrics import MetricsEndpoint
    from p9share.top import fetch

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "hello").write_text("in a\n")
    policy = Policy({"a": Export("a", str(tmp_path / "a"))},
                    {"vm1": Client("vm1", (Match(listener="vm1"),), {"a": Rights()})})  # fmt: skip
    srv = Server(policy, metrics=True)
    srv.listen(parse_address(f"vhost-user:{tmp_path}/vm1.fs"), name="vm1")
    assert srv.metrics is not None
    ep = MetricsEndpoint("tcp:127.0.0.1:0", srv.metrics)
    ep.start()
    try:
        fe, q = mount(f"{tmp_path}/vm1.fs")
        entry = fuse.parse_entry_out(lookup(q, fuse.ROOT_ID, "hello", 2).body)
        assert lookup(q, fuse.ROOT_ID, "missing", 3).error == errno.ENOENT
        fh, _ = fuse.parse_open_out(call(q, fuse.Open(4, entry.nodeid, UID, GID, 1, 0, 0)).body)
        assert call(q, fuse.Read(5, entry.nodeid, UID, GID, 1, fh, 0, 100, 0, 0, 0)).error == 0
        samples = {}
        for fam in text_string_to_metric_families(fetch(ep.address)):
            for s in fam.samples:
                samples[s.name, frozenset(s.labels.items())] = s.value
        who = {"protocol": "virtio-fs", "client": "vm1", "export": "a"}

        def v(name: str, **labels: str) -> float:
            return samples[name, frozenset({**labels}.items())]

        assert v("p9share_requests_total", **who, op="lookup") == 2
        assert v("p9share_errors_total", **who, op="lookup", errno="ENOENT") == 1
        assert v("p9share_read_bytes_total", **who) == 5
        assert v("p9share_connections", protocol="virtio-fs", client="vm1") == 1
        assert v("p9share_fids", **who) == 2  # the root and hello
        fe.close()
    finally:
        ep.stop()
        srv.stop()
