//! Prometheus `/metrics`: the same snapshot `xlb stats` shows, in the exposition format.
//!
//! The data plane's counters are absolute values read from per-CPU maps, so every scrape builds
//! a fresh registry from one snapshot (counters set with `inc_by` from zero) instead of keeping
//! registered counters in step with the maps.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use prometheus::{Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore},
    task::JoinHandle,
};

use crate::{
    announce::bgp::PeerStatus, serve::accept::AcceptErrors, serve::admin::ReloadOutcome, serve::stats::Snapshot,
};

/// Agent facts exported next to the data plane's counters.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub config_generation: u64,
    pub last_reload: Option<ReloadOutcome>,
    pub peers: Vec<PeerStatus>,
    /// XDP on each of the agent's interfaces.
    pub attachments: Vec<crate::serve::admin::AttachmentStatus>,
    /// Health-check probes that failed, by whose fault.
    pub health_errors: crate::sources::health::ErrorCounts,
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

    let attached = gauge(&registry, "xlb_xdp_attached", "1 while XDP is attached to the interface.", &["iface"])?;
    let reattached =
        counter(&registry, "xlb_xdp_reattach_total", "Times the agent re-attached a lost XDP program.", &["iface"])?;
    for a in &agent.attachments {
        attached.with_label_values(&[a.iface.as_str()]).set(i64::from(a.attached));
        reattached.with_label_values(&[a.iface.as_str()]).inc_by(a.reattached);
    }
    let check_errors = counter(
        &registry,
        "xlb_health_check_errors_total",
        "Failed health-check probes: `backend` counts toward taking it down, `local` (this host out of descriptors, buffers or routes) counts toward nothing.",
        &["kind"],
    )?;
    check_errors.with_label_values(&["backend"]).inc_by(agent.health_errors.backend);
    check_errors.with_label_values(&["local"]).inc_by(agent.health_errors.local);

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

/// Bounds on what `/metrics` clients may cost the agent.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once. Beyond it a connection is accepted, told 503 and closed: the
    /// client learns at once instead of queueing in the kernel behind stuck clients, and its
    /// retry after the next scrape interval finds slots that the deadlines below have freed.
    pub max_connections: usize,
    /// Time to receive the request head.
    pub head_timeout: Duration,
    /// Largest request head read.
    pub head_max: usize,
    /// Time to deliver the whole response (until the client closes its side); a client that
    /// reads slower is disconnected with a reset, which frees what the kernel still queues.
    pub write_timeout: Duration,
    /// A body rendered less than this long ago is served again instead of rendering another.
    pub reuse_for: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A few Prometheus servers and curls, with plenty to spare.
            max_connections: 64,
            head_timeout: Duration::from_secs(5),
            head_max: 8 * 1024,
            // Prometheus' default scrape timeout is 10 s: past it nobody reads the answer.
            write_timeout: Duration::from_secs(10),
            // Scrapers a second apart see the same counters; renders stay one per second.
            reuse_for: Duration::from_secs(1),
        }
    }
}

/// Serves `GET /metrics` on `addr` with whatever `scrape` returns, until the task is aborted.
pub async fn serve<F>(addr: SocketAddr, scrape: Arc<F>) -> Result<JoinHandle<()>, MetricsError>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    serve_with(addr, scrape, Limits::default()).await
}

/// [`serve`] with other limits.
pub async fn serve_with<F>(addr: SocketAddr, scrape: Arc<F>, limits: Limits) -> Result<JoinHandle<()>, MetricsError>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let server = Arc::new(Server { body: Body::new(scrape, limits.reuse_for), limits });
    Ok(tokio::spawn(accept_loop(listener, server)))
}

struct Server<F> {
    body: Body<F>,
    limits: Limits,
}

async fn accept_loop<F>(listener: TcpListener, server: Arc<Server<F>>)
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(server.limits.max_connections));
    let mut errors = AcceptErrors::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                errors.after("metrics", &e).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Best effort, never waits: a fresh socket's send buffer takes these few bytes.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &server).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\
Connection: close\r\n\r\ntoo many metrics connections; try again\n";

/// One request per connection: enough for Prometheus and curl.
async fn respond<F>(mut stream: TcpStream, server: &Server<F>) -> std::io::Result<()>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let limits = &server.limits;
    let Ok(head) = tokio::time::timeout(limits.head_timeout, read_head(&mut stream, limits.head_max)).await else {
        return Ok(());
    };
    let head = head?;
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => match server.body.current().await {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4", text),
            Err(e) => {
                ("500 Internal Server Error", "text/plain", format!("reading the data plane failed: {e}\n").into())
            }
        },
        (b"GET", _) => ("404 Not Found", "text/plain", Bytes::from_static(b"metrics are at /metrics\n")),
        _ => ("405 Method Not Allowed", "text/plain", Bytes::from_static(b"GET /metrics\n")),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // The body is the shared render, written from where it lies: a client that does not read
    // holds a reference to it and a socket, no copy.
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        // Written is only queued: the kernel may take megabytes for a client that reads
        // nothing and would keep them after our close. The client's own close says it has read
        // the response (it was told `Connection: close`); until then the deadline holds.
        let mut rest = [0u8; 512];
        while stream.read(&mut rest).await? != 0 {}
        Ok(())
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(written) => written,
        Err(_) => {
            tracing::debug!("a metrics client read too slowly; disconnected");
            reset(&stream);
            Ok(())
        }
    }
}

