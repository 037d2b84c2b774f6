//! Per-route counters of the L7 tier, kept in their own registry (they are counted as
//! requests happen, not read from maps) and appended to `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, proto::MetricFamily,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// vip, route, class (1xx..5xx).
    pub requests: IntCounterVec,
    /// vip, route: seconds from the request's arrival to the response head.
    pub latency: HistogramVec,
    /// vip, route, kind (connect, timeout, transport).
    pub upstream_errors: IntCounterVec,
    /// vip, route.
    pub retries: IntCounterVec,
    /// vip, route.
    pub rate_limited: IntCounterVec,
    /// vip, route.
    pub concurrency_limited: IntCounterVec,
    /// Access log lines dropped because the log's output fell behind.
    pub access_log_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok(vec)
        };
        let requests = counter(
            "xlb_l7_requests_total",
            "Requests answered by the L7 proxy, by status class.",
            &["vip", "route", "class"],
        )?;
        let upstream_errors = counter(
            "xlb_l7_upstream_errors_total",
            "Backend attempts that failed before a response (connect, timeout, transport).",
            &["vip", "route", "kind"],
        )?;
        let retries = counter("xlb_l7_retries_total", "Requests retried on another backend.", &["vip", "route"])?;
        let rate_limited = counter(
            "xlb_l7_rate_limited_total",
            "Requests refused with 429 by the route's rate limit.",
            &["vip", "route"],
        )?;
        let concurrency_limited = counter(
            "xlb_l7_concurrency_limited_total",
            "Requests refused because the route had as many in progress as its concurrency limit allows.",
            &["vip", "route"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "xlb_l7_request_duration_seconds",
                "Time from a request's arrival to its response head.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["vip", "route"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        let access_log_dropped = IntCounter::new(
            "xlb_l7_access_log_dropped_total",
            "Access log lines dropped because the log's output (stderr) fell 8 MiB behind.",
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            retries,
            rate_limited,
            concurrency_limited,
            access_log_dropped,
        })
    }

    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }

    /// The series of one route, resolved once (label lookups cost a lock and a hash per call).
    pub fn route(&self, vip: &str, route: &str) -> RouteStats {
        let labels = [vip, route];
        let class = |c: &str| self.requests.with_label_values(&[vip, route, c]);
        let upstream = |k: &str| self.upstream_errors.with_label_values(&[vip, route, k]);
        RouteStats {
            requests: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
            latency: self.latency.with_label_values(&labels),
            connect_errors: upstream("connect"),
            transport_errors: upstream("transport"),
            timeouts: upstream("timeout"),
            retries: self.retries.with_label_values(&labels),
            rate_limited: self.rate_limited.with_label_values(&labels),
            concurrency_limited: self.concurrency_limited.with_label_values(&labels),
        }
    }
}

/// One route's series.
#[derive(Debug, Clone)]
pub struct RouteStats {
    requests: [IntCounter; 5],
    pub latency: Histogram,
    pub connect_errors: IntCounter,
    pub transport_errors: IntCounter,
    pub timeouts: IntCounter,
    pub retries: IntCounter,
    pub rate_limited: IntCounter,
    pub concurrency_limited: IntCounter,
}

impl RouteStats {
    /// Counts one answered request (by status class: 1xx .. 5xx).
    pub fn answered(&self, status: u16, seconds: f64) {
        let class = usize::from(status.clamp(100, 599) / 100 - 1);
        self.requests[class].inc();
        self.latency.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_series_count_by_class() {
        let metrics = Metrics::new().unwrap();
        let stats = metrics.route("web", "api");
        for status in [200, 204, 404, 429, 502, 101, 0, 999] {
            stats.answered(status, 0.001);
        }
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &metrics.gather(), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        for line in [
            "xlb_l7_requests_total{class=\"1xx\",route=\"api\",vip=\"web\"} 2",
            "xlb_l7_requests_total{class=\"2xx\",route=\"api\",vip=\"web\"} 2",
            "xlb_l7_requests_total{class=\"4xx\",route=\"api\",vip=\"web\"} 2",
            "xlb_l7_requests_total{class=\"5xx\",route=\"api\",vip=\"web\"} 2",
            "xlb_l7_request_duration_seconds_count{route=\"api\",vip=\"web\"} 8",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
