"""`GET /metrics` through `prometheus_client`, in one process or aggregated over worker processes.

One process (``linkedout serve``, tests): the metrics live in a `CollectorRegistry` of their own per
app, so several apps in one interpreter (tests) never collide in the library's global registry.

Several workers (``linkedout serve --workers N``): the server sets ``PROMETHEUS_MULTIPROC_DIR`` to a
fresh directory before the workers start; `prometheus_client` then keeps every value in a small
memory-mapped file per process there, and a scrape - answered by whichever worker accepted it - sums
the files of all workers (`MultiProcessCollector`). Counters and histograms add up; each gauge says
how to combine (``multiprocess_mode``): the catalogue size is the largest live worker's (workers add
online items on their own until the item feed reaches them), the event count the most recently read.
A worker that exits cleanly removes its live-gauge files (`mark_dead`); its counters stay counted.

Names, types and labels are those of the hand-written exposition this replaced (the batch counters
were declared ``gauge`` there; they are counters, and now say so).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

# the `*_created` timestamp series double the exposition and nothing here reads them
disable_created_metrics()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The shared metrics directory when this process is one of several workers, else None."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The service's metrics; `middleware.Observed` calls `observe` per request, the batcher `batch`."""

    BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values go to the shared files whatever registry a metric is in; the
        # private registry only keeps two apps of one test process apart.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "linkedout_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "linkedout_http_request_seconds", "Request latency.", ["route"], buckets=self.BUCKETS, registry=r
        )
        self.batches = Counter("linkedout_recommend_batches", "Micro-batches run.", registry=r)
        self.batched = Counter(
            "linkedout_recommend_batched_requests", "Requests in micro-batches.", registry=r
        )
        self.compute = Counter("linkedout_recommend_compute_seconds", "Time scoring batches.", registry=r)
        self.catalogue = Gauge(
            "linkedout_catalogue_items", "Items in the index.", registry=r, multiprocess_mode="livemax"
        )
        self.added = Gauge(
            "linkedout_items_added_online",
            "Items added since export.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.events = Gauge(
            "linkedout_events_stored", "Watch events stored.", registry=r, multiprocess_mode="livemostrecent"
        )
        self.commits = Gauge(
            "linkedout_eventlog_commits_total",
            "SQLite group commits.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.reloads = Counter(
            "linkedout_bundle_reloads", "Bundle reloads by outcome.", ["outcome"], registry=r
        )
        self.generation = Gauge(
            "linkedout_bundle_generation",
            "Reload generation served (0: the bundle started with); min over workers.",
            registry=r,
            multiprocess_mode="livemin",
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self.batches.inc()
        self.batched.inc(size)
        self.compute.inc(seconds)

    def set_catalogue(self, items: int, added_online: int) -> None:
        self.catalogue.set(items)
        self.added.set(added_online)

    def render(self) -> bytes:
        """The exposition: this process's registry, or the sum over every worker's files."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    @staticmethod
    def mark_dead(pid: int | None = None) -> None:
        """Drop a stopped worker's live gauges from the aggregate (uvicorn has no child-exit hook, so
        each worker calls this for itself when it shuts down)."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid() if pid is None else pid)
