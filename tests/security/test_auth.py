"""p9share-hmac-sha256-v1 (docs/protocol.md §11): the sans-IO exchange, the
documented test vector, key files, and Tauth on a live server."""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from p9share.client.raw import ServerError
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.security import auth
from p9share.security.auth import (
    AuthExchange,
    AuthState,
    ClientAuth,
    Key,
    KeyFileError,
    Keyring,
    generate_key,
    keygen,
    load_key,
    parse_key,
)

from ..conftest import LiveServer

# The worked example of docs/protocol.md §11.7.
V_SECRET = bytes(range(32))
V_KEY_FILE = "p9share-key-v1 vm1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
V_SERVER_NONCE = bytes(range(0xA0, 0xC0))
V_CLIENT_NONCE = bytes(range(0xC0, 0xE0))
V_CHALLENGE = (
    "1600703973686172652d686d61632d7368613235362d7631"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
)
V_TRANSCRIPT = (
    "1d000000703973686172652d686d61632d7368613235362d763120636c69656e74"
    "20000000a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "20000000c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "03000000766d31" "04000000726f6f74" "060000006578706f7274" "0400000000000000"
)  # fmt: skip
V_RESPONSE = (
    "0300766d31"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "48a3d8afff1268453b276806c3d27f50475876043fee330913eb313832f1e0e1"
)
V_PROOF = "2dbfb1a9496c1ac7e259183f06b9d3b7d3d47bf41f2e0c46f5aebb6cbc985d6d"

KEY = Key("vm1", V_SECRET)
OTHER = Key("vm2", bytes(range(1, 33)))


def exchange(
    keys: tuple[Key, ...] = (KEY,), uname: str = "root", aname: str = "export", n_uname: int = 0
) -> AuthExchange:
    return AuthExchange(Keyring(keys), uname, aname, n_uname)


def answer(ex: AuthExchange, key: Key = KEY, **names: object) -> ClientAuth:
    """Read ex's challenge and write the response of a client holding key."""
    kw: dict[str, object] = {"uname": ex.uname, "aname": ex.aname, "n_uname": ex.n_uname}
    kw.update(names)
    cl = ClientAuth(key, **kw)  # type: ignore[arg-type]
    resp = cl.response(ex.read(0, 4096))
    assert ex.write(0, resp) == len(resp)
    return cl


def refused(err: int, fn: Callable[[], object]) -> None:
    with pytest.raises(OSError) as e:
        fn()
    assert e.value.errno == err, e.value


# ---------------------------------------------------------- test vector --
def test_documented_test_vector() -> None:
    assert parse_key(V_KEY_FILE) == KEY and KEY.secret == V_SECRET
    ex = AuthExchange(Keyring([KEY]), "root", "export", 0, server_nonce=V_SERVER_NONCE)
    challenge = ex.read(0, 4096)
    assert challenge.hex() == V_CHALLENGE
    t = auth.transcript(
        auth.CLIENT_LABEL, V_SERVER_NONCE, V_CLIENT_NONCE, "vm1", "root", "export", 0
    )
    assert t.hex() == V_TRANSCRIPT
    # the MAC is plain HMAC-SHA256 over the transcript, independently computed
    assert hmac.new(V_SECRET, t, hashlib.sha256).hexdigest() == V_RESPONSE[-64:]
    cl = ClientAuth(KEY, "root", "export", 0, client_nonce=V_CLIENT_NONCE)
    response = cl.response(challenge)
    assert response.hex() == V_RESPONSE
    ex.write(0, response)
    proof = ex.read(0, 4096)
    assert proof.hex() == V_PROOF
    server_t = auth.transcript(
        auth.SERVER_LABEL, V_SERVER_NONCE, V_CLIENT_NONCE, "vm1", "root", "export", 0
    )
    assert hmac.new(V_SECRET, server_t, hashlib.sha256).hexdigest() == V_PROOF
    cl.verify_proof(proof)
    assert ex.authorise("root", "export", 0) == "vm1"


def test_documented_values_are_those_of_the_test_vector() -> None:
    """docs/protocol.md §11.7 and this test vector cannot drift apart."""
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    section = doc[doc.index("### §11.7 Worked example") : doc.index("### §11.8")]
    compact = "".join(section.split())
    for value in (V_CHALLENGE, V_TRANSCRIPT, V_RESPONSE[-64:], V_PROOF,
                  V_SERVER_NONCE.hex(), V_CLIENT_NONCE.hex(), V_SECRET.hex()):  # fmt: skip
        assert value in compact
    assert V_KEY_FILE in section


