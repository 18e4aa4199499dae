"""tls:HOST:PORT listeners: mutual TLS on loopback with throwaway certificates
made by the openssl command line; a client is identified by its certificate."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p9share.client.raw import RawClient, connect
from p9share.policy import Export, Policy
from p9share.policy.peer import Peer
from p9share.protocol import messages as m
from p9share.server.server import Server
from p9share.server.transport import (
    Address,
    AddressError,
    TlsConfigError,
    TlsSettings,
    parse_address,
    server_context,
)

O_RDONLY = 0

OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
"""

# a comma in the CN checks RFC 4514 escaping against openssl's own output
CLIENT_SUBJ = "/O=p9share test/OU=vms/CN=vm1, guest"


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: str
    server_cert: str
    server_key: str
    client_cert: str  # signed by the CA
    client_key: str
    rogue_cert: str  # self-signed, same subject as client_cert
    rogue_key: str

    def settings(self, **kw: object) -> TlsSettings:
        return TlsSettings(self.server_cert, self.server_key, self.ca, **kw)  # type: ignore[arg-type]


def _openssl(cwd: Path, *args: str) -> str:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"
    return r.stdout


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    (d / "openssl.cnf").write_text(OPENSSL_CNF)
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    cfg = ["-config", "openssl.cnf"]
    _openssl(d, "req", "-x509", *cfg, "-extensions", "ca_ext", *newkey, "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/O=p9share test/CN=test CA")  # fmt: skip
    for serial, name, subj, ext in ((2, "server", "/CN=127.0.0.1", "server_ext"),
                                    (3, "client", CLIENT_SUBJ, "client_ext")):  # fmt: skip
        _openssl(d, "req", "-new", *cfg, *newkey, "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", subj)  # fmt: skip
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", str(serial), "-days", "2", "-extfile",
                 "openssl.cnf", "-extensions", ext, "-out", f"{name}.pem")  # fmt: skip
    _openssl(d, "req", "-x509", *cfg, "-extensions", "client_ext", *newkey, "-keyout",
             "rogue.key", "-out", "rogue.pem", "-days", "2", "-subj", CLIENT_SUBJ)  # fmt: skip
    return Pki(d, *(str(d / f) for f in ("ca.pem", "server.pem", "server.key", "client.pem",
                                         "client.key", "rogue.pem", "rogue.key")))  # fmt: skip