/// The request head: up to the blank line, `max` bytes or the end of the stream, whichever
/// comes first.
async fn read_head(stream: &mut TcpStream, max: usize) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < max {
        let room = buf.len().min(max - head.len());
        let n = stream.read(&mut buf[..room]).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// Makes the coming close a reset, so the kernel drops what is still queued for the client at
/// once instead of holding it for a peer that does not read.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// The rendered exposition text, shared by the scrapes that come while it is fresh.
struct Body<F> {
    scrape: Arc<F>,
    /// The last render: taken by one scrape at a time, so at most one render runs.
    last: Arc<Mutex<Option<Rendered>>>,
    reuse_for: Duration,
}

#[derive(Clone)]
struct Rendered {
    /// When the render finished: reusing it for `reuse_for` after that bounds renders to one
    /// per `reuse_for` however long each takes.
    at: Instant,
    text: Result<Bytes, String>,
}

impl<F> Body<F>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    fn new(scrape: Arc<F>, reuse_for: Duration) -> Self {
        Body { scrape, last: Arc::new(Mutex::new(None)), reuse_for }
    }

    /// The last render if it is fresh, else a new one (failures are reused alike).
    async fn current(&self) -> Result<Bytes, String> {
        let mut last = Arc::clone(&self.last).lock_owned().await;
        if let Some(rendered) = last.as_ref().filter(|r| r.at.elapsed() < self.reuse_for) {
            return rendered.text.clone();
        }
        let scrape = Arc::clone(&self.scrape);
        // Its own task, holding the lock: a scrape whose client goes away mid-render must not
        // let the next one start a second render beside this one.
        let render = tokio::spawn(async move {
            // Tens of milliseconds at 10 000 VIPs: off the runtime's workers.
            let text = match tokio::task::spawn_blocking(move || scrape()).await {
                Ok(Ok(text)) => Ok(Bytes::from(text)),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(format!("rendering the metrics failed: {e}")),
            };
            *last = Some(Rendered { at: Instant::now(), text: text.clone() });
            text
        });
        render.await.unwrap_or_else(|e| Err(format!("rendering the metrics failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::stats::{BackendStats, Counter, VipStats};

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
                mode: "dsr-l2".into(),
                up: true,
                serving: 1,
                min_healthy: 1,
                healthy: 1,
                panic: false,
                panic_threshold: 50,
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
            flow_table: crate::apply::dataplane::FlowTableUsage { entries: 6, size: 1024 },
            nat: crate::apply::nat::NatUsage {
                flows: 5,
                swept: 2,
                pools: vec![crate::apply::nat::PoolUsage {
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
                attachments: vec![crate::serve::admin::AttachmentStatus {
                    iface: "eth0".into(),
                    attached: false,
                    operator_detached: false,
                    reason: Some("gone".into()),
                    reattached: 2,
                }],
                health_errors: crate::sources::health::ErrorCounts { backend: 7, local: 3 },
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
            "xlb_vip_panic{vip=\"web\"} 0",
            "xlb_backend_packets_total{backend=\"10.0.0.1\",vip=\"web\"} 7",
            "xlb_backend_up{backend=\"10.0.0.2\",vip=\"web\"} 0",
            "xlb_backend_weight{backend=\"10.0.0.2\",vip=\"web\"} 0",
            "xlb_packets_total{outcome=\"forwarded\"} 10",
            "xlb_drops_total{reason=\"drop_no_backend\"} 2",
            "xlb_malformed_total{reason=\"truncated_tcp\"} 0",
            "xlb_flow_events_total{event=\"flow_miss\"} 4",
            "xlb_config_generation 3",
            "xlb_xdp_attached{iface=\"eth0\"} 0",
            "xlb_xdp_reattach_total{iface=\"eth0\"} 2",
            "xlb_health_check_errors_total{kind=\"backend\"} 7",
            "xlb_health_check_errors_total{kind=\"local\"} 3",
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

    /// An address nothing listens on (for `serve_with`, which binds it itself).
    fn free_addr() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    }

    /// Everything the server sends until it closes or resets the connection; `None` if that
    /// takes longer than `patience`.
    async fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> Option<Vec<u8>> {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        tokio::time::timeout(patience, async {
            // A reset (the server gave up on the client) ends the stream like a close.
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                received.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .ok()?;
        Some(received)
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let reply = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("a reply in time");
        String::from_utf8(reply).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_over_http_and_404_elsewhere() {
        let addr = free_addr();
        let server = serve(addr, Arc::new(|| Ok("xlb_up 1\n".to_owned()))).await.unwrap();
        let reply = get(addr, "/metrics").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\nContent-Length: 9\r\nConnection: close\r\n\r\nxlb_up 1\n"), "{reply}");
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }

    #[tokio::test]
    async fn a_scrape_error_is_a_500() {
        let addr = free_addr();
        let server = serve(addr, Arc::new(|| Err("map read failed".to_owned()))).await.unwrap();
        let reply = get(addr, "/metrics").await;
        assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
        assert!(reply.ends_with("\r\n\r\nreading the data plane failed: map read failed\n"), "{reply}");
        server.abort();
    }

    /// A current-thread runtime: were the render on it, nothing else would be served meanwhile.
    #[tokio::test]
    async fn one_render_off_the_runtime_serves_concurrent_scrapes() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let released_in_time = Arc::new(AtomicBool::new(false));
        let scrape = {
            let (calls, release, released_in_time) =
                (Arc::clone(&calls), Arc::clone(&release), Arc::clone(&released_in_time));
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                let until = Instant::now() + Duration::from_secs(5);
                while !release.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                released_in_time.store(release.load(Ordering::SeqCst), Ordering::SeqCst);
                Ok("xlb_up 1\n".to_owned())
            }
        };
        let addr = free_addr();
        let limits = Limits { reuse_for: Duration::from_secs(60), ..Limits::default() };
        let server = serve_with(addr, Arc::new(scrape), limits).await.unwrap();
        let scrapers: Vec<_> = (0..20).map(|_| tokio::spawn(get(addr, "/metrics"))).collect();
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The render is blocked; this runtime's only thread still answers.
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        release.store(true, Ordering::SeqCst);
        for scraper in scrapers {
            let reply = scraper.await.unwrap();
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nxlb_up 1\n"), "{reply}");
        }
        assert!(released_in_time.load(Ordering::SeqCst), "the render ran on the runtime's thread");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one render for every scrape within reuse_for");
        server.abort();
    }

    #[tokio::test]
    async fn a_stale_render_is_rendered_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let scrape = move || Ok(format!("xlb_renders {}\n", counted.fetch_add(1, Ordering::SeqCst) + 1));
        let addr = free_addr();
        let limits = Limits { reuse_for: Duration::from_millis(50), ..Limits::default() };
        let server = serve_with(addr, Arc::new(scrape), limits).await.unwrap();
        assert!(get(addr, "/metrics").await.ends_with("xlb_renders 1\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(get(addr, "/metrics").await.ends_with("xlb_renders 2\n"));
        server.abort();
    }

    /// Connects with a tiny receive buffer, asks for the metrics and reads nothing.
    async fn slow_reader(addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        stream
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_do_not_read_neither_block_others_nor_stay() {
        const BODY: usize = 4_000_000;
        let body = format!("{}\n", "x".repeat(BODY - 1));
        let addr = free_addr();
        // Generous: on a loaded machine the server may start on a stuck client late, and a
        // stuck client read before its deadline would just be drained.
        let write_timeout = Duration::from_secs(3);
        let limits =
            Limits { max_connections: 256, write_timeout, reuse_for: Duration::from_secs(60), ..Limits::default() };
        let server = serve_with(addr, Arc::new(move || Ok(body.clone())), limits).await.unwrap();
        let mut stuck = Vec::new();
        for _ in 0..200 {
            stuck.push(slow_reader(addr).await);
        }
        let all_asked = Instant::now();

        let reply = get(addr, "/metrics").await;
        assert!(all_asked.elapsed() < write_timeout, "a reading client waited for the stuck ones");
        let (head, got) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains(&format!("Content-Length: {BODY}\r\n")));
        assert_eq!(got.len(), BODY, "the whole body");

        // Reading earlier would drain them in time: only once every deadline has passed.
        tokio::time::sleep_until((all_asked + write_timeout + Duration::from_secs(2)).into()).await;
        for stream in &mut stuck {
            let received =
                read_until_closed(stream, Duration::from_secs(10)).await.expect("dropped after the deadline");
            assert!(received.len() < BODY, "a client that did not read in time was not cut off");
        }
        server.abort();
    }

    #[tokio::test]
    async fn beyond_max_connections_a_client_is_told_503_at_once() {
        let addr = free_addr();
        let limits = Limits { max_connections: 1, head_timeout: Duration::from_secs(60), ..Limits::default() };
        let server = serve_with(addr, Arc::new(|| Ok("xlb_up 1\n".to_owned())), limits).await.unwrap();
        // Holds the only slot: connected, silent.
        let silent = TcpStream::connect(addr).await.unwrap();
        let reply = get(addr, "/metrics").await;
        assert_eq!(
            reply,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\
             Connection: close\r\n\r\ntoo many metrics connections; try again\n"
        );
        drop(silent);
        // The slot comes back once the server sees the close.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reply = get(addr, "/metrics").await;
            if reply.starts_with("HTTP/1.1 200 OK\r\n") {
                break;
            }
            assert!(Instant::now() < deadline, "the slot was not released: {reply}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.abort();
    }
}
