"""The policy file: what it accepts, and one clear line for what it does not."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from p9share.policy import Rights
from p9share.policy.config import ConfigError, load_config, parse_config
from p9share.policy.idmap import IdRange
from p9share.policy.peer import Peer


def fake_keys(path: str) -> tuple[str, bytes]:
    if "missing" in path:
        raise OSError(2, f"{path}: no such file")
    return Path(path).stem, b"k" * 32


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "policy.toml"
    p.write_text(textwrap.dedent(text))
    return str(p)


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    out = {}
    for n in ("src", "docs"):
        (tmp_path / n).mkdir()
        out[n] = str(tmp_path / n)
    return out


FULL = """
[server]
listen = ["tcp:127.0.0.1:5640", {{ address = "unix:/run/vm1.sock", name = "vm1" }}]
msize = 65560
audit_log = "/var/log/p9share.jsonl"
user = "nobody"
landlock = "required"

[exports.src]
path = "{src}"
idmap = "range"
uid_map = [[0, 100000, 65536]]
gid_map = [[0, 100000, 65536]]
max_file_size = 1048576

[exports.docs]
path = "{docs}"
readonly = true
idmap = "mapped"
xattr_layout = "virtfs"

[limits]
max_fids = 5000

[clients.vm1]
match = {{ listener = "vm1" }}
exports = {{ src = "rw", docs = {{ access = "ro", xattrs = ["user", "system"] }} }}
allow = {{ fifos = true }}
limits = {{ ops_per_second = 1000 }}

