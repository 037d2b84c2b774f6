//! `xlb explain`: one packet of a flow run through the live program with the live maps, and
//! what it met on the way — the VIP, the connection table, the Maglev table, the backend, the
//! action and the headers it left. The run happens in a shadow load of the balancer
//! ([`Shadow`]): the live configuration maps, private state maps seeded with what the live
//! tables hold for this flow. So the answer is the program's own, and no live flow, pool source
//! or counter changes.

pub mod packet;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use lb_common::{
    BACKEND_FLAG_IPIP, FlowKey, NatFlow, PROTO_TCP, PROTO_UDP, VIP_FLAG_HASH_SOURCE_ONLY, VIP_FLAG_NAT, VipKey,
    source_hash,
};
use serde::{Deserialize, Serialize};

pub use packet::Segment;

use crate::{
    apply::{
        dataplane::{DataplaneError, Seed, Shadow, ShadowRun},
        reconcile::AppliedVip,
        testrun::XdpAction,
    },
    config::{ip_from_words, ip_words},
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("the client {client} and the VIP {vip} must both be IPv4 or both IPv6")]
    Families { client: SocketAddr, vip: SocketAddr },
    #[error("--packet {segment} is a TCP packet and this flow is udp: leave out --packet")]
    TcpPacketForUdp { segment: &'static str },
    #[error("--packet udp does not fit a tcp flow: choose syn, ack, fin or rst, or leave it out")]
    UdpPacketForTcp,
    #[error("cannot build the packet: {0}")]
    Build(String),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// The packet to explain: a client's tuple toward a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub udp: bool,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    /// Which packet of the flow (TCP). `None`: an ACK if the live tables hold the flow, else a
    /// SYN — the packet this flow would send next.
    pub segment: Option<Segment>,
}

/// Where the live data plane is: its pin directory and the interface packets arrive on.
#[derive(Debug, Clone)]
pub struct LivePlane {
    pub pin_dir: PathBuf,
    pub iface: String,
    pub ifindex: u32,
    pub iface_mac: [u8; 6],
}

