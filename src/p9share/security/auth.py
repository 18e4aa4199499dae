"""Client keys and the p9share-hmac-sha256-v1 challenge-response over 9P's auth fid.

Each client holds its own 32-byte secret under a short key id; the server
holds all of them in a Keyring. On Tauth the server creates an AuthExchange
for the new auth fid; the client reads a challenge (a fresh server nonce),
writes a response (key id, client nonce, HMAC-SHA256 over a transcript that
binds both nonces, the key id and the Tauth's uname, aname and n_uname), and
after the server accepts it, reads the server's proof (an HMAC under a
different label) to know the server holds the key too. docs/protocol.md §11
is the byte-exact description; this module is sans-IO except for the
explicit key-file loader and writer.

Every refusal is an OSError: EINVAL for a malformed or out-of-order read or
write, EACCES for a response that does not verify or an attach the exchange
does not authorise. Nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import errno
import hmac
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import sha256

PROTOCOL = "p9share-hmac-sha256-v1"
CLIENT_LABEL = b"p9share-hmac-sha256-v1 client"
SERVER_LABEL = b"p9share-hmac-sha256-v1 server"
KEY_FILE_TAG = "p9share-key-v1"

SECRET_SIZE = 32
NONCE_SIZE = 32
MAC_SIZE = 32
KEY_ID_MAX = 64
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MAX_N_UNAME = 0xFFFFFFFF

_PROTO_BYTES = PROTOCOL.encode()
CHALLENGE_SIZE = 2 + len(_PROTO_BYTES) + NONCE_SIZE
RESPONSE_MIN = 2 + 1 + NONCE_SIZE + MAC_SIZE
RESPONSE_MAX = 2 + KEY_ID_MAX + NONCE_SIZE + MAC_SIZE
KEY_FILE_MAX = 4096

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class KeyFileError(ValueError):
    """A key file or key text that cannot be used; the message says why."""


# ------------------------------------------------------------------- keys --
@dataclass(frozen=True, slots=True)
class Key:
    key_id: str
    secret: bytes = field(repr=False)  # never in logs or tracebacks

    def __post_init__(self) -> None:
        check_key_id(self.key_id)
        if len(self.secret) != SECRET_SIZE:
            raise KeyFileError(f"a secret is {SECRET_SIZE} bytes, not {len(self.secret)}")


def check_key_id(key_id: str) -> None:
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise KeyFileError(
            f"bad key id {key_id!r}: 1 to {KEY_ID_MAX} characters of A-Z a-z 0-9 . _ @ -, "
            "starting with a letter or digit"
        )


def default_key_id() -> str:
    return "client-" + secrets.token_hex(4)


def generate_key(key_id: str) -> str:
    """The text of a new key file: `p9share-key-v1 KEY_ID BASE64_SECRET` and a newline."""
    check_key_id(key_id)
    secret = base64.b64encode(secrets.token_bytes(SECRET_SIZE)).decode("ascii")
    return f"{KEY_FILE_TAG} {key_id} {secret}\n"


def parse_key(text: str, source: str = "key") -> Key:
    """The key in key-file text. Blank lines and lines starting with '#' are
    ignored; exactly one key line must remain."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise KeyFileError(f"{source}: expected one key line, found {len(lines)}")
    parts = lines[0].split()
    if len(parts) != 3 or parts[0] != KEY_FILE_TAG:
        raise KeyFileError(f"{source}: expected '{KEY_FILE_TAG} KEY_ID BASE64_SECRET'")
    _, key_id, b64 = parts
    try:
        check_key_id(key_id)
    except KeyFileError as e:
        raise KeyFileError(f"{source}: {e}") from None
    try:
        secret = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: the secret is not valid base64") from None
    if len(secret) != SECRET_SIZE:
        raise KeyFileError(f"{source}: the secret is {len(secret)} bytes, not {SECRET_SIZE}")
    return Key(key_id, secret)


