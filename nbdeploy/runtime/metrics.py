"""Prometheus text for the direct engine's ``/metrics`` (standard library only).

Request counts and a latency histogram per route and status, in the names BentoML uses for
its own (``bentoml_service_request_total``, ``bentoml_service_request_duration_seconds``),
so that dashboards work under either engine, plus shed requests and in-flight requests.
The drift gauges are appended by the app, as under ``bentoml serve``.
"""

from __future__ import annotations

import bisect
import time

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROUTES = ("/predict", "/explain", "/metadata", "/drift", "/plots", "/nbdeploy/openapi.json",
          "/livez", "/readyz", "/healthz", "/metrics", "/api/predict", "/api/explain", "/schema.json")


def _route(path: str) -> str:
    if path.startswith("/plots"):
        return "/plots"
    return path if path in ROUTES else "other"  # bounded label values: no path from clients


class Metrics:
    def __init__(self, service: str):
        self.service = service.replace('"', "")
        self.counts: dict[tuple[str, int], int] = {}
        self.hist: dict[str, list] = {}   # route -> [bucket counts..., sum, count]
        self.shed = 0
        self.started = time.time()

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = _route(path)
        key = (route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        h = self.hist.get(route)
        if h is None:
            h = self.hist[route] = [0] * (len(BUCKETS) + 2)
        h[bisect.bisect_left(BUCKETS, seconds)] += 1
        h[-2] += seconds
        h[-1] += 1

    def text(self, in_flight: int = 0) -> str:
        svc = self.service
        out = ["# HELP bentoml_service_request_total Requests answered, by route and status",
               "# TYPE bentoml_service_request_total counter"]
        for (route, status), n in sorted(self.counts.items()):
            out.append(f'bentoml_service_request_total{{endpoint="{route}",http_response_code="{status}",'
                       f'service_name="{svc}"}} {n}')
        out += ["# HELP bentoml_service_request_duration_seconds Time to answer a request",
                "# TYPE bentoml_service_request_duration_seconds histogram"]
        for route, h in sorted(self.hist.items()):
            lab = f'endpoint="{route}",service_name="{svc}"'
            cum = 0
            for le, n in zip(BUCKETS, h):
                cum += n
                out.append(f'bentoml_service_request_duration_seconds_bucket{{{lab},le="{le}"}} {cum}')
            out.append(f'bentoml_service_request_duration_seconds_bucket{{{lab},le="+Inf"}} {h[-1]}')
            out.append(f"bentoml_service_request_duration_seconds_sum{{{lab}}} {h[-2]:.6f}")
            out.append(f"bentoml_service_request_duration_seconds_count{{{lab}}} {h[-1]}")
        out += ["# HELP nbdeploy_requests_shed_total Requests refused with 503 over the concurrency limit",
                "# TYPE nbdeploy_requests_shed_total counter",
                f'nbdeploy_requests_shed_total{{service_name="{svc}"}} {self.shed}',
                "# HELP bentoml_service_request_in_progress Requests in flight",
                "# TYPE bentoml_service_request_in_progress gauge",
                f'bentoml_service_request_in_progress{{service_name="{svc}"}} {in_flight}',
                "# HELP nbdeploy_uptime_seconds Seconds since the server started",
                "# TYPE nbdeploy_uptime_seconds gauge",
                f"nbdeploy_uptime_seconds {time.time() - self.started:.1f}"]
        return "\n".join(out) + "\n"
