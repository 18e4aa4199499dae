"""Malformed and hostile input: each case gets an error reply or closes only its
own connection, and a second connection keeps working throughout."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

from p9share.client.raw import RawClient, ServerError
from p9share.protocol import messages as m
from p9share.protocol.constants import NOFID, NOTAG, MsgType

from ..conftest import LiveServer


def still_serves(live: LiveServer) -> None:
    """A fresh second connection attaches and reads the export root."""
    with live.client() as c:
        r = c.rpc(m.Tgetattr(0, 0x7FF))
        assert isinstance(r, m.Rgetattr)
        assert r.qid.type & 0x80


def closed(c: RawClient) -> bool:
    c.sock.settimeout(5)
    try:
        return c.sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_truncated_message_then_close_leaves_server_serving(live: LiveServer) -> None:
    c = live.client()
    frame = m.Twalk(0, 1, ["a"]).encode(5)
    c.send_raw(frame[:-3])  # half a message, then the client goes away
    c.close()
    still_serves(live)


def test_size_field_smaller_than_header_closes_connection(live: LiveServer) -> None:
    c = live.client()
    c.send_raw(struct.pack("<IBH", 3, MsgType.TCLUNK, 1))
    assert closed(c)
    still_serves(live)


def test_size_field_larger_than_msize_closes_connection(live: LiveServer) -> None:
    c = live.client(msize=8192)
    c.send_raw(struct.pack("<IBH", 100_000, MsgType.TWRITE, 1) + b"\0" * 20)
    assert closed(c)
    still_serves(live)


def test_size_field_lying_short_gets_error_and_connection_survives(live: LiveServer) -> None:
    c = live.client()
    body = struct.pack("<I", 0)  # Tclunk needs 4 bytes; say size covers only 2 of them
    c.send_raw(struct.pack("<IBH", 7 + 2, MsgType.TCLUNK, 9) + body[:2])
    tag, r = c.recv()
    assert tag == 9 and isinstance(r, m.Rlerror) and r.ecode == errno.EPROTO
    assert isinstance(c.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)


def test_unknown_message_type_gets_error(live: LiveServer) -> None:
    c = live.client()
    c.send_raw(struct.pack("<IBH", 7, 200, 4))
    tag, r = c.recv()
    assert tag == 4 and isinstance(r, m.Rlerror) and r.ecode == errno.EOPNOTSUPP
    # a reply type sent as a request, and a 9P2000 message under .L
    for mtype in (MsgType.RGETATTR, MsgType.TSTAT):
        c.send_raw(struct.pack("<IBHI", 11, mtype, 5, 0))
        tag, r = c.recv()
        assert isinstance(r, m.Rlerror) and r.ecode == errno.EOPNOTSUPP
    still_serves(live)


def test_huge_read_count_is_capped_to_msize(live: LiveServer) -> None:
    (live.root / "big").write_bytes(b"x" * 200_000)
    c = live.client(msize=8192)
    c.walk(0, 1, ["big"])
    c.rpc(m.Tlopen(1, 0))
    r = c.rpc(m.Tread(1, 0, 0xFFFFFFFF))
    assert isinstance(r, m.Rread) and len(r.data) == 8192 - 11
    c.walk(0, 2, [])
    c.rpc(m.Tlopen(2, 0))
    r2 = c.rpc(m.Treaddir(2, 0, 0xFFFFFFFF))
    assert isinstance(r2, m.Rreaddir) and len(r2.data) <= 8192 - 11


def test_write_count_larger_than_data_is_malformed(live: LiveServer) -> None:
    c = live.client()
    body = struct.pack("<IQI", 0, 0, 1000) + b"abc"
    c.send_raw(struct.pack("<IBH", 7 + len(body), MsgType.TWRITE, 3) + body)
    tag, r = c.recv()
    assert tag == 3 and isinstance(r, m.Rlerror) and r.ecode == errno.EPROTO
    still_serves(live)


@pytest.mark.parametrize(
    "msg",
    [
        m.Tgetattr(77, 0x7FF),
        m.Tclunk(77),
        m.Tread(77, 0, 10),
        m.Twalk(77, 78, []),
        m.Tlopen(77, 0),
        m.Treaddir(77, 0, 100),
        m.Tremove(77),
    ],
)
def test_bad_fid_is_ebadf(live: LiveServer, msg: m.Message) -> None:
    c = live.client()
    with pytest.raises(ServerError) as ei:
        c.rpc(msg)
    assert ei.value.errno == errno.EBADF


def test_walk_of_17_names_is_refused(live: LiveServer) -> None:
    c = live.client()
    names = [b"a"] * 17
    body = struct.pack("<IIH", 0, 1, 17) + b"".join(struct.pack("<H", 1) + n for n in names)
    c.send_raw(struct.pack("<IBH", 7 + len(body), MsgType.TWALK, 6) + body)
    tag, r = c.recv()
    assert tag == 6 and isinstance(r, m.Rlerror) and r.ecode == errno.EPROTO
    # 16 is fine (it fails on the missing name, not on the count)
    with pytest.raises(ServerError) as ei:
        c.walk(0, 1, ["a"] * 16)
    assert ei.value.errno == errno.ENOENT
    still_serves(live)


def test_bad_utf8_and_nul_in_names(live: LiveServer) -> None:
    c = live.client()
    for raw in (b"\xff\xfe", b"a\0b"):
        body = struct.pack("<IIH", 0, 1, 1) + struct.pack("<H", len(raw)) + raw
        c.send_raw(struct.pack("<IBH", 7 + len(body), MsgType.TWALK, 8) + body)
        _, r = c.recv()
        assert isinstance(r, m.Rlerror) and r.ecode == errno.EPROTO
    still_serves(live)


def test_request_before_version_and_notag(live: LiveServer) -> None:
    c = RawClient.connect(live.tcp)
    c.send(m.Tattach(0, NOFID, "root", "", 0), tag=1)
    _, r = c.recv()
    assert isinstance(r, m.Rerror)  # no dialect yet: the 9P2000 error form
    c.version()
    c.send(m.Tattach(0, NOFID, "root", "", 0), tag=NOTAG)
    tag, r = c.recv()
    assert tag == NOTAG and isinstance(r, m.Rlerror) and r.ecode == errno.EINVAL
    c.close()


def test_garbage_stream_does_not_hurt_other_connection(live: LiveServer) -> None:
    other = live.client()
    bad = socket.create_connection(("127.0.0.1", int(live.tcp.rsplit(":", 1)[1])))
    bad.sendall(b"\xde\xad\xbe\xef" * 1000)
    bad.close()
    assert isinstance(other.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    other.close()
    still_serves(live)


def test_many_idle_connections_and_fids(live: LiveServer) -> None:
    conns = [live.client() for _ in range(20)]
    c = conns[0]
    for i in range(1, 2000):
        c.walk(0, i, [])
    still_serves(live)
    for x in conns:
        x.close()
    still_serves(live)


def test_tag_reused_while_in_flight_closes_connection(live: LiveServer) -> None:
    (live.root / "big").write_bytes(os.urandom(900_000))
    c = live.client(msize=1024 * 1024 + 24)
    c.walk(0, 1, ["big"])
    c.rpc(m.Tlopen(1, 0))
    # a large read runs on the worker pool; the same tag again is a violation
    frames = [m.Tread(1, 0, 900_000).encode(5) for _ in range(30)]
    c.send_raw(b"".join(frames))
    c.sock.settimeout(10)
    got = b""
    try:
        while chunk := c.sock.recv(1 << 20):
            got += chunk
    except ConnectionResetError:
        pass
    assert len(got) < 30 * 900_000  # closed before answering them all
    still_serves(live)


def test_nofid_cannot_name_a_fid(live: LiveServer) -> None:
    c = live.client()
    for msg in (m.Twalk(0, NOFID, []), m.Txattrwalk(0, NOFID, "")):
        with pytest.raises(ServerError) as ei:
            c.rpc(msg)
        assert ei.value.errno == errno.EBADF
    with pytest.raises(ServerError) as ei:
        c.rpc(m.Tattach(NOFID, NOFID, "root", "", 0))
    assert ei.value.errno == errno.EBADF


def test_attach_name_slash_and_odd_unames(live: LiveServer) -> None:
    c = live.client(attach=False)
    c.attach(0, "/")  # one export: '/' selects it like ''
    c.rpc(m.Tattach(1, NOFID, "²", "", 0xFFFFFFFF))  # not a number: nobody
    c.rpc(m.Tattach(2, NOFID, "99999999999", "", 0xFFFFFFFF))
    still_serves(live)
