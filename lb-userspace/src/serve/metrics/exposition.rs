//! The exposition text: one fresh Prometheus registry a scrape, built from the snapshot and the
//! agent's facts.

use prometheus::{Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    announce::bgp::PeerStatus,
    serve::stats::Snapshot,
    serve::summary::{AttachmentStatus, ReloadOutcome},
};

/// Agent facts exported next to the data plane's counters.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub config_generation: u64,
    pub last_reload: Option<ReloadOutcome>,
    pub peers: Vec<PeerStatus>,
    /// XDP on each of the agent's interfaces.
    pub attachments: Vec<AttachmentStatus>,
    /// Health-check probes that failed, by whose fault.
    pub health_errors: crate::sources::health::ErrorCounts,
    /// Each checked backend's probes so far, and how many failed.
    pub health: crate::sources::health::HealthMap,
    /// The L7 tier's per-route families (kept by the tier, appended as they are).
    pub l7: Vec<prometheus::proto::MetricFamily>,
}

/// The exposition text for `snapshot` and `agent`.
pub fn render(snapshot: &Snapshot, agent: &AgentInfo) -> String {
    match build(snapshot, agent) {
        Ok(registry) => {
            let mut out = Vec::new();
            let mut families = registry.gather();
            // (The encoder refuses a family without metrics: none while nothing is checked.)
            if !agent.health.is_empty() {
                families.push(health_latency(agent));
            }
            families.extend(agent.l7.iter().cloned());
            match TextEncoder::new().encode(&families, &mut out) {
                Ok(()) => String::from_utf8_lossy(&out).into_owned(),
                Err(e) => format!("# encoding metrics failed: {e}\n"),
            }
        }
        Err(e) => format!("# building metrics failed: {e}\n"),
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(vec.clone()))?;
    Ok(vec)
}

