"""The performance monitor: per-operation HDR histograms, stage timing, alerts, shared across processes.

``core`` records and summarises (constant memory), ``shared`` publishes this
process's figures under the store directory and merges everyone's, and
``resources`` reads this process's CPU, memory and I/O.
"""

from __future__ import annotations

from .core import AlertCallback, PerformanceMonitor, check_target
from .resources import process_resources
from .shared import SharedFigures

__all__ = ["AlertCallback", "PerformanceMonitor", "SharedFigures", "check_target", "process_resources"]
