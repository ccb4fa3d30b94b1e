"""Prometheus metrics of one service instance.

Each app gets its own ``CollectorRegistry`` (tests build many apps in one
process). With several gunicorn workers each worker counts its own requests;
a scrape reaches one of them, which is why the run command defaults to one
worker with threads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServiceMetrics:
    """Request counts and latencies, predictions served, model version per project."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hua_http_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "hua_http_request_seconds", "HTTP request latency by route", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 100),
        )
        self.predictions = Counter(
            "hua_predictions", "Task predictions served, by outcome", ["outcome"], registry=self.registry
        )
        self.model_version = Gauge(
            "hua_model_version_info", "1 for the version serving each project", ["project", "model_version"],
            registry=self.registry,
        )
        self._versions: dict[str, str] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def set_version(self, project: str, version: str) -> None:
        """Mark ``version`` as the one serving ``project`` (and only it)."""
        previous = self._versions.get(project)
        if previous is not None and previous != version:
            self.model_version.remove(project, previous)
        self._versions[project] = version
        self.model_version.labels(project=project, model_version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