/// What `xlb explain` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The packet run, in words: `tcp SYN 198.51.100.7:40000 → 192.0.2.10:80 on eth0`.
    pub packet: String,
    pub vip: Option<ExplainedVip>,
    /// What the live tables hold for this flow (connection table or NAT table).
    pub known: Option<KnownFlow>,
    /// Where a new flow of this tuple lands in the VIP's Maglev table.
    pub maglev: Option<MaglevEntry>,
    /// The backend the program sent the packet to.
    pub backend: Option<String>,
    /// The verdict: `tx`, `redirect`, `pass`, `drop`, `aborted`.
    pub action: String,
    /// Counters the packet moved, each with what it means.
    pub counters: Vec<CounterMoved>,
    /// What the packet would leave in the tables (a new entry, a confirmed one, a NAT source).
    pub records: Option<String>,
    pub headers_in: Vec<String>,
    pub headers_out: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainedVip {
    pub name: String,
    pub endpoint: String,
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownFlow {
    /// `connection table` or `NAT table`.
    pub table: String,
    /// The backend it names (`slot N, no longer this VIP's` when retired).
    pub backend: String,
    /// `confirmed` / `embryonic` (connection table), `established` / `closing` (NAT).
    pub state: String,
    /// NAT: the source toward the backend.
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaglevEntry {
    /// The entry, of `size`.
    pub entry: u32,
    pub size: u32,
    /// `5-tuple` or `source address`.
    pub hashed_on: String,
    /// The backend the entry names (`None`: the table names no live backend there).
    pub backend: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterMoved {
    pub counter: String,
    pub meaning: String,
}

/// How many live-held pool sources a NAT explanation steps over before it stops (the live
/// program's claim goes on to the next candidates; see `note`).
const NAT_CANDIDATES_FOLLOWED: usize = 32;

/// Explains `probe` against the live data plane, naming VIPs and backends from `applied` (what
/// the reconciler last wrote).
pub fn explain(
    live: &LivePlane,
    applied: &BTreeMap<VipKey, AppliedVip>,
    probe: &Probe,
) -> Result<Explanation, ExplainError> {
    if probe.client.is_ipv4() != probe.vip.is_ipv4() {
        return Err(ExplainError::Families { client: probe.client, vip: probe.vip });
    }
    // The packet asked for, checked before any work; `None`: decided by what the tables hold.
    let asked = match (probe.udp, probe.segment) {
        (true, None | Some(Segment::Udp)) => Some(Segment::Udp),
        (true, Some(other)) => return Err(ExplainError::TcpPacketForUdp { segment: other.flag() }),
        (false, Some(Segment::Udp)) => return Err(ExplainError::UdpPacketForTcp),
        (false, asked) => asked,
    };
    let mut shadow = Shadow::load(&live.pin_dir)?;
    let key = flow_key(probe);
    let seed = shadow.live_seed(&key)?;
    let vip = find_vip(applied, &key);
    let slots: Vec<u32> = vip.map(|v| v.slots.clone()).unwrap_or_default();
    let name_of = |slot: u32| backend_name(vip, slot);
    let known = known_flow(&shadow, &seed, &key, vip)?;
    let segment = asked.unwrap_or(if known.is_some() { Segment::Ack } else { Segment::Syn });
    let frame = packet::build(probe.client, probe.vip, segment, live.iface_mac)?;
    let (run, notes) = run_following_pool(&mut shadow, live, &frame, &key, seed, &slots)?;
    let maglev = match vip {
        Some(v) => maglev_entry(&mut shadow, live, v, probe, &key, &slots)?,
        None => None,
    };
    let records = records(&run, &key, vip, known.as_ref());
    Ok(Explanation {
        packet: format!("{} {} → {} on {}", segment.name(), probe.client, probe.vip, live.iface),
        vip: vip.map(|v| ExplainedVip {
            name: v.vip.name.clone(),
            endpoint: v.vip.endpoint.clone(),
            mode: mode(v).to_owned(),
        }),
        known,
        maglev,
        backend: run.backend_slot.map(name_of),
        action: action_name(run.action).to_owned(),
        // The outcome first, then the events on the way.
        counters: run
            .stats
            .iter()
            .filter(|(stat, _)| stat.is_outcome())
            .chain(run.stats.iter().filter(|(stat, _)| !stat.is_outcome()))
            .map(|(stat, _)| CounterMoved { counter: stat.name().to_owned(), meaning: stat.meaning().to_owned() })
            .collect(),
        records,
        headers_in: packet::describe(&frame),
        headers_out: if run.action == XdpAction::Pass || run.action == XdpAction::Drop {
            Vec::new()
        } else {
            packet::describe(&run.packet)
        },
        notes,
    })
}

/// Runs the frame; for a new NAT flow whose source the shadow found free but the live reverse
/// table holds, copies the live holder in and runs again, as the live claim would step on.
fn run_following_pool(
    shadow: &mut Shadow,
    live: &LivePlane,
    frame: &[u8],
    key: &FlowKey,
    mut seed: Seed,
    slots: &[u32],
) -> Result<(ShadowRun, Vec<String>), ExplainError> {
    let mut notes = Vec::new();
    for _ in 0..NAT_CANDIDATES_FOLLOWED {
        let run = shadow.run(frame, live.ifindex, key, &seed, slots)?;
        let new_nat_flow = seed.nat_flows.iter().all(|(k, _)| k != key);
        let Some(entry) = run.nat_flow.filter(|_| new_nat_flow) else { return Ok((run, notes)) };
        let reverse = shadow.reverse_key(key, &entry)?;
        let Some(holder) = shadow.live_nat_reverse(&reverse)? else { return Ok((run, notes)) };
        seed.nat_reverse.push((reverse, holder));
    }
    notes.push(format!(
        "the first {NAT_CANDIDATES_FOLLOWED} pool sources this flow would try are in use live; the live program tries further ones"
    ));
    Ok((shadow.run(frame, live.ifindex, key, &seed, slots)?, notes))
}

/// The flow's key as the program builds it from the packet.
fn flow_key(probe: &Probe) -> FlowKey {
    let (saddr, family) = ip_words(probe.client.ip());
    let (daddr, _) = ip_words(probe.vip.ip());
    FlowKey {
        saddr,
        daddr,
        sport: probe.client.port().to_be(),
        dport: probe.vip.port().to_be(),
        proto: if probe.udp { PROTO_UDP } else { PROTO_TCP },
        family,
        pad: 0,
    }
}

/// The VIP serving the flow's destination: the exact port's, else a port range's (as the
/// program looks it up).
fn find_vip<'a>(applied: &'a BTreeMap<VipKey, AppliedVip>, key: &FlowKey) -> Option<&'a AppliedVip> {
    let exact = VipKey { addr: key.daddr, port: key.dport, proto: key.proto, family: key.family };
    applied.get(&exact).or_else(|| {
        let port = u16::from_be(key.dport);
        applied.get(&VipKey { port: 0, ..exact }).filter(|v| v.meta.port_first <= port && port <= v.meta.port_last)
    })
}

fn mode(vip: &AppliedVip) -> &'static str {
    if vip.vip.flags & VIP_FLAG_NAT != 0 {
        "nat"
    } else if vip.vip.backend_flags & BACKEND_FLAG_IPIP != 0 {
        "dsr-ipip"
    } else {
        "dsr-l2"
    }
}

