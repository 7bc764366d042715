"""Prometheus text exposition for `GET /metrics`, written by hand: counters and one latency histogram
need no client library. `middleware.Observed` feeds it per request; the route adds the gauges."""

from __future__ import annotations


class Metrics:
    """Prometheus text exposition, by hand (no client library needed for counters and a histogram)."""

    BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        buckets = self.latency.setdefault(route, [0] * len(self.BUCKETS))
        for i, b in enumerate(self.BUCKETS):
            if seconds <= b:
                buckets[i] += 1
        self.latency_sum[route] = self.latency_sum.get(route, 0.0) + seconds
        self.latency_count[route] = self.latency_count.get(route, 0) + 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        out = [
            "# HELP linkedout_http_requests_total HTTP requests by route and status.",
            "# TYPE linkedout_http_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(
                f'linkedout_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}'
            )
        out += [
            "# HELP linkedout_http_request_seconds Request latency.",
            "# TYPE linkedout_http_request_seconds histogram",
        ]
        for route, buckets in sorted(self.latency.items()):
            for b, n in zip(self.BUCKETS, buckets, strict=True):
                out.append(f'linkedout_http_request_seconds_bucket{{route="{route}",le="{b}"}} {n}')
            count = self.latency_count[route]
            out.append(f'linkedout_http_request_seconds_bucket{{route="{route}",le="+Inf"}} {count}')
            out.append(f'linkedout_http_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
            out.append(f'linkedout_http_request_seconds_count{{route="{route}"}} {count}')
        for name, (help_text, value) in gauges.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(out) + "\n"