# ------------------------------------------------------ sans-IO exchange --
def test_good_key_verifies_both_ways() -> None:
    ex = exchange((OTHER, KEY))
    cl = answer(ex)
    assert ex.state is AuthState.VERIFIED and ex.key_id == "vm1"
    cl.verify_proof(ex.read(0, 4096))
    # partial reads at offsets give the same proof
    assert ex.read(0, 10) + ex.read(10, 100) == ex.read(0, 4096)
    assert ex.authorise("root", "export", 0) == "vm1"
    assert ex.state is AuthState.USED


def test_wrong_secret_is_refused_and_fails_the_fid() -> None:
    ex = exchange()
    impostor = Key("vm1", bytes(32))
    refused(errno.EACCES, lambda: answer(ex, impostor))
    assert ex.state is AuthState.FAILED and ex.key_id is None
    refused(errno.EACCES, lambda: ex.read(0, 100))
    refused(errno.EACCES, lambda: ex.write(0, b"x" * 80))
    refused(errno.EACCES, lambda: ex.authorise("root", "export", 0))


def test_unknown_key_id_is_refused() -> None:
    ex = exchange((KEY,))
    refused(errno.EACCES, lambda: answer(ex, OTHER))
    assert ex.state is AuthState.FAILED


def test_key_id_swapped_in_response_is_refused() -> None:
    """A valid MAC under vm1 relabelled as vm2 (whose secret the server also holds)."""
    ex = exchange((KEY, OTHER))
    cl = ClientAuth(KEY, "root", "export", 0)
    resp = cl.response(ex.read(0, 4096))
    forged = resp[:2] + b"vm2" + resp[5:]
    refused(errno.EACCES, lambda: ex.write(0, forged))


def test_tampered_nonces_are_refused() -> None:
    for where in ("server", "client"):
        ex = exchange()
        challenge = bytearray(ex.read(0, 4096))
        cl = ClientAuth(KEY, "root", "export", 0)
        if where == "server":
            challenge[-1] ^= 1  # the client answers a nonce the server never sent
            resp = cl.response(bytes(challenge))
        else:
            raw = bytearray(cl.response(bytes(challenge)))
            raw[5] ^= 1  # first byte of the client nonce, after len[2] "vm1"
            resp = bytes(raw)
        refused(errno.EACCES, lambda resp=resp, ex=ex: ex.write(0, resp))  # type: ignore[misc]


def test_response_replayed_on_a_new_auth_fid_is_refused() -> None:
    first = exchange()
    cl = ClientAuth(KEY, "root", "export", 0)
    resp = cl.response(first.read(0, 4096))
    first.write(0, resp)
    second = exchange()
    second.read(0, 4096)
    refused(errno.EACCES, lambda: second.write(0, resp))
    # and the accepted fid takes no second response
    refused(errno.EINVAL, lambda: first.write(0, resp))
    assert first.state is AuthState.VERIFIED


def test_attach_names_must_match_the_tauth() -> None:
    ex = exchange(uname="alice", aname="export", n_uname=1000)
    answer(ex)
    refused(errno.EACCES, lambda: ex.authorise("bob", "export", 1000))
    refused(errno.EACCES, lambda: ex.authorise("alice", "other", 1000))
    refused(errno.EACCES, lambda: ex.authorise("alice", "export", 0))
    assert ex.authorise("alice", "export", 1000) == "vm1"
    # one auth fid authorises one attach
    refused(errno.EACCES, lambda: ex.authorise("alice", "export", 1000))


def test_response_for_other_names_is_refused() -> None:
    """The MAC binds uname, aname and n_uname of the Tauth."""
    for names in ({"uname": "x"}, {"aname": "other"}, {"n_uname": 5}):
        ex = exchange()
        refused(errno.EACCES, lambda ex=ex, names=names: answer(ex, **names))  # type: ignore[misc]


def test_malformed_and_out_of_order_writes() -> None:
    good = ClientAuth(KEY, "root", "export", 0)
    # a response before the challenge was read
    ex = exchange()
    refused(errno.EINVAL, lambda: ex.write(0, b"\0" * 80))
    assert ex.state is AuthState.FAILED
    # a response at a nonzero offset
    ex = exchange()
    resp = good.response(ex.read(0, 4096))
    refused(errno.EINVAL, lambda: ex.write(1, resp))
    bad: list[bytes] = [
        b"",
        b"garbage",
        b"\xff" * 4096,  # oversize
        resp + b"x",  # length disagrees with the key id length
        resp[:-1],
        b"\x03\x00v\xffm" + resp[5:],  # key id not ASCII
        b"\x03\x00v/1" + resp[5:],  # key id outside the character set
        b"\x00\x00" + resp[5:] + b"abc",  # empty key id
    ]
    for data in bad:
        ex = exchange()
        ex.read(0, 4096)
        refused(errno.EINVAL, lambda ex=ex, data=data: ex.write(0, data))  # type: ignore[misc]
        assert ex.state is AuthState.FAILED  # no second try on the same nonce


