"""The gateway's metrics: the counters it keeps itself read as the library's would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.metrics import LATENCY_BUCKETS, GatewayMetrics

# On a bound, between bounds, under the first and past the last.
LATENCIES = [0.0, 0.0005, 0.001, 0.004, 0.005, 0.0051, 0.25, 1, 2.5, 9.99, 10, 10.5, 99.0]


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_the_latency_histogram_matches_prometheus_clients_own_for_the_same_observations() -> None:
    metrics = GatewayMetrics(lambda: 0)
    reference_registry = CollectorRegistry()
    reference = Histogram("hark_result_latency_seconds", "x", buckets=LATENCY_BUCKETS,
                          registry=reference_registry)  # fmt: skip
    for seconds in LATENCIES:
        metrics.observe_latency(seconds)
        reference.observe(seconds)
    ours = {k: v for k, v in samples(metrics.render()).items() if "latency" in k[0]}
    theirs = samples(generate_latest(reference_registry))
    assert ours == theirs
    assert ours[("hark_result_latency_seconds_count", ())] == len(LATENCIES)
    assert ours[("hark_result_latency_seconds_bucket", (("le", "0.005"),))] == 5


def test_counts_reach_metrics_and_stats_alike() -> None:
    metrics = GatewayMetrics(lambda: 7)
    metrics.chunks += 3
    metrics.audio_bytes += 9600
    metrics.finals += 2
    metrics.partials += 1
    metrics.errors.labels("empty_frame").inc()
    scraped = samples(metrics.render())
    assert scraped[("hark_chunks_total", ())] == 3
    assert scraped[("hark_audio_bytes_total", ())] == 9600
    assert scraped[("hark_results_total", (("kind", "final"),))] == 2
    assert scraped[("hark_results_total", (("kind", "partial"),))] == 1
    assert scraped[("hark_errors_total", (("code", "empty_frame"),))] == 1
    assert scraped[("hark_sessions_open", ())] == 7
    assert metrics.totals() == {"chunks": 3, "audio_bytes": 9600,
                                "results": {"final": 2, "partial": 1},
                                "errors": {"empty_frame": 1}}  # fmt: skip
