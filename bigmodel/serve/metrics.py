"""The server's Prometheus metrics (prometheus_client, one registry per app): requests by route template
and status, their latency, tokens, time to first token and between tokens, queue depth, the prefix
cache's hits and the speculative decoder's acceptance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_GAP = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("bigmodel_requests", "answered requests", ["route", "status"], registry=registry)
        self.latency = Histogram("bigmodel_request_seconds", "time to answer a request", buckets=LATENCY,
                                 registry=registry)
        self.tokens = Counter("bigmodel_tokens", "prompt and completion tokens", ["kind"], registry=registry)
        self.first_token = Histogram("bigmodel_time_to_first_token_seconds", "from a request to its first token",
                                     buckets=LATENCY, registry=registry)
        self.token_gap = Histogram("bigmodel_inter_token_seconds", "between one token of a sequence and the next",
                                   buckets=TOKEN_GAP, registry=registry)
        self.queue_depth = Gauge("bigmodel_queue_depth", "sequences generating or waiting", registry=registry)
        self.prefix = Counter("bigmodel_prefix_cache_tokens", "prompt tokens looked up in the prefix cache, "
                              "and those whose keys and values it held", ["kind"], registry=registry)
        self.drafted = Counter("bigmodel_speculative_tokens", "tokens drafted, and those the model accepted",
                               ["kind"], registry=registry)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One answered request; `route` is a template such as `/v1/completions`, never a raw path."""
        self.requests.labels(route, str(status)).inc()
        self.latency.observe(seconds)

    def count_tokens(self, kind: str, n: int) -> None:
        self.tokens.labels(kind).inc(n)

    def text(self, queue_depth: int) -> str:
        self.queue_depth.set(queue_depth)
        return generate_latest(self.registry).decode()
