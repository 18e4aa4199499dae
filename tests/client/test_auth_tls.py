"""The client authenticates with a key (Tauth, p9share-hmac-sha256-v1) and
speaks TLS to tls:HOST:PORT listeners."""

from __future__ import annotations

import base64
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from p9share.client import FS
from p9share.security.auth import Key, Keyring, generate_key, load_key, parse_key

from ..conftest import LiveServer
from ..server.test_tls import Pki, RecordingServer, make_tls_server, pki  # noqa: F401

KEY = parse_key(generate_key("vm1"))
OTHER = parse_key(generate_key("vm2"))


def test_key_object_authenticates(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(keyring=Keyring([KEY]), auth_required=True)
    (live.root / "secret").write_text("s3")
    with FS.connect(live.tcp, aname="export", key=KEY, timeout=10) as fs:
        assert fs.read_text("/secret") == "s3"


def test_key_file_path_authenticates(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    live = make_server(keyring=Keyring([KEY]), auth_required=True)
    key_file = tmp_path / "vm1.key"
    key_file.write_text(f"p9share-key-v1 vm1 {base64.b64encode(KEY.secret).decode()}\n")
    key_file.chmod(0o600)
    assert load_key(key_file) == KEY
    with FS.connect(live.unix, aname="export", key=str(key_file), timeout=10) as fs:
        assert fs.listdir("/") == []


def test_without_key_auth_required_server_refuses(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(keyring=Keyring([KEY]), auth_required=True)
    with pytest.raises(PermissionError):
        FS.connect(live.tcp, aname="export", timeout=10)


def test_unknown_key_is_refused(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(keyring=Keyring([KEY]), auth_required=True)
    with pytest.raises(OSError) as e:
        FS.connect(live.tcp, aname="export", key=OTHER, timeout=10)
    assert e.value.errno == errno.EACCES


def test_wrong_secret_for_a_known_id_is_refused(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(keyring=Keyring([KEY]), auth_required=True)
    with pytest.raises(OSError) as e:
        FS.connect(live.tcp, aname="export", key=Key("vm1", os.urandom(32)), timeout=10)
    assert e.value.errno == errno.EACCES


def test_tls_with_client_certificate(
    make_tls_server: Callable[..., tuple[RecordingServer, str]],  # noqa: F811
    pki: Pki,  # noqa: F811
) -> None:
    _, addr = make_tls_server()
    with FS.connect(addr, aname="export", tls_ca=pki.ca, tls_cert=pki.client_cert,
                    tls_key=pki.client_key, timeout=10) as fs:  # fmt: skip
        assert fs.read_bytes("/hello.txt") == b"hello over tls\n"
        fs.write_bytes("/up", os.urandom(300_000))
        assert len(fs.read_bytes("/up")) == 300_000


def test_tls_with_untrusted_server_is_refused(
    make_tls_server: Callable[..., tuple[RecordingServer, str]],  # noqa: F811
) -> None:
    _, addr = make_tls_server()
    with pytest.raises(OSError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        FS.connect(addr, aname="export", timeout=10)  # system CAs do not know the test CA
