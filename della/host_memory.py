"""train.reuse_host_memory: keep freed CPU memory in the process instead of handing it back.

glibc serves every block above its mmap threshold (32 MiB at most) with a fresh mmap and unmaps it
when freed, so a CPU train step that allocates a vocabulary-sized tensor afresh (a GPT-2 word-embedding
gradient is 50257 x 768 floats, 154 MB) faults in each of its 4 KiB pages again, every step: at GPT-2
size on 2 cores a quarter of DELLA's step went to the kernel (benchmarks/host_memory.py). Keeping freed
memory serves every block from the heap (M_MMAP_MAX 0) and hands the heap's free top back only past
2 GiB (M_TRIM_THRESHOLD, the most mallopt takes), so the next step reuses pages already mapped. The
arithmetic is untouched: torch aligns every CPU block to 64 bytes wherever it lies. The setting is
process-wide, and only glibc has it.
"""

from __future__ import annotations

import ctypes
import platform
from typing import TYPE_CHECKING

from della.config import ConfigError

if TYPE_CHECKING:
    import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's <malloc.h>
KEEP = {M_TRIM_THRESHOLD: 2**31 - 1, M_MMAP_MAX: 0}
# glibc's defaults where its dynamic rule takes them at most (mmap threshold 32 MiB, trim threshold
# twice that): no mallopt call gives the dynamic rule back once one has set a threshold
RELEASE = {M_TRIM_THRESHOLD: 64 * 2**20, M_MMAP_THRESHOLD: 32 * 2**20, M_MMAP_MAX: 65536}

_kept = False  # whether this process keeps freed memory (set by keep_freed_memory)


def available() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def resolve(setting: bool | str, device: torch.device) -> bool:
    """train.reuse_host_memory: auto -> on for a CPU run under glibc (a GPU run's big tensors live on the card)."""
    if setting == "auto":
        return device.type == "cpu" and available()
    if setting and not available():
        raise ConfigError(f"train.reuse_host_memory = true needs glibc's mallopt; this is {platform.system()} "
                         f"with {platform.libc_ver()[0] or 'another C library'}: set it to auto or false")
    return bool(setting)


def apply(setting: bool | str, device: torch.device) -> bool:
    """Set this process's allocator as train.reuse_host_memory says for `device`; whether it keeps freed memory."""
    keep = resolve(setting, device)
    keep_freed_memory(keep)
    return keep


def keep_freed_memory(keep: bool) -> None:
    """Keep freed blocks in the heap (keep), or hand them back to the kernel again (RELEASE), the kept ones too."""
    global _kept
    if keep == _kept:
        return
    libc = ctypes.CDLL("libc.so.6")
    for option, value in (KEEP if keep else RELEASE).items():
        if libc.mallopt(option, value) != 1:
            raise OSError(f"mallopt({option}, {value}) failed")
    if not keep:
        libc.malloc_trim(0)
    _kept = keep
