"""This process's CPU, memory and I/O (psutil, imported on first use; the standard library without it)."""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

_process: list[Any] = []  # the psutil.Process of this pid (cpu_percent measures between calls)


def process_resources(load_psutil: bool = True) -> dict[str, Any]:
    """CPU seconds and percent, resident and peak memory, disk I/O, open files and threads of this process.

    ``load_psutil=False`` (a process's last publication, as it ends): psutil only if already imported,
    else the standard library's figures - importing it cost a one-shot CLI call 10-40 ms at exit."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {"pid": os.getpid(), "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
                           "cpu_user_s": round(usage.ru_utime, 3), "cpu_system_s": round(usage.ru_stime, 3)}
    if not load_psutil and "psutil" not in sys.modules:
        out["open_fds"] = _fds()
        return out
    try:
        import psutil
    except ImportError:
        out["open_fds"] = _fds()
        return out
    if not _process or _process[0].pid != os.getpid():
        _process[:] = [psutil.Process()]
    proc = _process[0]
    with proc.oneshot():
        mem = proc.memory_info()
        out["rss_mb"] = round(mem.rss / 1_048_576, 1)
        out["cpu_percent"] = proc.cpu_percent(None)  # since the previous call in this process
        out["threads"] = proc.num_threads()
        try:
            io = proc.io_counters()
            out.update(read_bytes=io.read_bytes, write_bytes=io.write_bytes, read_count=io.read_count,
                       write_count=io.write_count)
        except (psutil.Error, AttributeError, NotImplementedError):  # not on every platform
            pass
        try:
            out["open_fds"] = proc.num_fds()
        except (psutil.Error, AttributeError):
            out["open_fds"] = _fds()
    return out


def _fds() -> int:
    try:
        return len(os.listdir(f"/proc/{os.getpid()}/fd"))
    except OSError:
        return -1