[clients.lab]
match = [{{ network = "127.0.0.0/8" }}, {{ peer_uid = 1000 }}]
key_file = "/etc/p9share/lab.key"
exports = {{ docs = "ro" }}
"""


def test_full_policy_loads(tmp_path: Path, dirs: dict[str, str]) -> None:
    cfg = load_config(write(tmp_path, FULL.format(**dirs)), key_loader=fake_keys)
    assert [(ln.address, ln.name) for ln in cfg.listeners] == [
        ("tcp:127.0.0.1:5640", "tcp:127.0.0.1:5640"),
        ("unix:/run/vm1.sock", "vm1"),
    ]
    assert cfg.msize == 65560 and cfg.audit_log == "/var/log/p9share.jsonl"
    assert cfg.sandbox.user == "nobody" and cfg.sandbox.landlock == "required"
    src, docs = cfg.policy.exports["src"], cfg.policy.exports["docs"]
    assert src.idmap.mode == "range" and src.idmap.uid_map == (IdRange(0, 100000, 65536),)
    assert src.max_file_size == 1048576 and not src.readonly
    assert docs.readonly and docs.idmap.mode == "mapped" and docs.idmap.xattr_layout == "virtfs"
    assert cfg.limits == {"max_fids": 5000}
    assert cfg.policy.clients is not None
    vm1, lab = cfg.policy.clients["vm1"], cfg.policy.clients["lab"]
    assert vm1.grants["src"] == Rights(fifos=True)
    assert vm1.grants["docs"] == Rights(
        readonly=True, fifos=True, xattr_namespaces=frozenset({"user", "system"})
    )
    assert vm1.limits == {"ops_per_second": 1000}
    assert lab.matches[0].network == ipaddress.ip_network("127.0.0.0/8")
    assert lab.matches[1].peer_uid == 1000
    assert lab.matches[2].key == "lab"  # the key file adds a proven-key match
    assert cfg.policy.keys == {"lab": b"k" * 32}
    # identification by what the host can trust
    assert cfg.policy.identify(Peer("vm1", "unix", uid=0, pid=1)) is vm1
    assert cfg.policy.identify(Peer("tcp:127.0.0.1:5640", "tcp", "127.0.0.5", 999)) is lab
    assert cfg.policy.identify(Peer("tcp:127.0.0.1:5640", "tcp", "::ffff:127.0.0.1", 9)) is lab
    assert cfg.policy.identify(Peer("unix:/x", "unix", uid=1000, pid=3)) is lab
    assert cfg.policy.identify(Peer("unix:/x", "unix", uid=1001, pid=3)) is None
    # a connection nothing matches by transport may still prove lab's key
    assert cfg.policy.admits(Peer("unix:/x", "unix", uid=1001, pid=3))
    assert cfg.policy.identify(Peer("unix:/x", "unix", uid=1001, pid=3), key="lab") is lab


def test_require_key_adds_the_key_to_every_match(tmp_path: Path, dirs: dict[str, str]) -> None:
    cfg = load_config(write(tmp_path, f"""
        [exports.src]
        path = "{dirs['src']}"
        [clients.a]
        match = {{ network = "127.0.0.1/32" }}
        key_file = "/k/a.key"
        require_key = true
        exports = {{ src = "rw" }}
    """), key_loader=fake_keys)  # fmt: skip
    peer = Peer("tcp:127.0.0.1:5640", "tcp", "127.0.0.1", 5)
    assert cfg.policy.identify(peer) is None
    assert not cfg.policy.admits(Peer("tcp:x", "tcp", "10.1.1.1", 5))
    assert cfg.policy.admits(peer)
    assert cfg.policy.clients is not None
    assert cfg.policy.identify(peer, key="a") is cfg.policy.clients["a"]


BAD = [
    ("[exports.src\npath = 1", "line 1"),
    ("[exports.src]\npath = '{src}'\nreadonyl = true\n[clients.a]\nmatch={{peer_uid=1}}\nexports={{src='rw'}}",
     "exports.src.readonyl: unknown key"),
    ("[exports.src]\npath = 'relative'", "exports.src.path: 'relative' is not an absolute path"),
    ("[exports.src]\npath = '/nonexistent/p9share'", "exports.src.path: /nonexistent/p9share: no such directory"),
    ("[exports.src]\npath = '{src}'\nreadonly = 'yes'", "exports.src.readonly: expected bool"),
    ("[exports.src]\npath = '{src}'\nidmap = 'magic'", "exports.src.idmap: 'magic' is not one of"),
    ("[exports.src]\npath = '{src}'\nidmap = 'range'", "exports.src.uid_map: an id range map needs"),
    ("[exports.src]\npath = '{src}'\nidmap = 'range'\nuid_map = [[0, 1000, 10], [5, 2000, 10]]\ngid_map = [[0,1,1]]",
     "exports.src.uid_map[1]: guest ids overlap uid_map[0]"),
    ("[exports.src]\npath = '{src}'\nidmap = 'range'\nuid_map = [[0, 1000]]", "exports.src.uid_map[0]: expected"),
    ("[exports.src]\npath = '{src}'", "clients: no clients"),
    ("[clients.a]\nmatch={{peer_uid=1}}", "exports: no exports"),
    ("[exports.src]\npath = '{src}'\n[clients.a]\nexports={{src='rw'}}", "clients.a.match: missing"),
    ("[exports.src]\npath = '{src}'\n[clients.a]\nmatch={{}}\nexports={{src='rw'}}",
     "clients.a.match[0]: an empty match would admit anyone"),
    ("[exports.src]\npath = '{src}'\n[clients.a]\nmatch={{peer_uid=1}}\nexports={{nope='rw'}}",
     "clients.a.exports.nope: no such export"),
    ("[exports.src]\npath = '{src}'\n[clients.a]\nmatch={{peer_uid=1}}\nexports={{src='rwx'}}",
     "clients.a.exports.src: 'rwx' is not ro or rw"),
    ("[exports.src]\npath = '{src}'\n[clients.a]\nmatch={{network='300.0.0.0/8'}}\nexports={{src='rw'}}",
     "clients.a.match[0].network:"),
    ("[exports.src]\npath = '{src}'\n[clients.a]\nmatch={{listener='vm9'}}\nexports={{src='rw'}}\n"
     "[server]\nlisten=['tcp:127.0.0.1:1']", "clients.a.match[0].listener: 'vm9' names no listener"),
    ("[exports.src]\npath = '{src}'\n[clients.a]\nmatch={{peer_uid=1}}\nexports={{src={{access='rw', xattrs=['bogus']}}}}",
     "clients.a.exports.src.xattrs: 'bogus' is not one of"),
    ("[exports.src]\npath = '{src}'\n[clients.a]\nkey_file='/k/missing.key'\nexports={{src='rw'}}",
     "clients.a.key_file:"),
    ("[server]\nlisten=['tls:127.0.0.1:1']\n[exports.src]\npath = '{src}'", "server.tls: a tls: listener needs"),
    ("[server]\nmsize = 10\n[exports.src]\npath = '{src}'", "server.msize: 10 is out of range"),
    ("[server]\nlanding = 'x'\n[exports.src]\npath = '{src}'", "server.landing: unknown key"),
    ("[limits]\nmax_fids = -1\n[exports.src]\npath = '{src}'", "limits.max_fids: expected a number >= 0"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_policy_names_file_key_and_problem(
    tmp_path: Path, dirs: dict[str, str], text: str, message: str
) -> None:
    path = write(tmp_path, text.format(**dirs))
    with pytest.raises(ConfigError) as ei:
        load_config(path, key_loader=fake_keys)
    line = str(ei.value)
    assert "\n" not in line
    assert line.startswith(path + ": ")
    assert message in line


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.toml"))


def test_parse_config_from_a_mapping(dirs: dict[str, str]) -> None:
    cfg = parse_config(
        {"exports": {"src": {"path": dirs["src"], "idmap": "squash", "squash_uid": 1000,
                             "squash_gid": 1000, "guest_uid": 0, "guest_gid": 0}},
         "clients": {"a": {"match": {"peer_uid": 0}, "exports": {"src": "rw"}}}},
        "inline",
    )  # fmt: skip
    im = cfg.policy.exports["src"].idmap
    assert im.owner(5, 6) == (1000, 1000)
    assert im.guest_ids(1000, 1000) == (0, 0)
