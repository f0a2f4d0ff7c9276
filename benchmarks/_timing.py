"""Wall-clock timing shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(
    fn: Callable[[], object], repeat: int, sync: Callable[[], None] | None = None
) -> float:
    """Median wall time (s) of ``repeat`` calls of ``fn`` after one warm-up call.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before and after each timed call, so
    that asynchronous device work is inside the measurement.
    """
    sync = sync or (lambda: None)
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
