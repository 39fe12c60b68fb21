"""What a running worker reports or uses: Prometheus metrics from its admin port, and its
resident memory sampled over time."""

import re
import threading

from .processes import rss_kb


def metric_sum(text, name, label_filter=None):
    """Sum of every sample of metric `name` (optionally only samples whose label set contains
    `label_filter`); None when the metric is absent."""
    total = None
    rx = re.compile(r"^%s(\{[^}]*\})? (\S+)$" % re.escape(name))
    for line in text.splitlines():
        m = rx.match(line)
        if not m:
            continue
        if label_filter and label_filter not in (m.group(1) or ""):
            continue
        total = (total or 0.0) + float(m.group(2))
    return total


def worker_metric(worker, name, label_filter=None):
    return metric_sum(worker.metrics(), name, label_filter)


class RssSampler:
    """Samples a process's VmRSS (kB) every 20 ms in a thread; .peak is the maximum seen.
    `target`: a pid, or anything with a .pid (a Worker)."""

    def __init__(self, target):
        self.pid = getattr(target, "pid", target)
        self.start = self.peak = rss_kb(self.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        try:
            self.peak = max(self.peak, rss_kb(self.pid))
        except (OSError, RuntimeError):
            pass
        return self.peak