fn build(snapshot: &Snapshot, agent: &AgentInfo) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    let vip_packets = counter(&registry, "xlb_vip_packets_total", "Packets forwarded for the VIP.", &["vip"])?;
    let vip_bytes = counter(&registry, "xlb_vip_bytes_total", "Bytes forwarded for the VIP.", &["vip"])?;
    let vip_flows = counter(&registry, "xlb_vip_new_flows_total", "New flows of the VIP.", &["vip"])?;
    let vip_up = gauge(&registry, "xlb_vip_up", "1 when at least min_healthy backends serve the VIP.", &["vip"])?;
    let vip_panic = gauge(
        &registry,
        "xlb_vip_panic",
        "1 while fewer backends than panic_threshold are healthy and new flows go to all of them.",
        &["vip"],
    )?;
    let vip_serving = gauge(&registry, "xlb_vip_serving_backends", "Backends taking new flows.", &["vip"])?;
    let labels = ["vip", "backend"];
    let be_packets = counter(&registry, "xlb_backend_packets_total", "Packets sent to the backend.", &labels)?;
    let be_bytes = counter(&registry, "xlb_backend_bytes_total", "Bytes sent to the backend.", &labels)?;
    let be_flows = counter(&registry, "xlb_backend_new_flows_total", "New flows sent to the backend.", &labels)?;
    let be_up = gauge(&registry, "xlb_backend_up", "1 while the backend passes its health check.", &labels)?;
    let be_drained = gauge(&registry, "xlb_backend_drained", "1 while the backend is drained.", &labels)?;
    let be_weight = gauge(&registry, "xlb_backend_weight", "Effective weight (0 while down or drained).", &labels)?;
    let be_mac = gauge(&registry, "xlb_backend_mac_known", "1 when the backend's L2 next hop is known.", &labels)?;
    let be_conns = gauge(
        &registry,
        "xlb_backend_connections",
        "Live connections to the backend as of the last count: connection-table entries (state confirmed or embryonic) not idle past the table's rule, NAT flows (state nat) not expired.",
        &["vip", "backend", "state"],
    )?;
    for v in &snapshot.vips {
        let vip = [v.name.as_str()];
        vip_packets.with_label_values(&vip).inc_by(v.packets);
        vip_bytes.with_label_values(&vip).inc_by(v.bytes);
        vip_flows.with_label_values(&vip).inc_by(v.new_flows);
        vip_up.with_label_values(&vip).set(i64::from(v.up));
        vip_serving.with_label_values(&vip).set(v.serving as i64);
        vip_panic.with_label_values(&vip).set(i64::from(v.panic));
        for b in &v.backends {
            let at = [v.name.as_str(), b.address.as_str()];
            be_packets.with_label_values(&at).inc_by(b.packets);
            be_bytes.with_label_values(&at).inc_by(b.bytes);
            be_flows.with_label_values(&at).inc_by(b.new_flows);
            be_up.with_label_values(&at).set(i64::from(b.up));
            be_drained.with_label_values(&at).set(i64::from(b.drained));
            be_weight.with_label_values(&at).set(i64::from(b.weight));
            be_mac.with_label_values(&at).set(i64::from(b.mac_known));
            // A NAT VIP's flows are in the NAT tables, the others' in the connection table.
            let states = if v.mode == "nat" {
                [("nat", b.connections.nat)].to_vec()
            } else {
                [("confirmed", b.connections.confirmed), ("embryonic", b.connections.embryonic)].to_vec()
            };
            for (state, count) in states.into_iter().filter(|_| snapshot.connections_scan.is_some()) {
                be_conns.with_label_values(&[at[0], at[1], state]).set(count as i64);
            }
        }
    }

    let packets = counter(
        &registry,
        "xlb_packets_total",
        "Packets the XDP program saw, by outcome (outcomes sum to all packets).",
        &["outcome"],
    )?;
    let drops = counter(&registry, "xlb_drops_total", "Packets dropped, by reason.", &["reason"])?;
    let malformed =
        counter(&registry, "xlb_malformed_total", "Malformed packets (passed untouched), by reason.", &["reason"])?;
    let events = counter(&registry, "xlb_flow_events_total", "Connection-table events.", &["event"])?;
    for c in &snapshot.counters {
        let name = [c.name.as_str()];
        if c.outcome {
            packets.with_label_values(&name).inc_by(c.value);
        } else {
            events.with_label_values(&name).inc_by(c.value);
        }
        if c.drop {
            drops.with_label_values(&name).inc_by(c.value);
        }
        if c.malformed {
            malformed.with_label_values(&name).inc_by(c.value);
        }
    }

    let flow_entries = IntGauge::new(
        "xlb_flow_table_entries",
        "Connection-table entries in use (flows recorded and not yet replaced, idle or not).",
    )?;
    flow_entries.set(snapshot.flow_table.entries as i64);
    registry.register(Box::new(flow_entries))?;
    let flow_size = IntGauge::new("xlb_flow_table_size", "Connection-table entries (node.flow_table_size).")?;
    flow_size.set(snapshot.flow_table.size as i64);
    registry.register(Box::new(flow_size))?;
    if let Some(scan) = &snapshot.connections_scan {
        let age = prometheus::Gauge::new(
            "xlb_connections_count_age_seconds",
            "Since the agent last counted live connections per backend (xlb_backend_connections).",
        )?;
        age.set(scan.age_ms as f64 / 1000.0);
        registry.register(Box::new(age))?;
    }
    let nat_flows = IntGauge::new("xlb_nat_flows", "NAT flows in the tables (as of the last sweep).")?;
    nat_flows.set(snapshot.nat.flows as i64);
    registry.register(Box::new(nat_flows))?;
    let swept = IntCounterVec::new(Opts::new("xlb_nat_swept_total", "Expired NAT flows removed by the agent."), &[])?;
    registry.register(Box::new(swept.clone()))?;
    swept.with_label_values(&[] as &[&str]).inc_by(snapshot.nat.swept);
    let pool_flows =
        gauge(&registry, "xlb_nat_pool_flows", "NAT flows leaving from the pool address.", &["pool", "address"])?;
    let pool_ports = gauge(
        &registry,
        "xlb_nat_pool_ports",
        "Ports of the pool: flows one address carries to one backend address and port.",
        &["pool", "address"],
    )?;
    for p in &snapshot.nat.pools {
        let at = [p.pool.as_str(), p.address.as_str()];
        pool_flows.with_label_values(&at).set(p.flows as i64);
        pool_ports.with_label_values(&at).set(p.ports as i64);
    }

    // The top sources only (bounded cardinality): a spoofed flood has one bucket per address.
    let limited = gauge(
        &registry,
        "xlb_source_limited_per_second",
        "New flows per second the source prefix's new-flow limit refused lately (the top prefixes only).",
        &["scope", "prefix"],
    )?;
    for s in &snapshot.limited_sources {
        limited
            .with_label_values(&[s.scope.as_str(), s.prefix.as_str()])
            .set(i64::try_from(s.refused_per_second).unwrap_or(i64::MAX));
    }

    let cookies = gauge(
        &registry,
        "xlb_syn_cookies_active",
        "1 while the VIP answers SYNs with cookies (syn_cookies: always, or over its threshold).",
        &["vip"],
    )?;
    for vip in &snapshot.vips {
        if let Some(mode) = &vip.syn_cookies {
            cookies.with_label_values(&[vip.name.as_str()]).set(i64::from(mode != "auto"));
        }
    }

    let peer = ["peer"];
    let session_up = gauge(&registry, "xlb_bgp_session_up", "1 while the BGP session is established.", &peer)?;
    let prefixes = gauge(&registry, "xlb_bgp_prefixes_sent", "Prefixes announced to the peer.", &peer)?;
    let flaps = counter(&registry, "xlb_bgp_session_flaps_total", "Times the session went down.", &peer)?;
    let bfd_up =
        gauge(&registry, "xlb_bfd_session_up", "1 while the peer's BFD session is up (peers with BFD).", &peer)?;
    let updates_sent = counter(&registry, "xlb_bgp_updates_sent_total", "UPDATE messages sent to the peer.", &peer)?;
    let updates_received =
        counter(&registry, "xlb_bgp_updates_received_total", "UPDATE messages received from the peer.", &peer)?;
    let last_error = gauge(
        &registry,
        "xlb_bgp_last_error_timestamp_seconds",
        "When the peer's session last failed (Unix time); the error itself is in xlb_bgp_last_error_info.",
        &peer,
    )?;
    let last_error_info = gauge(
        &registry,
        "xlb_bgp_last_error_info",
        "The peer's last session error, as a label (one series per peer, replaced when the error changes).",
        &["peer", "error"],
    )?;
    for p in &agent.peers {
        let at = [p.address.to_string()];
        let at = [at[0].as_str()];
        session_up.with_label_values(&at).set(i64::from(p.state == "established"));
        prefixes.with_label_values(&at).set(p.prefixes_sent as i64);
        flaps.with_label_values(&at).inc_by(p.flaps);
        updates_sent.with_label_values(&at).inc_by(p.updates_sent);
        updates_received.with_label_values(&at).inc_by(p.updates_received);
        if let (Some(error), Some(when)) = (&p.last_error, p.last_error_at) {
            last_error.with_label_values(&at).set(i64::try_from(when).unwrap_or(i64::MAX));
            // Bounded: an error message is at most a line; label values this long stay readable.
            let error: String = error.chars().take(200).collect();
            last_error_info.with_label_values(&[at[0], error.as_str()]).set(1);
        }
        if let Some(bfd) = &p.bfd {
            bfd_up.with_label_values(&at).set(i64::from(bfd == "up"));
        }
    }

    let attached = gauge(
        &registry,
        "xlb_xdp_attached",
        "1 while XDP is attached to the interface; mode as the kernel reports it (native, generic; none while detached).",
        &["iface", "mode"],
    )?;
    let link_up = gauge(
        &registry,
        "xlb_interface_up",
        "1 while the interface's link is up; its VIPs are withdrawn while it is down.",
        &["iface"],
    )?;
    let reattached =
        counter(&registry, "xlb_xdp_reattach_total", "Times the agent re-attached a lost XDP program.", &["iface"])?;
    let transmit_errors = counter(
        &registry,
        "xlb_xdp_transmit_errors_total",
        "Frames XDP sent out of the interface (XDP_TX, redirects) that its driver dropped; on a veth, its peer runs no XDP program. Only for drivers that count them.",
        &["iface"],
    )?;
    for a in &agent.attachments {
        let mode = if a.attached { a.mode.as_deref().unwrap_or("unknown") } else { "none" };
        attached.with_label_values(&[a.iface.as_str(), mode]).set(i64::from(a.attached));
        link_up.with_label_values(&[a.iface.as_str()]).set(i64::from(!a.link_down));
        reattached.with_label_values(&[a.iface.as_str()]).inc_by(a.reattached);
        if let Some(errors) = a.transmit_errors {
            transmit_errors.with_label_values(&[a.iface.as_str()]).inc_by(errors);
        }
    }
    // One series per outcome: a probe the backend failed is xlb_health_checks_total{result="failed"};
    // one this host could not run is only here.
    let local_errors = IntCounter::new(
        "xlb_health_check_local_errors_total",
        "Health-check probes this host could not run (out of descriptors, buffers or routes); they count toward neither rise nor fall.",
    )?;
    registry.register(Box::new(local_errors.clone()))?;
    local_errors.inc_by(agent.health_errors.local);

    let checks = counter(
        &registry,
        "xlb_health_checks_total",
        "Health-check probes of the backend, by result (`failed`: counted toward taking it down).",
        &["vip", "backend", "result"],
    )?;
    for ((vip, backend), health) in &agent.health {
        let failed = health.failures.min(health.checks);
        checks.with_label_values(&[vip.as_str(), backend.as_str(), "ok"]).inc_by(health.checks - failed);
        checks.with_label_values(&[vip.as_str(), backend.as_str(), "failed"]).inc_by(failed);
    }

    let build_info = gauge(&registry, "xlb_build_info", "Always 1; the running xlb's version.", &["version"])?;
    build_info.with_label_values(&[crate::cli::VERSION]).set(1);
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

    let generation = IntGauge::new("xlb_config_generation", "Configurations applied since the agent started.")?;
    generation.set(agent.config_generation as i64);
    registry.register(Box::new(generation))?;
    let reload_ok = IntGauge::new(
        "xlb_config_last_reload_successful",
        "1 if the last reload applied (or none happened yet), 0 if it was rejected.",
    )?;
    reload_ok.set(i64::from(agent.last_reload.as_ref().is_none_or(|r| r.ok)));
    registry.register(Box::new(reload_ok))?;
    if let Some(r) = &agent.last_reload {
        let at = IntGauge::new("xlb_config_last_reload_timestamp_seconds", "When the last reload was attempted.")?;
        at.set(r.at as i64);
        registry.register(Box::new(at))?;
    }
    Ok(registry)
}

