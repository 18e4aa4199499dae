#!/usr/bin/env bash
# Installs p9share into ./.venv (and, with --test, what the test suite needs).
# Idempotent: a second run only checks. Debian/Ubuntu; needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = --test ] && want_test=1

apt_pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || apt_pkgs+=("$2"); }
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)
need python3 python3
if [ $want_test = 1 ]; then
  need qemu-system-x86_64 qemu-system-x86   # the VM tests' Linux guest
  need diod diod                            # the reference peer server
  need gcc gcc                              # static guest helpers
  [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || apt_pkgs+=(libc6-dev)
  [ -x /bin/busybox ] && ldd /bin/busybox 2>&1 | grep -q "not a dynamic" || apt_pkgs+=(busybox-static)
  need xz xz-utils
  need setfattr attr
  # the FUSE mount (`p9share mount`, the [fuse] extra in [test]): pyfuse3 builds on libfuse3
  need fusermount3 fuse3
  pkg-config --exists fuse3 2>/dev/null || apt_pkgs+=(libfuse3-dev pkg-config)
  python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || apt_pkgs+=(python3-dev)
  # the real-tool runs on the mount (tests/posix/test_real_tools.py)
  need rsync rsync
  need git git
  need make make
  need systemd-socket-activate systemd      # socket activation tests, unit verification
  need tar tar
  # cross-checks (tests/vm/test_vmlab_units.py, tests/server/test_tls.py): a skip fails CI
  need cpio cpio
  need openssl openssl
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: missing packages: ${apt_pkgs[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extra=""
[ $want_test = 1 ] && extra="[test]"
stamp=".venv/.installed$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".$extra"
  touch "$stamp"
fi
