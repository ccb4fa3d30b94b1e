"""Prometheus metrics of one service instance.

Each app gets its own ``CollectorRegistry`` (tests build many apps in one
process). With several gunicorn workers each worker counts its own requests;
a scrape reaches one of them, which is why the run command defaults to one
worker with threads.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServiceMetrics:
    """Request counts and latencies, predictions served, failures by reason, model version per project."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hua_http_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "hua_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 100),
        )
        self.predictions = Counter(
            "hua_predictions",
            "Tasks answered by /predict, by outcome: ok, failed, or deferred to a background job",
            ["outcome"],
            registry=self.registry,
        )
        self.task_failures = Counter(
            "hua_task_failures",
            "Tasks that got no prediction, by reason (image missing, refused, unreachable, "
            "undecodable, too large; or inference)",
            ["reason"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "hua_model_version_info",
            "1 for the version serving each project",
            ["project", "model_version"],
            registry=self.registry,
        )
        self._versions: dict[str, str] = {}
        self.quality = Gauge(
            "hua_prequential",
            "A version's figures on the tasks annotated after it was trained, measured when the "
            "next training started: map_50, map (AP 0.5:0.95), accepted (share of its boxes the annotators kept), "
            "recall (share of their boxes it had predicted)",
            ["project", "model_version", "figure"],
            registry=self.registry,
        )
        self.quality_tasks = Gauge(
            "hua_prequential_tasks",
            "Annotated tasks those figures were measured on (no figure below EVAL_MIN_TASKS)",
            ["project", "model_version"],
            registry=self.registry,
        )
        self._quality: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._quality_lock = threading.Lock()

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

    def set_quality(self, project: str, version: str, figures: dict[str, float], tasks: int) -> None:
        """Show ``figures`` of ``version`` as ``project``'s prequential gauges, replacing the previous ones."""
        with self._quality_lock:
            previous = self._quality.pop(project, None)
            if previous is not None:
                old_version, old_figures = previous
                for figure in old_figures:
                    self.quality.remove(project, old_version, figure)
                self.quality_tasks.remove(project, old_version)
            for figure, value in figures.items():
                self.quality.labels(project=project, model_version=version, figure=figure).set(value)
            self.quality_tasks.labels(project=project, model_version=version).set(tasks)
            self._quality[project] = (version, tuple(figures))

    def render(self) -> bytes:
        return generate_latest(self.registry)