/// `xlb_health_check_duration_seconds{vip,backend}`: the probes' durations as the checker
/// counted them per bucket (a histogram family made from those counts: the checker, not this
/// render, observes).
fn health_latency(agent: &AgentInfo) -> prometheus::proto::MetricFamily {
    use crate::sources::health::LATENCY_BOUNDS;
    use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
    let mut family = MetricFamily::default();
    family.set_name("xlb_health_check_duration_seconds".to_owned());
    family.set_help("How long the backend's health-check probes took (until success, failure or timeout).".to_owned());
    family.set_field_type(MetricType::HISTOGRAM);
    let metrics = agent
        .health
        .iter()
        .map(|((vip, backend), health)| {
            let label = |name: &str, value: &str| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_owned());
                pair.set_value(value.to_owned());
                pair
            };
            let mut cumulative = 0;
            let buckets = LATENCY_BOUNDS
                .iter()
                .zip(health.latency.counts)
                .map(|(bound, count)| {
                    cumulative += count;
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect();
            let mut histogram = Histogram::default();
            histogram.set_bucket(buckets);
            histogram.set_sample_count(health.latency.counts.iter().sum());
            histogram.set_sample_sum(health.latency.sum_micros as f64 / 1e6);
            let mut metric = Metric::default();
            metric.set_label(vec![label("backend", backend), label("vip", vip)]);
            metric.set_histogram(histogram);
            metric
        })
        .collect();
    family.set_metric(metrics);
    family
}
