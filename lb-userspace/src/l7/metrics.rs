//! Per-route counters of the L7 tier, kept in their own registry (they are counted as
//! requests happen, not read from maps) and appended to `/metrics`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, proto::MetricFamily};

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
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "xlb_l7_request_duration_seconds",
                "Time from a request's arrival to its response head.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["vip", "route"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Metrics { registry, requests, latency, upstream_errors, retries, rate_limited })
    }

    pub fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

/// `2xx` for 200..=299 and so on.
pub fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