def load_key(path: str | os.PathLike[str]) -> Key:
    """The key in a key file. Refused, like ssh does, if the file is not a
    regular file owned by this user (or root) or if group or others have any
    access to it."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise KeyFileError(f"key file {name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {name}: not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise KeyFileError(f"key file {name}: owned by uid {st.st_uid}, not by this user")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {name}: mode {stat.S_IMODE(st.st_mode):04o} gives group or others "
                f"access to the secret; run: chmod 600 {name}"
            )
        data = os.read(fd, KEY_FILE_MAX + 1)
    except OSError as e:
        raise KeyFileError(f"key file {name}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > KEY_FILE_MAX:
        raise KeyFileError(f"key file {name}: larger than {KEY_FILE_MAX} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {name}: not ASCII text") from None
    return parse_key(text, f"key file {name}")


def write_key_file(path: str | os.PathLike[str], text: str) -> None:
    """Create a key file with mode 0600; never overwrites or follows a symlink."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)  # fmt: skip
    except FileExistsError:
        raise KeyFileError(f"key file {name}: already exists (not overwritten)") from None
    except OSError as e:
        raise KeyFileError(f"key file {name}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may only have removed bits; be exact
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def keygen(key_id: str | None = None, output: str | None = None) -> str:
    """What `p9share keygen [--id NAME] [-o FILE]` does: make a key, write it
    to FILE (mode 0600, never overwriting) if given, and return its text (the
    caller prints it when there is no FILE). Raises KeyFileError."""
    text = generate_key(key_id if key_id is not None else default_key_id())
    if output is not None:
        write_key_file(output, text)
    return text


class Keyring:
    """The keys a server accepts: key id -> secret."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self._secrets: dict[str, bytes] = {}
        for k in keys:
            self.add(k)

    def add(self, key: Key) -> None:
        if key.key_id in self._secrets:
            raise KeyFileError(f"key id {key.key_id!r} is given twice")
        self._secrets[key.key_id] = key.secret

    def secret(self, key_id: str) -> bytes | None:
        return self._secrets.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._secrets

    def __len__(self) -> int:
        return len(self._secrets)


# ------------------------------------------------------------- transcript --
def transcript(
    label: bytes,
    server_nonce: bytes,
    client_nonce: bytes,
    key_id: str,
    uname: str,
    aname: str,
    n_uname: int,
) -> bytes:
    """The bytes both MACs are computed over: each field as len[4] (little
    endian) followed by its bytes, in this order; n_uname as 4 bytes."""
    fields = (
        label, server_nonce, client_nonce, key_id.encode("utf-8"),
        uname.encode("utf-8"), aname.encode("utf-8"), _U32.pack(n_uname),
    )  # fmt: skip
    return b"".join(_U32.pack(len(f)) + f for f in fields)


def mac(secret: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes,
        key_id: str, uname: str, aname: str, n_uname: int) -> bytes:  # fmt: skip
    t = transcript(label, server_nonce, client_nonce, key_id, uname, aname, n_uname)
    return hmac.new(secret, t, sha256).digest()


def encode_challenge(server_nonce: bytes) -> bytes:
    return _U16.pack(len(_PROTO_BYTES)) + _PROTO_BYTES + server_nonce


def encode_response(key_id: str, client_nonce: bytes, client_mac: bytes) -> bytes:
    kid = key_id.encode("ascii")
    return _U16.pack(len(kid)) + kid + client_nonce + client_mac


def _decode_response(data: bytes) -> tuple[str, bytes, bytes]:
    if not RESPONSE_MIN <= len(data) <= RESPONSE_MAX:
        raise OSError(errno.EINVAL, f"auth response of {len(data)} bytes: "
                      f"expected {RESPONSE_MIN} to {RESPONSE_MAX}")  # fmt: skip
    (n,) = _U16.unpack_from(data, 0)
    if len(data) != 2 + n + NONCE_SIZE + MAC_SIZE:
        raise OSError(errno.EINVAL, "auth response length does not match its key id length")
    try:
        key_id = data[2 : 2 + n].decode("ascii")
        check_key_id(key_id)
    except (UnicodeDecodeError, KeyFileError):
        raise OSError(errno.EINVAL, "auth response carries a malformed key id") from None
    nonce = data[2 + n : 2 + n + NONCE_SIZE]
    return key_id, nonce, data[2 + n + NONCE_SIZE :]


def _check_n_uname(n_uname: int) -> None:
    if not 0 <= n_uname <= MAX_N_UNAME:
        raise ValueError(f"n_uname {n_uname} is not a 32-bit value")


# ------------------------------------------------------------ server side --
class AuthState(enum.Enum):
    CHALLENGE = "challenge"  # reads return the challenge; one response may be written
    VERIFIED = "verified"  # reads return the server's proof; may authorise one attach
    USED = "used"  # authorised its attach; reads still return the proof
    FAILED = "failed"  # every further read, write and attach is refused


class AuthExchange:
    """The server side of one auth fid, created on Tauth(afid, uname, aname,
    n_uname). Thread-safe: reads and writes of one fid may run concurrently."""

    def __init__(
        self,
        keyring: Keyring,
        uname: str,
        aname: str,
        n_uname: int,
        server_nonce: bytes | None = None,  # tests only: a fixed nonce
    ) -> None:
        _check_n_uname(n_uname)
        if server_nonce is None:
            server_nonce = secrets.token_bytes(NONCE_SIZE)
        if len(server_nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce is {NONCE_SIZE} bytes")
        self._keyring = keyring
        self.uname, self.aname, self.n_uname = uname, aname, n_uname
        self._nonce = server_nonce
        self._challenge = encode_challenge(server_nonce)
        self._challenge_read = False
        self._proof = b""
        self.key_id: str | None = None  # set once the response verifies
        self.state = AuthState.CHALLENGE
        self._lock = threading.Lock()

    def read(self, offset: int, count: int) -> bytes:
        """Rread data: the challenge until a response is accepted, then the proof."""
        with self._lock:
            if self.state is AuthState.FAILED:
                raise OSError(errno.EACCES, "authentication failed on this auth fid")
            if self.state is AuthState.CHALLENGE:
                self._challenge_read = True
                return self._challenge[offset : offset + count]
            return self._proof[offset : offset + count]

    def write(self, offset: int, data: bytes) -> int:
        """Take the response (one Twrite at offset 0). An auth fid gets one
        response: any write in the challenge state that is not a valid
        response fails the exchange for good."""
        with self._lock:
            if self.state is AuthState.FAILED:
                raise OSError(errno.EACCES, "authentication failed on this auth fid")
            if self.state is not AuthState.CHALLENGE:
                raise OSError(errno.EINVAL, "the auth response was already accepted")
            self.state = AuthState.FAILED  # until proven otherwise
            if not self._challenge_read:
                raise OSError(errno.EINVAL, "auth response written before the challenge was read")
            if offset != 0:
                raise OSError(errno.EINVAL, "the auth response must be written at offset 0")
            key_id, client_nonce, client_mac = _decode_response(data)
            secret = self._keyring.secret(key_id)
            known = secret is not None
            # an unknown key id costs the same work as a wrong MAC
            expected = mac(secret if secret is not None else secrets.token_bytes(SECRET_SIZE),
                           CLIENT_LABEL, self._nonce, client_nonce, key_id,
                           self.uname, self.aname, self.n_uname)  # fmt: skip
            if not (hmac.compare_digest(expected, client_mac) and known):
                raise OSError(errno.EACCES, f"auth response for key {key_id!r} does not verify")
            assert secret is not None
            self._proof = mac(secret, SERVER_LABEL, self._nonce, client_nonce, key_id,
                              self.uname, self.aname, self.n_uname)  # fmt: skip
            self.key_id = key_id
            self.state = AuthState.VERIFIED
            return len(data)

    def authorise(self, uname: str, aname: str, n_uname: int) -> str:
        """Consume the exchange for one Tattach and return the key id. EACCES
        unless verified, unused, and uname, aname and n_uname are exactly
        those of the Tauth."""
        with self._lock:
            if self.state is not AuthState.VERIFIED or self.key_id is None:
                why = "was already used" if self.state is AuthState.USED else "is not verified"
                raise OSError(errno.EACCES, f"auth fid {why}")
            if (uname, aname, n_uname) != (self.uname, self.aname, self.n_uname):
                raise OSError(errno.EACCES, "attach names differ from those of the Tauth")
            self.state = AuthState.USED
            return self.key_id


# ------------------------------------------------------------ client side --
class ClientAuth:
    """The client side: the response to a challenge and the check of the proof."""

    def __init__(
        self,
        key: Key,
        uname: str,
        aname: str,
        n_uname: int,
        client_nonce: bytes | None = None,  # tests only: a fixed nonce
    ) -> None:
        _check_n_uname(n_uname)
        if client_nonce is None:
            client_nonce = secrets.token_bytes(NONCE_SIZE)
        if len(client_nonce) != NONCE_SIZE:
            raise ValueError(f"a nonce is {NONCE_SIZE} bytes")
        self.key = key
        self.uname, self.aname, self.n_uname = uname, aname, n_uname
        self.client_nonce = client_nonce
        self._server_nonce: bytes | None = None

    def response(self, challenge: bytes) -> bytes:
        """The bytes to write to the auth fid. EPROTO for a challenge that is
        not p9share-hmac-sha256-v1."""
        if len(challenge) != CHALLENGE_SIZE or not challenge.startswith(
            _U16.pack(len(_PROTO_BYTES)) + _PROTO_BYTES
        ):
            raise OSError(errno.EPROTO, f"the server's challenge is not {PROTOCOL}")
        self._server_nonce = challenge[-NONCE_SIZE:]
        m = mac(self.key.secret, CLIENT_LABEL, self._server_nonce, self.client_nonce,
                self.key.key_id, self.uname, self.aname, self.n_uname)  # fmt: skip
        return encode_response(self.key.key_id, self.client_nonce, m)

    def verify_proof(self, proof: bytes) -> None:
        """EACCES unless proof shows the server holds the key (mutual authentication)."""
        if self._server_nonce is None:
            raise OSError(errno.EINVAL, "no challenge answered yet")
        expected = mac(self.key.secret, SERVER_LABEL, self._server_nonce, self.client_nonce,
                       self.key.key_id, self.uname, self.aname, self.n_uname)  # fmt: skip
        if not hmac.compare_digest(expected, proof):
            raise OSError(errno.EACCES, "the server's proof does not verify: wrong server or key")