/// A backend slot's name: its address (and port, for NAT backends with one of their own).
fn backend_name(vip: Option<&AppliedVip>, slot: u32) -> String {
    let found = vip.and_then(|v| v.slots.iter().position(|&s| s == slot).map(|i| &v.vip.backends[i]));
    match found {
        Some(b) if b.port != 0 => SocketAddr::new(ip_from_words(b.addr, b.family), u16::from_be(b.port)).to_string(),
        Some(b) => b.identity.clone(),
        None => format!("backend slot {slot} (no longer this VIP's)"),
    }
}

fn known_flow(
    shadow: &Shadow,
    seed: &Seed,
    key: &FlowKey,
    vip: Option<&AppliedVip>,
) -> Result<Option<KnownFlow>, ExplainError> {
    if let Some((_, entry)) = seed.nat_flows.iter().find(|(k, _)| k == key) {
        let closing = entry.flags & lb_common::NAT_FLAG_CLOSING != 0;
        return Ok(Some(KnownFlow {
            table: "NAT table".into(),
            backend: backend_name(vip, entry.backend),
            state: if closing { "closing" } else { "established" }.into(),
            source: Some(nat_source(entry, key)),
        }));
    }
    let Some(set) = &seed.flow_set else { return Ok(None) };
    let Some(way) = set.way_of(key) else { return Ok(None) };
    let Some(flow) = set.find(key) else { return Ok(None) };
    let live = shadow.backend(flow.backend)?;
    let backend = if live.generation == flow.generation && live.flags & lb_common::BACKEND_FLAG_ACTIVE != 0 {
        backend_name(vip, flow.backend)
    } else {
        format!("backend slot {} (retired since: the flow will be hashed again)", flow.backend)
    };
    Ok(Some(KnownFlow {
        table: "connection table".into(),
        backend,
        state: if set.confirmed(way) { "confirmed" } else { "embryonic" }.into(),
        source: None,
    }))
}

/// A NAT flow's source toward its backend, `address:port`.
fn nat_source(entry: &NatFlow, key: &FlowKey) -> String {
    SocketAddr::new(ip_from_words(entry.source, key.family), u16::from_be(entry.source_port)).to_string()
}

/// The Maglev entry a new flow of this tuple hashes to, and its backend, as the program picks
/// it: a new flow's packet run with no table state.
fn maglev_entry(
    shadow: &mut Shadow,
    live: &LivePlane,
    vip: &AppliedVip,
    probe: &Probe,
    key: &FlowKey,
    slots: &[u32],
) -> Result<Option<MaglevEntry>, ExplainError> {
    if vip.meta.table_size == 0 {
        return Ok(None);
    }
    let source_only = vip.meta.flags & VIP_FLAG_HASH_SOURCE_ONLY != 0;
    let pick = if source_only { source_hash(&key.saddr, u32::from(key.proto)) } else { key.hash() };
    let opening = if probe.udp { Segment::Udp } else { Segment::Syn };
    let frame = packet::build(probe.client, probe.vip, opening, live.iface_mac)?;
    let run = shadow.run(&frame, live.ifindex, key, &Seed::default(), slots)?;
    Ok(Some(MaglevEntry {
        entry: pick % vip.meta.table_size,
        size: vip.meta.table_size,
        hashed_on: if source_only { "source address" } else { "5-tuple" }.into(),
        backend: run.backend_slot.map(|slot| backend_name(Some(vip), slot)),
    }))
}

/// What the run left in the shadow's tables, in words.
fn records(run: &ShadowRun, key: &FlowKey, vip: Option<&AppliedVip>, known: Option<&KnownFlow>) -> Option<String> {
    if let (Some(entry), None) = (&run.nat_flow, known) {
        return Some(format!(
            "opens a NAT flow: source {} toward {}",
            nat_source(entry, key),
            backend_name(vip, entry.backend)
        ));
    }
    let (flow, confirmed) = run.recorded?;
    let backend = backend_name(vip, flow.backend);
    match known {
        None => Some(format!(
            "records the flow in the connection table: {backend}, {}",
            if confirmed { "confirmed" } else { "embryonic until its next packet" }
        )),
        Some(k) if k.state == "embryonic" && confirmed => {
            Some(format!("confirms the flow's connection-table entry ({backend})"))
        }
        Some(_) => None,
    }
}

fn action_name(action: XdpAction) -> &'static str {
    match action {
        XdpAction::Tx => "tx",
        XdpAction::Redirect => "redirect",
        XdpAction::Pass => "pass",
        XdpAction::Drop => "drop",
        XdpAction::Aborted | XdpAction::Unknown(_) => "aborted",
    }
}
