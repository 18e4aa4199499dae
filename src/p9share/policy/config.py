"""The policy file: TOML, validated on load.

Every problem is reported as one line naming the file and the key (or, for a
TOML syntax error, the line and column) and what is wrong. Unknown keys are
errors: a misspelt `readonly` must not silently leave an export writable.
See docs/security.md for the whole format with an example.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import Client, Export, Match, Policy, Rights
from .idmap import IdMap, IdRange, id_range_map, mapped, passthrough, squash

ID_MAX = 0xFFFFFFFE  # 2**32 - 1 is the wire's "no id"


class ConfigError(ValueError):
    """A policy file that cannot be used; str() is the one-line reason."""


@dataclass(frozen=True, slots=True)
class Listener:
    address: str  # tcp:HOST:PORT, unix:PATH, fd:N, tls:HOST:PORT, systemd:NAME or vhost-user:PATH
    name: str  # what clients match on (defaults to the address as written)
    export: str | None = None  # vhost-user: the export it serves (None: the only one)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    user: str | None = None  # service account to switch to after binding
    group: str | None = None
    landlock: str = "auto"  # "auto" | "required" | "off"
    seccomp: str = "auto"  # "auto" | "required" | "off": the system-call filter


@dataclass(slots=True)
class Config:
    """Everything a policy file says: the policy and the server's settings."""

    policy: Policy
    source: str = "<command line>"
    listeners: list[Listener] = field(default_factory=list)
    msize: int | None = None
    audit_log: str | None = None
    tls: TlsFiles | None = None
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    auth_required: bool = False
    limits: Mapping[str, Any] = field(default_factory=dict)  # defaults for every client
    key_files: list[str] = field(default_factory=list)  # read again on reload
    max_connections: int = 128  # served at once by the whole server (0: no cap)


KeyLoader = Callable[[str], tuple[str, bytes]]  # path -> (key id, secret)


def _default_key_loader(path: str) -> tuple[str, bytes]:
    from ..security.auth import load_key

    key = load_key(path)
    return key.key_id, key.secret


