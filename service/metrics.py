"""Prometheus text metrics without a client library: request counts, latency histogram, sizes."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, path, status)] += 1
            counts = self.latency_counts[(method, path)]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self.latency_sum[(method, path)] += seconds

    def render(self, gauges: Iterable[tuple[str, str, dict[str, str], float]]) -> str:
        lines = [
            "# HELP ers_requests_total HTTP requests by method, route and status.",
            "# TYPE ers_requests_total counter",
        ]
        with self._lock:
            for (method, path, status), n in sorted(self.requests.items()):
                lines.append(f'ers_requests_total{{method="{method}",path="{path}",status="{status}"}} {n}')
            lines += [
                "# HELP ers_request_duration_seconds HTTP request latency.",
                "# TYPE ers_request_duration_seconds histogram",
            ]
            for (method, path), counts in sorted(self.latency_counts.items()):
                labels = f'method="{method}",path="{path}"'
                for bound, n in zip(BUCKETS, counts, strict=False):
                    lines.append(f'ers_request_duration_seconds_bucket{{{labels},le="{bound}"}} {n}')
                lines.append(f'ers_request_duration_seconds_bucket{{{labels},le="+Inf"}} {counts[-1]}')
                lines.append(f"ers_request_duration_seconds_sum{{{labels}}} {self.latency_sum[(method, path)]:.6f}")
                lines.append(f"ers_request_duration_seconds_count{{{labels}}} {counts[-1]}")
        seen: set[str] = set()
        for name, help_text, gauge_labels, value in gauges:
            if name not in seen:
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
                seen.add(name)
            label_text = ",".join(f'{k}="{v}"' for k, v in gauge_labels.items())
            lines.append(f"{name}{{{label_text}}} {value}")
        return "\n".join(lines) + "\n"
