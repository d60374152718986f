"""Let glibc keep freed heap memory for the next batch instead of handing it back at once.

glibc returns the top of the heap to the OS as soon as more than 128 KiB of it
is free. A pipeline allocates and frees a whole batch of results at a time
(each ``orjson.dumps`` result starts as a 4 KiB buffer), so every batch gives
its memory back and the next one page-faults it in again: on the in-memory
benchmark that costs up to two thirds of the throughput (about 0.6 page
faults per record), and whether it happens depends on what else sits at the
top of the heap. Raising the trim threshold to the memory of the records in
flight makes it predictable (16 MiB removes every fault at batches of 1,000,
64 MiB at batches of 5,000, where 16 MiB leaves 0.9 faults per record);
freed memory above it is still returned, so a host process keeps at most that
much more.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

from riprap._core.options import DEFAULT_MALLOC_TRIM_THRESHOLD

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h

log = logging.getLogger("riprap")


def keep_freed_memory(limit: int = DEFAULT_MALLOC_TRIM_THRESHOLD) -> bool:
    """Let glibc keep up to ``limit`` bytes of freed heap for reuse; process-wide.

    Every run calls this when it starts, with the pipeline's
    ``malloc_trim_threshold`` (``None`` there skips it). It does nothing (and
    returns ``False``) off glibc, or when the ``MALLOC_TRIM_THRESHOLD_``
    environment variable already sets the threshold.

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or not _is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_TRIM_THRESHOLD, min(limit, 2**31 - 1)))
    if not done:
        log.debug("mallopt(M_TRIM_THRESHOLD, %d) refused", limit)
    return done


def _is_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
