//! Prometheus `/metrics`: the same snapshot `xlb stats` shows, in the exposition format.
//!
//! The data plane's counters are absolute values read from per-CPU maps, so every scrape builds
//! a fresh registry from one snapshot (counters set with `inc_by` from zero) instead of keeping
//! registered counters in step with the maps.

use std::{net::SocketAddr, sync::Arc};

use prometheus::{Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{admin::ReloadOutcome, bgp::PeerStatus, stats::Snapshot};

/// Agent facts exported next to the data plane's counters.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub config_generation: u64,
    pub last_reload: Option<ReloadOutcome>,
    pub peers: Vec<PeerStatus>,
    /// The L7 tier's per-route families (kept by the tier, appended as they are).
    pub l7: Vec<prometheus::proto::MetricFamily>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics listener {addr}: {source}; pick a free address with --metrics-listen")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The exposition text for `snapshot` and `agent`.
pub fn render(snapshot: &Snapshot, agent: &AgentInfo) -> String {
    match build(snapshot, agent) {
        Ok(registry) => {
            let mut out = Vec::new();
            let mut families = registry.gather();
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
    let vip_serving = gauge(&registry, "xlb_vip_serving_backends", "Backends taking new flows.", &["vip"])?;
    let labels = ["vip", "backend"];
    let be_packets = counter(&registry, "xlb_backend_packets_total", "Packets sent to the backend.", &labels)?;
    let be_bytes = counter(&registry, "xlb_backend_bytes_total", "Bytes sent to the backend.", &labels)?;
    let be_flows = counter(&registry, "xlb_backend_new_flows_total", "New flows sent to the backend.", &labels)?;
    let be_up = gauge(&registry, "xlb_backend_up", "1 while the backend passes its health check.", &labels)?;
    let be_drained = gauge(&registry, "xlb_backend_drained", "1 while the backend is drained.", &labels)?;
    let be_weight = gauge(&registry, "xlb_backend_weight", "Effective weight (0 while down or drained).", &labels)?;
    let be_mac = gauge(&registry, "xlb_backend_mac_known", "1 when the backend's L2 next hop is known.", &labels)?;
    for v in &snapshot.vips {
        let vip = [v.name.as_str()];
        vip_packets.with_label_values(&vip).inc_by(v.packets);
        vip_bytes.with_label_values(&vip).inc_by(v.bytes);
        vip_flows.with_label_values(&vip).inc_by(v.new_flows);
        vip_up.with_label_values(&vip).set(i64::from(v.up));
        vip_serving.with_label_values(&vip).set(v.serving as i64);
        for b in &v.backends {
            let at = [v.name.as_str(), b.address.as_str()];
            be_packets.with_label_values(&at).inc_by(b.packets);
            be_bytes.with_label_values(&at).inc_by(b.bytes);
            be_flows.with_label_values(&at).inc_by(b.new_flows);
            be_up.with_label_values(&at).set(i64::from(b.up));
            be_drained.with_label_values(&at).set(i64::from(b.drained));
            be_weight.with_label_values(&at).set(i64::from(b.weight));
            be_mac.with_label_values(&at).set(i64::from(b.mac_known));
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

    let peer = ["peer"];
    let session_up = gauge(&registry, "xlb_bgp_session_up", "1 while the BGP session is established.", &peer)?;
    let prefixes = gauge(&registry, "xlb_bgp_prefixes_sent", "Prefixes announced to the peer.", &peer)?;
    let flaps = counter(&registry, "xlb_bgp_session_flaps_total", "Times the session went down.", &peer)?;
    for p in &agent.peers {
        let at = [p.address.to_string()];
        let at = [at[0].as_str()];
        session_up.with_label_values(&at).set(i64::from(p.state == "established"));
        prefixes.with_label_values(&at).set(p.prefixes_sent as i64);
        flaps.with_label_values(&at).inc_by(p.flaps);
    }

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

/// Serves `GET /metrics` on `addr` with whatever `scrape` returns, until the task is aborted.
pub async fn serve<F>(addr: SocketAddr, scrape: Arc<F>) -> Result<tokio::task::JoinHandle<()>, MetricsError>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let scrape = Arc::clone(&scrape);
            tokio::spawn(async move {
                if let Err(e) = respond(stream, &*scrape).await {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    }))
}

/// One request per connection: enough for Prometheus and curl.
async fn respond<F: Fn() -> Result<String, String>>(mut stream: TcpStream, scrape: &F) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    // The request head, bounded in size and time.
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => match scrape() {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4", text),
            Err(e) => ("500 Internal Server Error", "text/plain", format!("reading the data plane failed: {e}\n")),
        },
        (b"GET", _) => ("404 Not Found", "text/plain", "metrics are at /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{BackendStats, Counter, VipStats};

    fn snapshot() -> Snapshot {
        Snapshot {
            rx_packets: 12,
            counters: vec![
                Counter { name: "forwarded".into(), malformed: false, drop: false, outcome: true, value: 10 },
                Counter { name: "drop_no_backend".into(), malformed: false, drop: true, outcome: true, value: 2 },
                Counter { name: "truncated_tcp".into(), malformed: true, drop: false, outcome: true, value: 0 },
                Counter { name: "flow_miss".into(), malformed: false, drop: false, outcome: false, value: 4 },
            ],
            vips: vec![VipStats {
                name: "web".into(),
                endpoint: "192.0.2.1:80/tcp".into(),
                up: true,
                serving: 1,
                min_healthy: 1,
                packets: 10,
                bytes: 1000,
                new_flows: 4,
                backends: vec![
                    BackendStats {
                        address: "10.0.0.1".into(),
                        weight: 3,
                        configured_weight: 3,
                        up: true,
                        drained: false,
                        mac_known: true,
                        health_error: None,
                        packets: 7,
                        bytes: 700,
                        new_flows: 3,
                    },
                    BackendStats {
                        address: "10.0.0.2".into(),
                        weight: 0,
                        configured_weight: 1,
                        up: false,
                        drained: false,
                        mac_known: true,
                        health_error: Some("connect: connection refused".into()),
                        packets: 3,
                        bytes: 300,
                        new_flows: 1,
                    },
                ],
            }],
            flow_table: crate::dataplane::FlowTableUsage { entries: 6, size: 1024 },
            nat: crate::nat::NatUsage {
                flows: 5,
                swept: 2,
                pools: vec![crate::nat::PoolUsage {
                    pool: "edge".into(),
                    address: "198.51.100.1".into(),
                    flows: 5,
                    ports: 100,
                }],
            },
            l7: Vec::new(),
        }
    }

    #[test]
    fn exposition_carries_every_counter_and_state() {
        let text = render(
            &snapshot(),
            &AgentInfo {
                config_generation: 3,
                last_reload: Some(ReloadOutcome { ok: false, message: "bad".into(), at: 1700000000 }),
                peers: vec![PeerStatus {
                    address: "10.0.0.254".parse().unwrap(),
                    remote_as: 65000,
                    state: "established".into(),
                    established_for_secs: Some(5),
                    prefixes_sent: 2,
                    flaps: 1,
                    last_error: None,
                    bfd: Some("up".into()),
                }],
                l7: vec![],
            },
        );
        for line in [
            "xlb_vip_packets_total{vip=\"web\"} 10",
            "xlb_flow_table_entries 6",
            "xlb_flow_table_size 1024",
            "xlb_nat_flows 5",
            "xlb_nat_swept_total 2",
            "xlb_nat_pool_flows{address=\"198.51.100.1\",pool=\"edge\"} 5",
            "xlb_nat_pool_ports{address=\"198.51.100.1\",pool=\"edge\"} 100",
            "xlb_vip_bytes_total{vip=\"web\"} 1000",
            "xlb_vip_up{vip=\"web\"} 1",
            "xlb_backend_packets_total{backend=\"10.0.0.1\",vip=\"web\"} 7",
            "xlb_backend_up{backend=\"10.0.0.2\",vip=\"web\"} 0",
            "xlb_backend_weight{backend=\"10.0.0.2\",vip=\"web\"} 0",
            "xlb_packets_total{outcome=\"forwarded\"} 10",
            "xlb_drops_total{reason=\"drop_no_backend\"} 2",
            "xlb_malformed_total{reason=\"truncated_tcp\"} 0",
            "xlb_flow_events_total{event=\"flow_miss\"} 4",
            "xlb_config_generation 3",
            "xlb_bgp_session_up{peer=\"10.0.0.254\"} 1",
            "xlb_bgp_prefixes_sent{peer=\"10.0.0.254\"} 2",
            "xlb_bgp_session_flaps_total{peer=\"10.0.0.254\"} 1",
            "xlb_config_last_reload_successful 0",
            "xlb_config_last_reload_timestamp_seconds 1700000000",
            "# TYPE xlb_vip_packets_total counter",
            "# TYPE xlb_backend_up gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
        assert!(!text.contains("xlb_drops_total{reason=\"forwarded\"}"), "only drops are drops");
    }

    #[tokio::test]
    async fn serves_metrics_over_http_and_404_elsewhere() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = serve(addr, Arc::new(|| Ok("xlb_up 1\n".to_owned()))).await.unwrap();
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
            reply
        };
        let reply = get("/metrics").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nxlb_up 1\n"), "{reply}");
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