def test_proof_and_attach_before_a_response() -> None:
    ex = exchange()
    refused(errno.EACCES, lambda: ex.authorise("root", "export", 0))
    # until a response is accepted a read returns the challenge, never a proof
    assert len(ex.read(0, 4096)) == auth.CHALLENGE_SIZE
    assert ex.read(auth.CHALLENGE_SIZE, 10) == b""
    cl = ClientAuth(KEY, "root", "export", 0)
    refused(errno.EINVAL, lambda: cl.verify_proof(b"\0" * 32))


def test_client_refuses_bad_challenge_and_bad_proof() -> None:
    cl = ClientAuth(KEY, "root", "export", 0)
    refused(errno.EPROTO, lambda: cl.response(b"short"))
    refused(errno.EPROTO, lambda: cl.response(b"\x16\x00" + b"x" * 22 + bytes(32)))
    ex = exchange()
    answer_cl = answer(ex)
    proof = bytearray(ex.read(0, 4096))
    proof[0] ^= 1
    refused(errno.EACCES, lambda: answer_cl.verify_proof(bytes(proof)))
    # a proof is never the client's own MAC reflected back
    refused(errno.EACCES, lambda: answer_cl.verify_proof(answer_cl.response(ex._challenge)[-32:]))


def test_comparisons_are_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    ex = exchange()
    cl = answer(ex)
    assert len(calls) == 1 and calls[0][1] == ex_last_mac(cl, ex)
    cl.verify_proof(ex.read(0, 4096))
    assert len(calls) == 2
    # an unknown key id still goes through the same comparison
    ex2 = exchange((OTHER,))
    with pytest.raises(OSError):
        answer(ex2)
    assert len(calls) == 3


def ex_last_mac(cl: ClientAuth, ex: AuthExchange) -> bytes:
    return cl.response(ex._challenge)[-32:]


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError):
        AuthExchange(Keyring(), "u", "a", 1 << 32)
    with pytest.raises(ValueError):
        AuthExchange(Keyring(), "u", "a", 0, server_nonce=b"short")
    with pytest.raises(ValueError):
        ClientAuth(KEY, "u", "a", -1)


# -------------------------------------------------------------- key files --
def test_generated_key_round_trips(tmp_path: Path) -> None:
    text = generate_key("laptop.vm-1")
    assert text.startswith("p9share-key-v1 laptop.vm-1 ") and text.endswith("\n")
    k = parse_key(text)
    assert k.key_id == "laptop.vm-1" and len(k.secret) == 32
    assert parse_key(generate_key("x")).secret != parse_key(generate_key("x")).secret
    assert repr(k) == "Key(key_id='laptop.vm-1')"  # the secret stays out of logs
    path = tmp_path / "k"
    out = keygen("vm9", str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == parse_key(out)
    with pytest.raises(KeyFileError, match="already exists"):
        keygen("vm9", str(path))
    assert parse_key(keygen()).key_id.startswith("client-")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "one key line"),
        (V_KEY_FILE + "\n" + V_KEY_FILE, "one key line"),
        ("p9share-key-v2 vm1 AAAA", "expected 'p9share-key-v1"),
        ("p9share-key-v1 vm1", "expected 'p9share-key-v1"),
        ("p9share-key-v1 -vm AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "bad key id"),
        ("p9share-key-v1 vm1 not*base64", "not valid base64"),
        ("p9share-key-v1 vm1 AAECAwQF", "6 bytes, not 32"),
    ],
)
def test_bad_key_text(text: str, why: str) -> None:
    with pytest.raises(KeyFileError, match=why):
        parse_key(text)


def test_key_text_allows_comments() -> None:
    assert parse_key(f"# made for vm1\n\n{V_KEY_FILE}\n") == KEY


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vm1.key"
    path.write_text(V_KEY_FILE + "\n")
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600"):
            load_key(path)
    os.chmod(path, 0o600)
    assert load_key(path) == KEY


def test_key_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"missing\.key: No such file"):
        load_key(tmp_path / "missing.key")
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(tmp_path)
    big = tmp_path / "big.key"
    big.write_text("#" * 5000)
    big.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"big\.key: larger than"):
        load_key(big)
    bad = tmp_path / "bad.key"
    bad.write_text("p9share-key-v1 vm1 AAAA\n")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"bad\.key: the secret is 3 bytes"):
        load_key(bad)


def test_keyring() -> None:
    ring = Keyring([KEY])
    assert "vm1" in ring and len(ring) == 1 and ring.secret("vm1") == V_SECRET
    assert ring.secret("vm2") is None
    with pytest.raises(KeyFileError, match="twice"):
        ring.add(Key("vm1", bytes(32)))


