"""The gateway's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    """What `/metrics` on the gateway reports; the same error codes as the client sees."""

    def __init__(self, sessions: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("hark_sessions_open", "Client sessions open", registry=r)
        self.sessions.set_function(sessions)
        self.chunks = Counter("hark_chunks", "Audio chunks accepted", registry=r)
        self.bytes = Counter("hark_audio_bytes", "Audio bytes accepted", registry=r)
        self.results = Counter("hark_results", "Results sent to clients", ["kind"], registry=r)
        # The per-result children, looked up once: labels() costs ~1 µs a call.
        self.finals, self.partials = self.results.labels("final"), self.results.labels("partial")
        self.errors = Counter("hark_errors", "Errors sent to clients", ["code"], registry=r)
        self.latency = Histogram(
            "hark_result_latency_seconds",
            "From a chunk's arrival to the final that covers it, sent",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def totals(self) -> dict[str, Any]:
        """The counters since start, as `/stats` shows them."""
        out: dict[str, Any] = {"chunks": 0, "audio_bytes": 0, "results": {}, "errors": {}}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                value = int(sample.value)
                if sample.name == "hark_chunks_total":
                    out["chunks"] = value
                elif sample.name == "hark_audio_bytes_total":
                    out["audio_bytes"] = value
                elif sample.name == "hark_results_total":
                    out["results"][sample.labels["kind"]] = value
                elif sample.name == "hark_errors_total":
                    out["errors"][sample.labels["code"]] = value
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)
