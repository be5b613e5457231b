"""Prometheus metrics of a server (GET /metrics), in a registry of its own so several servers (and
tests) in one process never share counters.

Names follow vLLM's where they overlap, so existing dashboards read them: requests by final status,
running and waiting requests, prompt and generated tokens, time to first token, inter-token
latency and KV-cache use. With a safety guard (herd/serve/moderation.py): its decisions by stage
(input, output) and verdict (safe, unsafe), and the time of each check.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "herd_requests", "HTTP API requests by status code", ["status"], registry=r
        )
        self.running = Gauge("herd_num_requests_running", "requests in the batch", registry=r)
        self.waiting = Gauge("herd_num_requests_waiting", "requests queued", registry=r)
        self.kv_usage = Gauge(
            "herd_kv_cache_usage_perc", "fraction of KV-cache positions in use", registry=r
        )
        self.prompt_tokens = Counter("herd_prompt_tokens", "prompt tokens processed", registry=r)
        self.generation_tokens = Counter("herd_generation_tokens", "tokens generated", registry=r)
        self.ttft = Histogram(
            "herd_time_to_first_token_seconds",
            "arrival to first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "herd_inter_token_latency_seconds",
            "time between a request's consecutive tokens",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.guard_decisions = Counter(
            "herd_guard_decisions",
            "safety guard verdicts by stage (input, output) and verdict (safe, unsafe, error)",
            ["stage", "verdict"],
            registry=r,
        )
        self.guard_seconds = Histogram(
            "herd_guard_seconds",
            "time of one safety guard check",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def watch(self, engine) -> None:
        """Read the engine's gauges at scrape time."""
        self.running.set_function(lambda: engine.counts()[0])
        self.waiting.set_function(lambda: engine.counts()[1])
        self.kv_usage.set_function(engine.kv_usage)

    # called by the engine (thread-safe: prometheus_client locks its values)
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(generated)

    def guard_ready(self) -> None:
        """Start the guard's series at zero, so a dashboard sees them before the first decision."""
        for stage in ("input", "output"):
            self.guard_seconds.labels(stage)
            for verdict in ("safe", "unsafe"):
                self.guard_decisions.labels(stage, verdict)

    def guard_decision(self, stage: str, verdict: str, seconds: float | None = None) -> None:
        """A guard's verdict ("safe", "unsafe", or "error" when the check failed)."""
        self.guard_decisions.labels(stage, verdict).inc()
        if seconds is not None:
            self.guard_seconds.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