class _Reader:
    """Typed access to one TOML table, with errors that name the key."""

    def __init__(self, src: str, table: Mapping[str, Any], where: str) -> None:
        self.src, self.table, self.where = src, table, where
        self.used: set[str] = set()

    def err(self, key: str | None, problem: str) -> ConfigError:
        at = f"{self.where}.{key}" if self.where and key else (key or self.where or "top level")
        return ConfigError(f"{self.src}: {at}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        # bool is an int in Python: never accept one for the other
        kinds = kind if isinstance(kind, tuple) else (kind,)
        bad_bool = isinstance(value, bool) and bool not in kinds
        if bad_bool or not isinstance(value, kind):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise self.err(
                key, f"expected {_tomlname(names)}, got {_tomlname(type(value).__name__)}"
            )
        return value

    def integer(
        self, key: str, default: int | None = None, lo: int = 0, hi: int = 2**63
    ) -> int | None:
        v = self.get(key, int, default)
        if v is not None and not lo <= v <= hi:
            raise self.err(key, f"{v} is out of range {lo}..{hi}")
        return v  # type: ignore[no-any-return]

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        v = self.get(key, str, default)
        if v not in choices:
            raise self.err(key, f"{v!r} is not one of {', '.join(choices)}")
        return v  # type: ignore[no-any-return]

    def sub(self, key: str) -> _Reader:
        t = self.get(key, dict, {})
        return _Reader(self.src, t, f"{self.where}.{key}" if self.where else key)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.err(unknown[0], "unknown key")


def _tomlname(pyname: str) -> str:
    return {"dict": "table", "str": "string", "int": "integer", "list": "array",
            "bool": "boolean", "float": "float"}.get(pyname, pyname)  # fmt: skip


def load_config(path: str, key_loader: KeyLoader = _default_key_loader) -> Config:
    """Read and validate a policy file. Raises ConfigError."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    return parse_config(raw, path, key_loader)


def parse_config(
    raw: Mapping[str, Any], src: str = "<policy>", key_loader: KeyLoader = _default_key_loader
) -> Config:
    top = _Reader(src, raw, "")
    cfg = Config(Policy(clients={}), source=src)
    _server(top.sub("server"), cfg)
    exports = top.sub("exports")
    for name in exports.table:
        cfg.policy.exports[name] = _export(exports.sub(name), name)
    exports.used.update(exports.table)
    if not cfg.policy.exports:
        raise top.err("exports", "no exports: name at least one [exports.NAME] with a path")
    cfg.limits = _limits(top.sub("limits"))
    clients = top.sub("clients")
    assert cfg.policy.clients is not None
    names = {ln.name for ln in cfg.listeners}
    for name in clients.table:
        cl = _client(clients.sub(name), name, cfg.policy, names, key_loader, cfg.key_files)
        cfg.policy.clients[name] = cl
    clients.used.update(clients.table)
    if not cfg.policy.clients:
        raise top.err("clients", "no clients: nobody could connect; add [clients.NAME]")
    top.done()
    return cfg


def _server(r: _Reader, cfg: Config) -> None:
    for i, item in enumerate(r.get("listen", list, [])):
        if isinstance(item, str):
            cfg.listeners.append(Listener(item, item))
        elif isinstance(item, dict):
            lr = _Reader(r.src, item, f"{r.where}.listen[{i}]")
            addr = lr.get("address", str)
            if addr is None:
                raise lr.err("address", "missing")
            export = lr.get("export", str)
            if export is not None and not addr.startswith("vhost-user:"):
                raise lr.err("export", "only a vhost-user listener names its export")
            cfg.listeners.append(Listener(addr, lr.get("name", str, addr), export))
            lr.done()
        else:
            raise r.err(f"listen[{i}]", "expected an address string or {address=, name=}")
    seen: set[str] = set()
    for ln in cfg.listeners:
        if ln.name in seen:
            raise r.err("listen", f"listener name {ln.name!r} is used twice")
        seen.add(ln.name)
    cfg.msize = r.integer("msize", None, 4096, 16 * 1024 * 1024)
    cfg.audit_log = r.get("audit_log", str)
    cfg.auth_required = r.get("auth_required", bool, False)
    cfg.max_connections = r.integer("max_connections", cfg.max_connections, 0, 1_000_000) or 0
    user, group = r.get("user", (str, int)), r.get("group", (str, int))
    cfg.sandbox = SandboxSettings(
        str(user) if user is not None else None,
        str(group) if group is not None else None,
        r.choice("landlock", ("auto", "required", "off"), "auto"),
        r.choice("seccomp", ("auto", "required", "off"), "auto"),
    )
    tls = r.sub("tls")
    if tls.table:
        files = [tls.get(k, str) for k in ("cert", "key", "client_ca")]
        for k, v in zip(("cert", "key", "client_ca"), files, strict=True):
            if v is None:
                raise tls.err(k, "missing (a TLS listener needs cert, key and client_ca)")
        cfg.tls = TlsFiles(*files)
        tls.done()
    if any(ln.address.startswith("tls:") for ln in cfg.listeners) and cfg.tls is None:
        raise r.err("tls", "a tls: listener needs [server.tls] with cert, key and client_ca")
    r.done()


def _export(r: _Reader, name: str) -> Export:
    if not name or "/" in name:
        raise r.err(None, "an export name must be non-empty and contain no '/'")
    path = r.get("path", str)
    if path is None:
        raise r.err("path", "missing")
    if not os.path.isabs(path):
        raise r.err("path", f"{path!r} is not an absolute path")
    if not os.path.isdir(path):
        raise r.err("path", f"{path}: no such directory")
    exp = Export(
        name,
        os.path.normpath(path),
        readonly=r.get("readonly", bool, False),
        idmap=_idmap(r),
        cross_mounts=r.get("cross_mounts", bool, True),
        max_file_size=r.integer("max_file_size", 0) or 0,
        quota_bytes=r.integer("quota_bytes", 0) or 0,
        quota_files=r.integer("quota_files", 0) or 0,
        cache=_choice(r, "cache", ("none", "auto", "always"), "auto"),
    )
    r.done()
    return exp


def _choice(r: _Reader, key: str, allowed: tuple[str, ...], default: str) -> str:
    value: str = r.get(key, str, default)
    if value not in allowed:
        raise r.err(key, f"{value!r}: expected one of {', '.join(allowed)}")
    return value


def _idmap(r: _Reader) -> IdMap:
    mode = r.get("idmap", str)
    if mode is None:
        from . import default_idmap

        return default_idmap()
    if mode == "passthrough":
        return passthrough(_ranges(r, "allowed_uids"), _ranges(r, "allowed_gids"))
    if mode == "squash":
        return squash(
            r.integer("squash_uid", None, 0, ID_MAX),
            r.integer("squash_gid", None, 0, ID_MAX),
            r.integer("guest_uid", None, 0, ID_MAX),
            r.integer("guest_gid", None, 0, ID_MAX),
        )
    if mode == "mapped":
        return mapped(r.choice("xattr_layout", ("p9share", "virtfs"), "p9share"))
    if mode == "range":
        uid_map, gid_map = _idranges(r, "uid_map"), _idranges(r, "gid_map")
        unmapped = r.choice("unmapped", ("refuse", "squash"), "refuse")
        su, sg = r.integer("squash_uid", None, 0, ID_MAX), r.integer("squash_gid", None, 0, ID_MAX)
        if unmapped == "squash" and (su is None or sg is None):
            raise r.err("unmapped", "squash needs squash_uid and squash_gid")
        return id_range_map(uid_map, gid_map, unmapped, su, sg)
    raise r.err("idmap", f"{mode!r} is not one of passthrough, squash, mapped, range")


def _ranges(r: _Reader, key: str) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for i, item in enumerate(r.get(key, list, [])):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
            or not 0 <= item[0] <= item[1] <= ID_MAX
        ):
            raise r.err(f"{key}[{i}]", "expected [first, last] ids with first <= last")
        out.append((item[0], item[1]))
    return tuple(out)


def _idranges(r: _Reader, key: str) -> tuple[IdRange, ...]:
    out: list[IdRange] = []
    for i, item in enumerate(r.get(key, list, [])):
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
            or item[2] < 1
            or item[0] < 0
            or item[1] < 0
            or item[0] + item[2] - 1 > ID_MAX
            or item[1] + item[2] - 1 > ID_MAX
        ):
            raise r.err(f"{key}[{i}]", "expected [guest_first, host_first, count], count >= 1")
        rng = IdRange(*item)
        for j, other in enumerate(out):
            if rng.guest < other.guest + other.count and other.guest < rng.guest + rng.count:
                raise r.err(f"{key}[{i}]", f"guest ids overlap {key}[{j}]")
            if rng.host < other.host + other.count and other.host < rng.host + rng.count:
                raise r.err(f"{key}[{i}]", f"host ids overlap {key}[{j}]")
        out.append(rng)
    if not out:
        raise r.err(key, "an id range map needs at least one [guest_first, host_first, count]")
    return tuple(out)


RIGHT_KEYS = ("devices", "fifos", "sockets", "setid", "symlinks", "hardlinks")


def _rights(r: _Reader, base: Rights, access_default: str | None) -> Rights:
    vals = {k: r.get(k, bool, getattr(base, k)) for k in RIGHT_KEYS}
    ns = r.get("xattrs", list, None)
    if ns is None:
        xattrs = base.xattr_namespaces
    else:
        from . import XATTR_NAMESPACES

        bad = [x for x in ns if x not in XATTR_NAMESPACES]
        if bad:
            raise r.err("xattrs", f"{bad[0]!r} is not one of {', '.join(sorted(XATTR_NAMESPACES))}")
        xattrs = frozenset(ns)
    readonly = base.readonly
    if access_default is not None:
        readonly = r.choice("access", ("ro", "rw"), access_default) == "ro"
    return Rights(readonly, xattr_namespaces=xattrs, **vals)


def _client(
    r: _Reader,
    name: str,
    policy: Policy,
    listener_names: set[str],
    key_loader: KeyLoader,
    key_files: list[str],
) -> Client:
    matches: list[Match] = []
    raw = r.get("match", (dict, list), [])
    items = [raw] if isinstance(raw, dict) else raw
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise r.err(f"match[{i}]", "expected a table")
        matches.append(_match(_Reader(r.src, item, f"{r.where}.match[{i}]"), listener_names))
    key_file = r.get("key_file", str)
    if key_file is not None:
        try:
            key_id, secret = key_loader(key_file)
        except (OSError, ValueError) as e:
            raise r.err("key_file", str(e)) from None
        if key_id in policy.keys and policy.keys[key_id] != secret:
            raise r.err("key_file", f"key id {key_id!r} is used with two different secrets")
        policy.keys[key_id] = secret
        key_files.append(key_file)
        if r.get("require_key", bool, False):
            matches = [_with_key(mt, key_id) for mt in matches] or [Match(key=key_id)]
        else:
            matches.append(Match(key=key_id))
    if not matches:
        raise r.err("match", "missing: a client needs at least one match or a key_file")
    base = _rights(r.sub("allow"), Rights(), None)
    grants: dict[str, Rights] = {}
    ex = r.sub("exports")
    if not ex.table:
        raise r.err("exports", "missing: name the exports this client may attach")
    for exp_name, value in ex.table.items():
        ex.used.add(exp_name)
        if exp_name not in policy.exports:
            raise ex.err(exp_name, "no such export (define it under [exports])")
        if isinstance(value, str):
            if value not in ("ro", "rw"):
                raise ex.err(exp_name, f"{value!r} is not ro or rw")
            grants[exp_name] = base.with_readonly(value == "ro")
        elif isinstance(value, dict):
            er = ex.sub(exp_name)
            grants[exp_name] = _rights(er, base, "rw")
            er.done()
        else:
            raise ex.err(exp_name, 'expected "ro", "rw" or a table')
        problem = unhonourable_grant(policy.exports[exp_name], grants[exp_name])
        if problem:
            raise ex.err(exp_name, problem)
    limits = _limits(r.sub("limits"))
    r.done()
    return Client(name, tuple(matches), grants, limits)


def unhonourable_grant(exp: Export, rights: Rights) -> str:
    """Why a served export could not do what this grant allows, or "".
    A grant the host backend or the sandbox would cancel in silence (every
    request failing with EPERM and no denial in the log) is refused when the
    policy is loaded: by check-config, at start and by a reload. The whole
    table is in docs/security.md (§S9, "Grants and what the sandbox keeps")."""
    if rights.devices and exp.idmap.mode != "mapped":
        return (
            f"devices = true cannot be honoured: export {exp.name!r} (idmap "
            f"{exp.idmap.mode}) stores real files, and p9share never creates device "
            'nodes on the host; use idmap = "mapped" for it (a device is then a '
            "placeholder file) or drop the grant"
        )
    if "trusted" in rights.xattr_namespaces:
        return (
            'xattrs "trusted" cannot be honoured: the kernel lets only CAP_SYS_ADMIN '
            "read or write trusted.* attributes, and the sandbox never keeps it"
        )
    if "security" in rights.xattr_namespaces and not (rights.readonly or exp.readonly):
        return (
            'xattrs "security" can only be read: writing security.* attributes needs '
            "CAP_SYS_ADMIN (CAP_SETFCAP for security.capability), which the sandbox "
            'never keeps; grant it with access = "ro"'
        )
    return ""


def _with_key(mt: Match, key_id: str) -> Match:
    return Match(mt.listener, mt.peer_uid, mt.peer_gid, mt.network, mt.tls_fingerprint,
                 mt.tls_subject, key_id)  # fmt: skip


def _match(r: _Reader, listener_names: set[str]) -> Match:
    listener = r.get("listener", str)
    if listener is not None and listener_names and listener not in listener_names:
        raise r.err("listener", f"{listener!r} names no listener in [server] listen")
    net = r.get("network", str)
    network = None
    if net is not None:
        try:
            network = ipaddress.ip_network(net, strict=False)
        except ValueError as e:
            raise r.err("network", str(e)) from None
    fp = r.get("tls_fingerprint", str)
    if fp is not None:
        fp = fp.replace(":", "").lower()
        if len(fp) != 64 or any(ch not in "0123456789abcdef" for ch in fp):
            raise r.err("tls_fingerprint", "expected the certificate's sha256 as 64 hex digits")
    mt = Match(
        listener=listener,
        peer_uid=r.integer("peer_uid", None, 0, ID_MAX),
        peer_gid=r.integer("peer_gid", None, 0, ID_MAX),
        network=network,
        tls_fingerprint=fp,
        tls_subject=r.get("tls_subject", str),
    )
    r.done()
    if mt == Match():
        raise r.err(None, "an empty match would admit anyone: say what to match on")
    return mt


def _limits(r: _Reader) -> dict[str, Any]:
    """Limit values, checked for type here and for meaning by the server's Limits."""
    out: dict[str, Any] = {}
    for k in list(r.table):
        v = r.get(k, (int, float))
        if isinstance(v, bool) or v < 0:
            raise r.err(k, "expected a number >= 0")
        out[k] = v
    r.done()
    return out
