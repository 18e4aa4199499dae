"""Shared helpers of the benchmarks: machine information, process CPU time, pinning."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: pin() does nothing unless set (``--pin``): measured on this 2-core host, pinning
#: QEMU's vCPU and I/O threads onto one core slowed every server's guest runs down
PINNING = False


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid``, its reaped children (cutime, cstime) and its
    live descendants: a server that forks (virtiofsd's sandbox runs in a child in
    a new pid namespace) is counted whole. A descendant that has exited but is not
    reaped yet is still listed (as a zombie), so nothing falls between the two."""
    try:
        f = _stat_fields(pid)
    except OSError:
        return 0.0  # gone meanwhile (reaped: its parent's cutime has it)
    total = sum(int(x) for x in f[11:15]) / CLK_TCK  # utime stime cutime cstime
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as c:
                kids = [int(k) for k in c.read().split()]
        except OSError:
            continue
        total += sum(tree_cpu_seconds(k) for k in kids)
    return total


def wait_exited(pid: int, timeout: float) -> bool:
    """Wait until child ``pid`` has exited but is not reaped yet (a zombie: its
    /proc entry still has its CPU times). False if it still runs after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _stat_fields(pid)[0] in ("Z", "X"):
                return True
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def no_core_dumps() -> None:
    """No core files from the servers this process starts (diod 1.0.24 dumps
    core now and then when it is stopped): they would land in cwd."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


@contextmanager
def in_dir(path: str | os.PathLike[str]) -> Iterator[None]:
    """Start servers with cwd ``path`` (a temp dir): diod raises its own core
    limit, so a core it dumps lands there and is removed with it."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextmanager
def pin(cpu: int) -> Iterator[None]:
    """Run this process (and the children it starts meanwhile) on ``cpu`` only, if the
    machine has it: the guest gets one core and the server the other."""
    old = os.sched_getaffinity(0)
    if not PINNING or cpu not in old or len(old) < 2:
        yield
        return
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _run(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip()


def machine_info(qemu: str | None = None, guest_kernel: str | None = None) -> dict[str, object]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    info: dict[str, object] = {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "diod": _run(["dpkg-query", "-W", "-f=${Version}", "diod"]),
        "virtiofsd": _run(["dpkg-query", "-W", "-f=${Version}", "qemu-system-common"]),
    }
    if qemu:
        info["qemu"] = (
            _run([qemu, "--version"]).splitlines()[0] if _run([qemu, "--version"]) else ""
        )
    if guest_kernel:
        info["guest_kernel"] = guest_kernel
    return info
