//! The global limits' series, built from the published view at each scrape.

use prometheus::{Gauge, GaugeVec, IntCounterVec, IntGauge, Opts, Registry, proto::MetricFamily};

use super::{LimitMode, LimitsView};

/// `view` as metric families (none while no global limit is configured).
pub fn gather(view: &LimitsView) -> Vec<MetricFamily> {
    if view.mode == LimitMode::Off {
        return Vec::new();
    }
    build(view).map(|registry| registry.gather()).unwrap_or_default()
}

fn build(view: &LimitsView) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    let labels = &["limit"];
    let share = GaugeVec::new(
        Opts::new(
            "xlb_limit_share",
            "Requests/s of the global limit this node may admit now (a concurrency limit: its slots).",
        ),
        labels,
    )?;
    let demand = GaugeVec::new(
        Opts::new("xlb_limit_demand", "This node's recent demand on the global limit (requests/s, admitted or not)."),
        labels,
    )?;
    let threshold = GaugeVec::new(
        Opts::new("xlb_limit_threshold", "The global limit's threshold over all nodes (requests/s)."),
        labels,
    )?;
    let admitted = IntCounterVec::new(
        Opts::new("xlb_limit_admitted_total", "Requests the global limit admitted on this node."),
        labels,
    )?;
    let limited = IntCounterVec::new(
        Opts::new("xlb_limit_limited_total", "Requests the global limit refused on this node."),
        labels,
    )?;
    for limit in &view.limits {
        let l = &[limit.name.as_str()];
        share.with_label_values(l).set(limit.share);
        demand.with_label_values(l).set(limit.demand);
        threshold.with_label_values(l).set(f64::from(limit.threshold));
        admitted.with_label_values(l).inc_by(limit.admitted);
        limited.with_label_values(l).inc_by(limit.limited);
    }
    let up = IntGauge::new(
        "xlb_global_limits_redis_up",
        "1 while Redis answers (shares follow demand), 0 in fallback (threshold ÷ nodes).",
    )?;
    up.set(i64::from(view.mode == LimitMode::Shared));
    let nodes = IntGauge::new("xlb_global_limits_nodes", "Live nodes Redis last reported sharing the limits.")?;
    nodes.set(i64::from(view.nodes));
    let latency = Gauge::new("xlb_global_limits_redis_latency_seconds", "Round trip of the last exchange with Redis.")?;
    latency.set(view.latency_ms / 1000.0);
    let errors = prometheus::IntCounter::new("xlb_global_limits_redis_errors_total", "Renewals Redis did not answer.")?;
    errors.inc_by(view.errors);
    if !view.limits.is_empty() {
        for vec in [share.clone(), demand.clone(), threshold.clone()] {
            registry.register(Box::new(vec))?;
        }
        registry.register(Box::new(admitted))?;
        registry.register(Box::new(limited))?;
    }
    registry.register(Box::new(up))?;
    registry.register(Box::new(nodes))?;
    registry.register(Box::new(latency))?;
    registry.register(Box::new(errors))?;
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::limits::LimitStatus;

    fn text(view: &LimitsView) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &gather(view), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_view_becomes_its_series_and_off_becomes_none() {
        let mut view = LimitsView {
            mode: LimitMode::Fallback,
            redis: "10.0.0.9:6379".into(),
            nodes: 3,
            latency_ms: 1.5,
            errors: 7,
            last_error: Some("connection refused".into()),
            limits: vec![LimitStatus {
                name: "web/api".into(),
                threshold: 300,
                concurrent: false,
                share: 100.0,
                demand: 250.5,
                admitted: 40,
                limited: 2,
            }],
        };
        let out = text(&view);
        for line in [
            "xlb_global_limits_redis_up 0",
            "xlb_global_limits_nodes 3",
            "xlb_global_limits_redis_errors_total 7",
            "xlb_global_limits_redis_latency_seconds 0.0015",
            "xlb_limit_share{limit=\"web/api\"} 100",
            "xlb_limit_demand{limit=\"web/api\"} 250.5",
            "xlb_limit_threshold{limit=\"web/api\"} 300",
            "xlb_limit_admitted_total{limit=\"web/api\"} 40",
            "xlb_limit_limited_total{limit=\"web/api\"} 2",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        view.mode = LimitMode::Shared;
        assert!(text(&view).contains("xlb_global_limits_redis_up 1"));
        view.mode = LimitMode::Off;
        assert!(gather(&view).is_empty());
    }
}
