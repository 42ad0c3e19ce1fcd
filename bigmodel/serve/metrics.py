"""Counters and a latency histogram in Prometheus' text format, labelled by route template."""

from __future__ import annotations

import threading


class Metrics:
    BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.tokens = {"prompt": 0, "completion": 0}
        self.latency = [0] * (len(self.BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One answered request; `route` is a template such as `/v1/completions`, never a raw path."""
        with self.lock:
            self.requests[route, status] = self.requests.get((route, status), 0) + 1
            self.latency[next((i for i, b in enumerate(self.BUCKETS) if seconds <= b), len(self.BUCKETS))] += 1
            self.latency_sum += seconds

    def count_tokens(self, kind: str, n: int) -> None:
        with self.lock:
            self.tokens[kind] += n

    def text(self, queue_depth: int) -> str:
        with self.lock:
            lines = ["# TYPE bigmodel_requests_total counter"]
            lines += [f'bigmodel_requests_total{{route="{route}",status="{status}"}} {n}'
                      for (route, status), n in sorted(self.requests.items())]
            lines.append("# TYPE bigmodel_tokens_total counter")
            lines += [f'bigmodel_tokens_total{{kind="{k}"}} {v}' for k, v in self.tokens.items()]
            lines.append("# TYPE bigmodel_request_seconds histogram")
            running = 0
            for bound, count in zip([*map(str, self.BUCKETS), "+Inf"], self.latency, strict=True):
                running += count
                lines.append(f'bigmodel_request_seconds_bucket{{le="{bound}"}} {running}')
            lines += [f"bigmodel_request_seconds_sum {self.latency_sum}", f"bigmodel_request_seconds_count {running}",
                      "# TYPE bigmodel_queue_depth gauge", f"bigmodel_queue_depth {queue_depth}"]
            return "\n".join(lines) + "\n"