# ------------------------------------------------------------ live server --
def test_live_auth_attach_reads_a_file(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(keyring=Keyring([KEY, OTHER]), auth_required=True)
    (live.root / "hello").write_text("hello over auth")
    cl = live.client(attach=False)
    r = cl.auth_attach(0, 1, "root", "export", KEY)
    assert r.qid.type & c.QidType.DIR
    cl.walk(0, 2, ["hello"])
    cl.rpc(m.Tlopen(2, c.L_O_RDONLY))
    data = cl.rpc(m.Tread(2, 0, 100))
    assert isinstance(data, m.Rread) and bytes(data.data) == b"hello over auth"
    cl.close()


def test_live_wrong_key_is_refused_and_connection_survives(
    make_server: Callable[..., LiveServer],
) -> None:
    live = make_server(keyring=Keyring([KEY]))
    cl = live.client(attach=False)
    with pytest.raises(ServerError) as e:
        cl.auth_attach(0, 1, "root", "export", Key("vm1", bytes(32)))
    assert e.value.errno == errno.EACCES
    # the auth fid was clunked by auth_attach; the connection still works
    cl.auth_attach(0, 1, "root", "export", KEY)
    assert isinstance(cl.rpc(m.Tgetattr(0, c.GetattrMask.BASIC)), m.Rgetattr)
    cl.close()


def test_live_auth_fid_rules(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(keyring=Keyring([KEY]))
    cl = live.client(attach=False)
    r = cl.rpc(m.Tauth(1, "root", "export", 0))
    assert isinstance(r, m.Rauth) and r.aqid.type == c.QidType.AUTH
    # an auth fid is no file
    for req in (m.Twalk(1, 2, []), m.Tgetattr(1, c.GetattrMask.BASIC), m.Tlopen(1, 0)):
        with pytest.raises(ServerError) as e:
            cl.rpc(req)
        assert e.value.errno == errno.EBADF
    # attach before the exchange, and a garbage response
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tattach(0, 1, "root", "export", 0))
    assert e.value.errno == errno.EACCES
    cl.rpc(m.Tread(1, 0, 100))
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Twrite(1, 0, b"garbage"))
    assert e.value.errno == errno.EINVAL
    # a used-up exchange, a wrong aname, a fid that is not an auth fid
    cl.rpc(m.Tclunk(1))
    cl.rpc(m.Tauth(1, "root", "export", 0))
    ca = ClientAuth(KEY, "root", "export", 0)
    rd = cl.rpc(m.Tread(1, 0, 100))
    assert isinstance(rd, m.Rread)
    cl.rpc(m.Twrite(1, 0, ca.response(bytes(rd.data))))
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tattach(0, 1, "root", "", 0))
    assert e.value.errno == errno.EACCES
    cl.rpc(m.Tattach(0, 1, "root", "export", 0))
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tattach(5, 1, "root", "export", 0))
    assert e.value.errno == errno.EACCES
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tattach(5, 0, "root", "export", 0))
    assert e.value.errno == errno.EINVAL
    # the fid in use as an afid cannot be reused by Tauth
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tauth(0, "root", "export", 0))
    assert e.value.errno == errno.EEXIST
    cl.close()


def test_live_session_records_the_key(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(keyring=Keyring([KEY, OTHER]))
    cl = live.client(attach=False)
    cl.auth_attach(0, 1, "root", "export", KEY)
    # a second key on the same connection is refused; the first key again is fine
    with pytest.raises(ServerError) as e:
        cl.auth_attach(2, 1, "root", "export", OTHER)
    assert e.value.errno == errno.EACCES
    cl.auth_attach(2, 1, "root", "export", KEY)
    (conn,) = list(live.server._connections)
    session = conn.session
    assert session.auth_key == "vm1"
    cl.walk(0, 3, [])
    for n in (0, 2, 3):
        f = session.fids.acquire(n)
        session.fids.release(f)
        assert f.auth_key == "vm1"
    cl.close()


def test_live_auth_required_refuses_plain_attach(
    make_server: Callable[..., LiveServer],
) -> None:
    live = make_server(keyring=Keyring([KEY]), auth_required=True)
    cl = live.client(attach=False)
    with pytest.raises(ServerError) as e:
        cl.attach(0, "export")
    assert e.value.errno == errno.EACCES
    cl.auth_attach(0, 1, "root", "export", KEY)  # still usable, and authentication works
    cl.close()


def test_live_without_keyring_tauth_is_not_offered(
    make_server: Callable[..., LiveServer],
) -> None:
    live = make_server()
    cl = live.client(attach=False)
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tauth(1, "root", "export", 0))
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tattach(0, 1, "root", "export", 0))
    assert e.value.errno == errno.EINVAL
    cl.attach(0, "export")
    cl.close()


def test_auth_required_needs_a_keyring(make_server: Callable[..., LiveServer]) -> None:
    with pytest.raises(ValueError, match="needs a keyring"):
        make_server(auth_required=True)
