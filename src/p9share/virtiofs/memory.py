"""Guest memory as the front end shares it: mmapped regions and address translation.

The front end passes one fd per region (SET_MEM_TABLE / ADD_MEM_REG).  Each
region is mapped once, shared and read-write, and exposed as one memoryview;
every access the ring engine makes is a slice of that view obtained through
`translate_gpa` / `translate_va`, which refuse any range that is not wholly
inside one region.  Python's buffer protocol does the rest: a slice keeps its
mapping alive, and a mapping with live slices cannot be unmapped (mmap.close
raises BufferError), so replacing the table while requests are in flight is
safe: the old mapping stays until the last request holding a slice of it ends,
and is then unmapped by reference counting.

A front end that shrinks a region's file after passing it would make accesses
past the new end fault (SIGBUS).  `Region.sealed` says whether the fd carried
F_SEAL_SHRINK (QEMU's memory-backend-memfd seals by default); `GuestMemory.map`
can be told to refuse unsealed fds.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .vhost_user import MemoryRegionSpec

__all__ = ["GuestMemory", "MemoryAccessError", "MemoryMapError", "Region"]


class MemoryAccessError(Exception):
    """A guest address range is not inside one mapped region."""


class MemoryMapError(Exception):
    """A region the front end passed cannot be mapped."""


_F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
_F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x2)


@dataclass(slots=True)
class Region:
    spec: MemoryRegionSpec
    view: memoryview  # exactly the region's bytes
    sealed: bool
    _map: mmap.mmap

    @property
    def gpa(self) -> int:
        return self.spec.guest_phys_addr

    @property
    def size(self) -> int:
        return self.spec.size


def map_region(spec: MemoryRegionSpec, fd: int, *, require_sealed: bool = False) -> Region:
    """mmap one region of the front end's memory; the caller keeps (and closes) `fd`."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise MemoryMapError(f"region fd: {e}") from None
    end = spec.mmap_offset + spec.size
    # Mapping past the end of the file would fault on first touch.
    if st.st_size < end:
        raise MemoryMapError(
            f"region {spec.guest_phys_addr:#x}+{spec.size:#x} ends at file offset {end:#x}, "
            f"the file has {st.st_size:#x} bytes"
        )
    try:
        seals = fcntl.fcntl(fd, _F_GET_SEALS)
    except OSError:
        seals = 0  # not a memfd (a file on /dev/shm or hugetlbfs)
    sealed = bool(seals & _F_SEAL_SHRINK)
    if require_sealed and not sealed:
        raise MemoryMapError("region fd is not a memfd sealed against shrinking")
    base = spec.mmap_offset - spec.mmap_offset % mmap.ALLOCATIONGRANULARITY
    lead = spec.mmap_offset - base
    try:
        m = mmap.mmap(
            fd,
            lead + spec.size,
            flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=base,
        )
    except (OSError, ValueError, OverflowError) as e:
        raise MemoryMapError(f"cannot map region {spec.guest_phys_addr:#x}: {e}") from None
    return Region(spec, memoryview(m)[lead : lead + spec.size], sealed, m)


class GuestMemory:
    """An immutable set of mapped regions; a new memory table builds a new one."""

    __slots__ = ("_by_gpa", "_by_va", "regions")

    def __init__(self, regions: Sequence[Region] = ()) -> None:
        self.regions: tuple[Region, ...] = tuple(regions)
        # (start, end, region index) lists, searched linearly: tables hold 1..8 regions.
        self._by_gpa = tuple(
            (r.spec.guest_phys_addr, r.spec.guest_phys_addr + r.spec.size, i)
            for i, r in enumerate(self.regions)
        )
        self._by_va = tuple(
            (r.spec.user_addr, r.spec.user_addr + r.spec.size, i)
            for i, r in enumerate(self.regions)
        )

    @classmethod
    def map(
        cls,
        specs: Sequence[MemoryRegionSpec],
        fds: Sequence[int],
        *,
        require_sealed: bool = False,
    ) -> GuestMemory:
        """Map every region (all or none); the caller keeps and closes `fds`."""
        if len(specs) != len(fds):
            raise MemoryMapError(f"{len(specs)} regions with {len(fds)} fds")
        regions: list[Region] = []
        try:
            for spec, fd in zip(specs, fds, strict=True):
                regions.append(map_region(spec, fd, require_sealed=require_sealed))
        except MemoryMapError:
            GuestMemory(regions).close()
            raise
        return cls(regions)

    def with_region(self, region: Region) -> GuestMemory:
        return GuestMemory([*self.regions, region])

    def without(self, spec: MemoryRegionSpec) -> tuple[GuestMemory, Region | None]:
        key = (spec.guest_phys_addr, spec.size, spec.user_addr)
        kept, gone = [], None
        for r in self.regions:
            if (r.spec.guest_phys_addr, r.spec.size, r.spec.user_addr) == key:
                gone = r
            else:
                kept.append(r)
        return GuestMemory(kept), gone

    def translate_gpa(self, addr: int, length: int) -> tuple[int, int]:
        """(region index, offset in region) of guest-physical [addr, addr+length)."""
        end = addr + length
        for start, stop, i in self._by_gpa:
            if start <= addr and end <= stop:
                return i, addr - start
        raise MemoryAccessError(f"guest address {addr:#x}+{length:#x} is outside guest memory")

    def translate_va(self, addr: int, length: int) -> tuple[int, int]:
        """(region index, offset) of a front-end virtual range (vring addresses)."""
        end = addr + length
        for start, stop, i in self._by_va:
            if start <= addr and end <= stop:
                return i, addr - start
        raise MemoryAccessError(f"front-end address {addr:#x}+{length:#x} is outside guest memory")

    def gpa_view(self, addr: int, length: int) -> memoryview:
        i, off = self.translate_gpa(addr, length)
        return self.regions[i].view[off : off + length]

    def va_view(self, addr: int, length: int) -> memoryview:
        i, off = self.translate_va(addr, length)
        return self.regions[i].view[off : off + length]

    def close(self) -> None:
        """Unmap what no request still uses; the rest goes with its last slice."""
        for r in self.regions:
            close_region(r)


def close_region(region: Region) -> None:
    try:
        region.view.release()
        region._map.close()
    except BufferError:
        pass  # a request still holds a slice: the mapping goes when it is dropped