class RecordingServer(Server):
    """Remembers the Peer of every session it creates."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.peers: list[Peer] = []

    def new_session(self, peer: Peer):  # type: ignore[no-untyped-def]
        self.peers.append(peer)
        return super().new_session(peer)


@pytest.fixture
def make_tls_server(
    tmp_path: Path, pki: Pki
) -> Iterator[Callable[..., tuple[RecordingServer, str]]]:
    servers: list[Server] = []

    def make(**settings: object) -> tuple[RecordingServer, str]:
        root = tmp_path / "export"
        root.mkdir(exist_ok=True)
        (root / "hello.txt").write_bytes(b"hello over tls\n")
        policy = Policy()
        policy.exports["export"] = Export("export", str(root), False)
        srv = RecordingServer(policy)
        servers.append(srv)
        addr = srv.listen(parse_address("tls:127.0.0.1:0"), tls=pki.settings(**settings))
        return srv, str(addr)

    yield make
    for s in servers:
        s.stop()


def good_client(addr: str, pki: Pki, attach: bool = True, msize: int = 65536 + 24) -> RawClient:
    c = RawClient.connect(addr, timeout=10, tls_ca=pki.ca, tls_cert=pki.client_cert,
                          tls_key=pki.client_key)  # fmt: skip
    c.version(msize)
    if attach:
        c.attach(0, "export")
    return c


def read_file(c: RawClient, name: str, fid: int = 1) -> bytes:
    c.walk(0, fid, [name])
    c.rpc(m.Tlopen(fid, O_RDONLY))
    r = c.rpc(m.Tread(fid, 0, 4096))
    assert isinstance(r, m.Rread)
    c.rpc(m.Tclunk(fid))
    return bytes(r.data)


def refused(addr: str, pki: Pki, cert: str | None, key: str | None) -> bool:
    """True when the server ends the connection before answering Tversion.
    Under TLS 1.3 the client's handshake may complete before the server has
    checked the certificate, so the refusal can show on the first read."""
    try:
        c = RawClient.connect(addr, timeout=10, tls_ca=pki.ca, tls_cert=cert, tls_key=key)
    except OSError:
        return True
    with c:
        try:
            c.version()
        except OSError:
            return True
    return False


# ----------------------------------------------------------------- addresses --
def test_parse_address_accepts_tls() -> None:
    a = parse_address("tls:127.0.0.1:5640")
    assert a == Address("tls", host="127.0.0.1", port=5640)
    assert str(a) == "tls:127.0.0.1:5640"
    b = parse_address("tls:[::1]:0")
    assert (b.kind, b.host, b.port) == ("tls", "::1", 0)
    assert str(b) == "tls:[::1]:0"
    assert parse_address(str(b)) == b


@pytest.mark.parametrize("text", ["tls:", "tls:127.0.0.1", "tls::5640", "tls:host:65536",
                                  "tls:host:-1", "tls:host:port"])  # fmt: skip
def test_parse_address_refuses_bad_tls(text: str) -> None:
    with pytest.raises(AddressError, match=r"tls|port"):
        parse_address(text)


def test_tls_listener_needs_settings(pki: Pki) -> None:
    srv = Server(Policy())
    try:
        with pytest.raises(AddressError, match="needs TLS settings"):
            srv.listen(parse_address("tls:127.0.0.1:0"))
        with pytest.raises(AddressError, match="TLS settings given for a tcp listener"):
            srv.listen(parse_address("tcp:127.0.0.1:0"), tls=pki.settings())
        assert srv.addresses == []
    finally:
        srv.stop()


# ------------------------------------------------------------ configuration --
def test_bad_certificate_files_name_the_file(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    cases = [
        (TlsSettings(missing, pki.server_key, pki.ca), missing),
        (TlsSettings(pki.server_cert, missing, pki.ca), missing),
        (TlsSettings(pki.server_cert, pki.server_key, missing), missing),
        (TlsSettings(str(garbage), pki.server_key, pki.ca), str(garbage)),
        (TlsSettings(pki.server_cert, str(garbage), pki.ca), str(garbage)),
        (TlsSettings(pki.server_cert, pki.server_key, str(garbage)), str(garbage)),
        # a key that is not the certificate's
        (TlsSettings(pki.server_cert, pki.client_key, pki.ca), pki.client_key),
        (TlsSettings(pki.server_cert, pki.server_key, ""), "client CA"),
        (TlsSettings(pki.server_cert, pki.server_key, pki.ca, handshake_timeout=0), "timeout"),
    ]
    for settings, named in cases:
        with pytest.raises(TlsConfigError) as e:
            server_context(settings)
        assert named in str(e.value), (settings, str(e.value))
    # and through the server, as the AddressError the CLI reports
    srv = Server(Policy())
    try:
        with pytest.raises(AddressError, match=r"nope\.pem"):
            srv.listen(parse_address("tls:127.0.0.1:0"), tls=cases[0][0])
    finally:
        srv.stop()


def test_encrypted_key_is_an_error_not_a_prompt(pki: Pki, tmp_path: Path) -> None:
    enc = tmp_path / "enc.key"
    _openssl(tmp_path, "pkey", "-in", pki.server_key, "-aes256", "-passout", "pass:secret",
             "-out", str(enc))  # fmt: skip
    with pytest.raises(TlsConfigError, match="encrypted"):
        server_context(TlsSettings(pki.server_cert, str(enc), pki.ca))


# ---------------------------------------------------------------- identity --
def test_good_client_reads_and_is_identified_by_its_certificate(
    make_tls_server: Callable[..., tuple[RecordingServer, str]], pki: Pki
) -> None:
    srv, addr = make_tls_server()
    with good_client(addr, pki) as c:
        assert read_file(c, "hello.txt") == b"hello over tls\n"
        assert c.sock.version() == "TLSv1.3"  # type: ignore[attr-defined]
    fp = _openssl(pki.dir, "x509", "-in", pki.client_cert, "-noout", "-fingerprint", "-sha256")
    subject = _openssl(pki.dir, "x509", "-in", pki.client_cert, "-noout", "-subject",
                       "-nameopt", "RFC2253")  # fmt: skip
    assert len(srv.peers) == 1
    peer = srv.peers[0]
    assert peer.transport == "tls" and peer.listener == addr
    assert peer.address == "127.0.0.1" and peer.port
    assert peer.tls_fingerprint == fp.split("=", 1)[1].strip().replace(":", "").lower()
    assert peer.tls_subject == subject.split("=", 1)[1].strip()
    assert peer.tls_subject == "CN=vm1\\, guest,OU=vms,O=p9share test"


def test_clients_without_a_good_certificate_are_refused(
    make_tls_server: Callable[..., tuple[RecordingServer, str]],
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, addr = make_tls_server()
    caplog.set_level(logging.WARNING, logger="p9share.server")
    with good_client(addr, pki) as c:
        assert refused(addr, pki, None, None)  # no certificate
        assert refused(addr, pki, pki.rogue_cert, pki.rogue_key)  # self-signed, same subject
        assert refused(addr, pki, pki.server_cert, pki.server_key)  # CA-signed, not clientAuth
        # the good client is untouched
        assert read_file(c, "hello.txt") == b"hello over tls\n"
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failures) == 3, [r.getMessage() for r in caplog.records]
    assert len(srv.peers) == 1  # no session was ever made for a refused client


def test_plain_9p_on_a_tls_port_is_refused(
    make_tls_server: Callable[..., tuple[RecordingServer, str]],
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="p9share.server")
    srv, addr = make_tls_server()
    plain = RawClient.connect(addr.replace("tls:", "tcp:"), timeout=10)
    with plain, pytest.raises(OSError):
        plain.version()  # a Tversion is no ClientHello
    with good_client(addr, pki) as c:
        assert read_file(c, "hello.txt") == b"hello over tls\n"
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)
    assert len(srv.peers) == 1


def test_optional_client_certificate(
    make_tls_server: Callable[..., tuple[RecordingServer, str]], pki: Pki
) -> None:
    srv, addr = make_tls_server(require_client_cert=False)
    c = RawClient.connect(addr, timeout=10, tls_ca=pki.ca)
    with c:
        c.version()
        c.attach(0, "export")
    assert srv.peers[0].transport == "tls" and srv.peers[0].tls_fingerprint is None
    # a certificate that is presented must still verify
    assert refused(addr, pki, pki.rogue_cert, pki.rogue_key)


def test_client_refuses_a_server_it_cannot_verify(
    make_tls_server: Callable[..., tuple[RecordingServer, str]], pki: Pki
) -> None:
    _, addr = make_tls_server()
    with pytest.raises(OSError, match="certificate verify failed"):
        connect(addr, 10, tls_ca=pki.rogue_cert, tls_cert=pki.client_cert,
                tls_key=pki.client_key)  # fmt: skip


# --------------------------------------------------------------- robustness --
def test_silent_client_does_not_block_other_handshakes(
    make_tls_server: Callable[..., tuple[RecordingServer, str]],
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="p9share.server")
    _, addr = make_tls_server(handshake_timeout=1.5)
    port = int(addr.rsplit(":", 1)[1])
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    with silent:
        t0 = time.monotonic()
        with good_client(addr, pki) as c:
            assert read_file(c, "hello.txt") == b"hello over tls\n"
        # the good client finished while the silent one was still waiting
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.recv(1)
        assert time.monotonic() - t0 < 1.5
        # and the silent one is dropped once its time is up
        silent.setblocking(True)
        silent.settimeout(5)
        assert silent.recv(1) == b""
        assert time.monotonic() - t0 < 4
    assert any("no TLS handshake within" in r.getMessage() for r in caplog.records)


def test_trickling_client_gains_no_time(
    make_tls_server: Callable[..., tuple[RecordingServer, str]],
) -> None:
    """The handshake timeout is a deadline, not a per-read timeout."""
    _, addr = make_tls_server(handshake_timeout=1.0)
    port = int(addr.rsplit(":", 1)[1])
    hello_start = b"\x16\x03\x01\x02\x00" + b"\x01" * 40  # a ClientHello that never ends
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.monotonic()
        s.settimeout(0.3)
        closed = False
        for byte in hello_start:
            try:
                s.sendall(bytes([byte]))
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
        assert closed
        assert time.monotonic() - t0 < 3


def test_pooled_replies_and_inline_replies_interleave_safely(
    make_tls_server: Callable[..., tuple[RecordingServer, str]], pki: Pki, tmp_path: Path
) -> None:
    """Large reads are answered from worker threads while the connection's
    thread keeps reading requests: the TLS layer is used from several threads
    at once, and every reply must still arrive whole."""
    srv, addr = make_tls_server()
    blob = os.urandom(1 << 20)
    (tmp_path / "export" / "blob").write_bytes(blob)
    with good_client(addr, pki, msize=256 * 1024 + 24) as c:
        c.walk(0, 1, ["blob"])
        c.rpc(m.Tlopen(1, O_RDONLY))
        chunk = 200 * 1024  # above the server's pooled size
        want: dict[int, tuple[str, int]] = {}
        for i in range(40):
            off = (i * 7919 * 13) % (len(blob) - chunk)
            want[c.send(m.Tread(1, off, chunk))] = ("read", off)
            want[c.send(m.Tgetattr(0, 0x7FF))] = ("getattr", 0)
        while want:
            tag, r = c.recv()
            kind, off = want.pop(tag)
            if kind == "read":
                assert isinstance(r, m.Rread) and bytes(r.data) == blob[off : off + chunk]
            else:
                assert isinstance(r, m.Rgetattr)
    assert srv.pool is not None


def test_stop_ends_tls_connections(
    make_tls_server: Callable[..., tuple[RecordingServer, str]], pki: Pki
) -> None:
    srv, addr = make_tls_server()
    c = good_client(addr, pki)
    with c:
        srv.stop()
        c.sock.settimeout(5)
        with pytest.raises(OSError):
            c.version()
        deadline = time.monotonic() + 5
        while srv.connection_count() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.connection_count() == 0
