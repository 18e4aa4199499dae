"""Numbers of the 9P wire protocol (9P2000, 9P2000.u, 9P2000.L).

Every constant here is a wire value, not a host value: the .L open flags, for
example, are a portable set that the server maps to os.O_* explicitly.
"""

from __future__ import annotations

import enum

HEADER_SIZE = 7  # size[4] type[1] tag[2]
IOHDRSZ = 24  # header of Rread/Twrite plus slack; iounit = msize - IOHDRSZ
READDIRHDRSZ = 24
QID_SIZE = 13
MAXWELEM = 16
NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
NONUNAME = 0xFFFFFFFF
MIN_MSIZE = 4096  # the Linux client refuses anything smaller
DEFAULT_MAX_MSIZE = 1024 * 1024 + IOHDRSZ


class Dialect(enum.Enum):
    """The protocol version strings a session can negotiate."""

    P9P2000 = "9P2000"
    P9P2000U = "9P2000.u"
    P9P2000L = "9P2000.L"

    @property
    def is_dotu(self) -> bool:
        return self is Dialect.P9P2000U

    @property
    def has_n_uname(self) -> bool:
        return self is not Dialect.P9P2000


VERSION_UNKNOWN = "unknown"


class MsgType(enum.IntEnum):
    TLERROR = 6
    RLERROR = 7
    TSTATFS = 8
    RSTATFS = 9
    TLOPEN = 12
    RLOPEN = 13
    TLCREATE = 14
    RLCREATE = 15
    TSYMLINK = 16
    RSYMLINK = 17
    TMKNOD = 18
    RMKNOD = 19
    TRENAME = 20
    RRENAME = 21
    TREADLINK = 22
    RREADLINK = 23
    TGETATTR = 24
    RGETATTR = 25
    TSETATTR = 26
    RSETATTR = 27
    TXATTRWALK = 30
    RXATTRWALK = 31
    TXATTRCREATE = 32
    RXATTRCREATE = 33
    TREADDIR = 40
    RREADDIR = 41
    TFSYNC = 50
    RFSYNC = 51
    TLOCK = 52
    RLOCK = 53
    TGETLOCK = 54
    RGETLOCK = 55
    TLINK = 70
    RLINK = 71
    TMKDIR = 72
    RMKDIR = 73
    TRENAMEAT = 74
    RRENAMEAT = 75
    TUNLINKAT = 76
    RUNLINKAT = 77
    TVERSION = 100
    RVERSION = 101
    TAUTH = 102
    RAUTH = 103
    TATTACH = 104
    RATTACH = 105
    TERROR = 106  # never valid on the wire
    RERROR = 107
    TFLUSH = 108
    RFLUSH = 109
    TWALK = 110
    RWALK = 111
    TOPEN = 112
    ROPEN = 113
    TCREATE = 114
    RCREATE = 115
    TREAD = 116
    RREAD = 117
    TWRITE = 118
    RWRITE = 119
    TCLUNK = 120
    RCLUNK = 121
    TREMOVE = 122
    RREMOVE = 123
    TSTAT = 124
    RSTAT = 125
    TWSTAT = 126
    RWSTAT = 127


class QidType(enum.IntFlag):
    FILE = 0x00
    LINK = 0x01
    SYMLINK = 0x02
    TMP = 0x04
    AUTH = 0x08
    MOUNT = 0x10
    EXCL = 0x20
    APPEND = 0x40
    DIR = 0x80


# 9P2000 / .u permission and mode bits (Tcreate perm, stat mode)
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMMOUNT = 0x10000000
DMAUTH = 0x08000000
DMTMP = 0x04000000
DMSYMLINK = 0x02000000
DMLINK = 0x01000000
DMDEVICE = 0x00800000
DMNAMEDPIPE = 0x00200000
DMSOCKET = 0x00100000
DMSETUID = 0x00080000
DMSETGID = 0x00040000
DMSETVTX = 0x00010000

# Topen / Tcreate mode (9P2000 / .u)
OREAD = 0
OWRITE = 1
ORDWR = 2
OEXEC = 3
OTRUNC = 0x10
OCEXEC = 0x20
ORCLOSE = 0x40
OEXCL = 0x04  # QEMU's value; Linux's 0x1000 does not fit mode[1]
OAPPEND = 0x80  # Linux's P9_OAPPEND, sent by its 9P2000.u client for O_APPEND

# 9P2000.L open flags (Tlopen, Tlcreate). Octal, as in the Linux client.
L_O_RDONLY = 0o0
L_O_WRONLY = 0o1
L_O_RDWR = 0o2
L_O_NOACCESS = 0o3
L_O_ACCMODE = 0o3
L_O_CREAT = 0o100
L_O_EXCL = 0o200
L_O_NOCTTY = 0o400
L_O_TRUNC = 0o1000
L_O_APPEND = 0o2000
L_O_NONBLOCK = 0o4000
L_O_DSYNC = 0o10000
L_O_FASYNC = 0o20000
L_O_DIRECT = 0o40000
L_O_LARGEFILE = 0o100000
L_O_DIRECTORY = 0o200000
L_O_NOFOLLOW = 0o400000
L_O_NOATIME = 0o1000000
L_O_CLOEXEC = 0o2000000
L_O_SYNC = 0o4000000


class GetattrMask(enum.IntFlag):
    MODE = 0x1
    NLINK = 0x2
    UID = 0x4
    GID = 0x8
    RDEV = 0x10
    ATIME = 0x20
    MTIME = 0x40
    CTIME = 0x80
    INO = 0x100
    SIZE = 0x200
    BLOCKS = 0x400
    BTIME = 0x800
    GEN = 0x1000
    DATA_VERSION = 0x2000
    BASIC = 0x7FF
    ALL = 0x3FFF


class SetattrValid(enum.IntFlag):
    MODE = 0x1
    UID = 0x2
    GID = 0x4
    SIZE = 0x8
    ATIME = 0x10
    MTIME = 0x20
    CTIME = 0x40
    ATIME_SET = 0x80
    MTIME_SET = 0x100


AT_REMOVEDIR = 0x200

# Tlock / Tgetlock
LOCK_TYPE_RDLCK = 0
LOCK_TYPE_WRLCK = 1
LOCK_TYPE_UNLCK = 2
LOCK_FLAGS_BLOCK = 1
LOCK_FLAGS_RECLAIM = 2
LOCK_SUCCESS = 0
LOCK_BLOCKED = 1
LOCK_ERROR = 2
LOCK_GRACE = 3

# Txattrcreate flags
XATTR_CREATE = 1
XATTR_REPLACE = 2

# Treaddir entry type: Linux DT_* values
DT_UNKNOWN = 0
DT_FIFO = 1
DT_CHR = 2
DT_DIR = 4
DT_BLK = 6
DT_REG = 8
DT_LNK = 10
DT_SOCK = 12
