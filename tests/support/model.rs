//! A pure-Rust reference model of the balancer's per-packet decision: verdict, counter, backend
//! and the exact bytes that leave. Written from the behaviour the README and the data-plane
//! issue define, over byte slices, with etherparse building the headers it adds (so checksums
//! are computed independently of the XDP program).

use std::collections::{BTreeMap, HashMap};

use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header,
    icmpv4::DestUnreachableHeader,
};
use lb_common::{
    ADDR_FLAG_DROP_UNHASHABLE, BACKEND_FLAG_IPIP, FAMILY_V4, FAMILY_V6, FLOW_WAYS, FlowKey, NODE_FLAG_TUNNEL_V4,
    NODE_FLAG_TUNNEL_V6, NodeConfig, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Stat, VIP_FLAG_HASH_SOURCE_ONLY,
    VipAddrKey, VipKey, flow_hash, flow_set, flow_sets, source_hash,
};
use xlb::{
    config::Config,
    state::desired::{DesiredState, DesiredVip, NodeFacts},
    state::maglev::{self, Member},
};

/// What the model says the program does with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// XDP_PASS, frame untouched.
    Pass(Stat),
    /// XDP_DROP.
    Drop(Stat),
    /// XDP_TX with these bytes; `backend` is the chosen backend's identity (None for an ICMP
    /// answer to the client).
    Tx { stat: Stat, packet: Vec<u8>, backend: Option<String> },
}

impl Verdict {
    pub fn stat(&self) -> Stat {
        match self {
            Verdict::Pass(s) | Verdict::Drop(s) | Verdict::Tx { stat: s, .. } => *s,
        }
    }
}

#[derive(Debug)]
pub struct Model {
    pub(crate) node: NodeConfig,
    pub(crate) vips: BTreeMap<VipKey, DesiredVip>,
    addr_flags: BTreeMap<VipAddrKey, u32>,
    /// Per VIP: Maglev table as indices into its backends.
    tables: BTreeMap<VipKey, Vec<u32>>,
    /// Connection table: flow → backend index of its VIP, in sets as the program keeps it.
    flows: FlowTableModel,
    /// Event counters the model predicts (flow_miss, icmp_error_to_backend).
    pub events: BTreeMap<&'static str, u64>,
    /// NAT pools and flow tables.
    pub nat: crate::model_nat::NatState,
}

/// What an ICMP error quotes (addresses and ports as in memory), where, and whether it is a
/// fragmentation-needed / packet-too-big.
#[derive(Clone, Copy)]
pub(crate) struct Quoted {
    pub(crate) saddr: [u32; 4],
    pub(crate) daddr: [u32; 4],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) proto: u8,
    pub(crate) too_big: bool,
    pub(crate) ip_at: usize,
    pub(crate) l4_at: usize,
}

impl Quoted {
    /// The flow the quote belongs to, keyed as its other end sends.
    pub(crate) fn flow_key(&self, family: u8) -> FlowKey {
        FlowKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            family,
            pad: 0,
        }
    }
}

impl Parsed {
    pub(crate) fn flow_key(&self) -> FlowKey {
        FlowKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: self.family,
            pad: 0,
        }
    }
}

pub(crate) struct Parsed {
    pub(crate) l3: usize,
    pub(crate) family: u8,
    pub(crate) proto: u8,
    ip_len: usize,
    pub(crate) ip_header_len: usize,
    dont_fragment: bool,
    tos: u8,
    pub(crate) ttl: u8,
    pub(crate) saddr: [u32; 4],
    pub(crate) daddr: [u32; 4],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) tcp_flags: u8,
    quoted: Option<Quoted>,
}

enum Early {
    Pass(Stat),
    Unhashable(u8, [u32; 4]),
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
/// A 16-bit field as it sits in memory (what the program compares and hashes).
pub(crate) fn raw16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
pub(crate) fn raw32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn addr(b: &[u8], at: usize, family: u8) -> [u32; 4] {
    if family == FAMILY_V4 {
        [raw32(b, at), 0, 0, 0]
    } else {
        [raw32(b, at), raw32(b, at + 4), raw32(b, at + 8), raw32(b, at + 12)]
    }
}
fn bytes16(a: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for i in 0..4 {
        out[i * 4..i * 4 + 4].copy_from_slice(&a[i].to_ne_bytes());
    }
    out
}

impl Model {
    /// The model of a balancer with the harness's connection table (`TEST_FLOW_TABLE_SIZE`).
    pub fn new(config: &Config, facts: &NodeFacts) -> Self {
        Self::with_flow_table(config, facts, crate::TEST_FLOW_TABLE_SIZE)
    }

    /// The model of a balancer whose connection table has `flow_table_size` entries.
    pub fn with_flow_table(config: &Config, facts: &NodeFacts, flow_table_size: u32) -> Self {
        let desired = DesiredState::new(config, facts);
        let tables = desired
            .vips
            .iter()
            .map(|(key, vip)| {
                let members: Vec<Member<'_>> =
                    vip.backends.iter().map(|b| Member { identity: &b.identity, weight: b.weight }).collect();
                (*key, maglev::build(&members, vip.table_size).expect("valid table").slots)
            })
            .collect();
        Self {
            node: desired.node,
            addr_flags: desired.addrs.iter().map(|(k, p)| (*k, p.flags)).collect(),
            vips: desired.vips,
            tables,
            flows: FlowTableModel::new(flow_table_size),
            events: BTreeMap::new(),
            nat: crate::model_nat::NatState::new(&desired.pools, &desired.filter),
        }
    }

    /// The backend a new flow with this tuple gets (Maglev pick), by identity.
    pub fn pick(&self, vip: &VipKey, flow: &FlowKey) -> Option<String> {
        let index = self.table_pick(vip, flow)?;
        Some(self.vips[vip].backends[index].identity.clone())
    }

    pub fn process(&mut self, frame: &[u8]) -> Verdict {
        let p = match parse(frame) {
            Ok(p) => p,
            Err(Early::Pass(stat)) => return Verdict::Pass(stat),
            Err(Early::Unhashable(family, daddr)) => {
                return match self.addr_flags.get(&VipAddrKey { addr: daddr, family, pad: [0; 3] }) {
                    None => Verdict::Pass(Stat::PassNotVip),
                    Some(f) if f & ADDR_FLAG_DROP_UNHASHABLE != 0 => Verdict::Drop(Stat::DropUnhashable),
                    Some(_) => Verdict::Pass(Stat::PassUnhashable),
                };
            }
        };
        if let Some(q) = p.quoted {
            if q.too_big
                && let Some(key) = self.find_vip(q.saddr, q.sport, q.proto, p.family)
                && !self.is_nat(&key)
            {
                let flow = q.flow_key(p.family);
                let verdict = self.forward(frame, &p, &key, &flow, false, false);
                if matches!(verdict, Verdict::Tx { .. }) {
                    *self.events.entry("icmp_error_to_backend").or_default() += 1;
                }
                return verdict;
            }
            if let Some(verdict) = self.nat_icmp(frame, &p, &q) {
                return verdict;
            }
        }
        if (p.proto == PROTO_TCP || p.proto == PROTO_UDP)
            && let Some(verdict) = self.nat_reply(frame, &p)
        {
            return verdict;
        }
        let Some(key) = self.find_vip(p.daddr, p.dport, p.proto, p.family) else {
            return Verdict::Pass(Stat::PassNotVip);
        };
        if self.is_nat(&key) {
            return self.nat_forward(frame, &p, &key);
        }
        let flow = p.flow_key();
        let opens = p.proto == PROTO_UDP || (p.proto == PROTO_TCP && p.tcp_flags & 0x12 == 0x02);
        self.forward(frame, &p, &key, &flow, opens, true)
    }

    /// The key of the VIP serving a destination: the exact port's, else the address's port
    /// range (kept under port 0) if it holds the port.
    fn find_vip(&self, addr: [u32; 4], port_be: u16, proto: u8, family: u8) -> Option<VipKey> {
        let exact = VipKey { addr, port: port_be, proto, family };
        if self.vips.contains_key(&exact) {
            return Some(exact);
        }
        let range = VipKey { port: 0, ..exact };
        let vip = self.vips.get(&range).filter(|_| port_be != 0 && (proto == PROTO_TCP || proto == PROTO_UDP))?;
        let port = u16::from_be(port_be);
        (vip.ports.0 <= port && port <= vip.ports.1).then_some(range)
    }

    pub(crate) fn table_pick(&self, vip: &VipKey, flow: &FlowKey) -> Option<usize> {
        let meta = &self.vips[vip];
        let table = &self.tables[vip];
        if table.is_empty() {
            return None;
        }
        let pick = if meta.flags & VIP_FLAG_HASH_SOURCE_ONLY != 0 {
            source_hash(&flow.saddr, u32::from(flow.proto))
        } else {
            tuple_hash(flow)
        };
        Some(table[(pick % meta.table_size) as usize] as usize)
    }

    fn forward(
        &mut self,
        frame: &[u8],
        p: &Parsed,
        vip: &VipKey,
        flow: &FlowKey,
        opens: bool,
        answer: bool,
    ) -> Verdict {
        // Any packet but a TCP SYN confirms the flow's entry; an ICMP error (`answer` false)
        // only refreshes it.
        // The client's FIN or RST on a known flow marks its entry closed.
        let syn = p.proto == PROTO_TCP && p.tcp_flags & 0x12 == 0x02;
        let closes = answer && p.proto == PROTO_TCP && p.tcp_flags & 0x05 != 0;
        let index = match self.flows.find(flow, answer && !syn, syn, closes) {
            Found::Flow(i) => i,
            found => {
                *self.events.entry("flow_miss").or_default() += 1;
                let Some(i) = self.table_pick(vip, flow) else { return Verdict::Drop(Stat::DropNoBackend) };
                match found {
                    Found::Reopened(way) => {
                        // Not a counter of the program's: the test checks that runs reach it.
                        *self.events.entry("closed_reopened").or_default() += 1;
                        self.flows.record_at(flow, way, i);
                    }
                    _ if opens => match self.flows.record(flow, i) {
                        Recorded::Free => {}
                        Recorded::Replaced => *self.events.entry("embryonic_replaced").or_default() += 1,
                        Recorded::SetFull => *self.events.entry("flow_set_full").or_default() += 1,
                    },
                    _ => {}
                }
                i
            }
        };
        let meta = &self.vips[vip];
        let backend = &meta.backends[index];
        let hash = tuple_hash(flow);
        let l2_len = p.l3;
        let vlan_tci = (l2_len == 18).then(|| [frame[14], frame[15]]);
        let l2 = |dst: [u8; 6], src: [u8; 6], ether_type: u16| {
            let mut out = Vec::with_capacity(18);
            out.extend_from_slice(&dst);
            out.extend_from_slice(&src);
            if let Some(tci) = vlan_tci {
                out.extend_from_slice(&[0x81, 0x00, tci[0], tci[1]]);
            }
            out.extend_from_slice(&ether_type.to_be_bytes());
            out
        };
        if meta.backend_flags & BACKEND_FLAG_IPIP == 0 {
            let mut out = frame.to_vec();
            out[0..6].copy_from_slice(&backend.mac);
            out[6..12].copy_from_slice(&self.node.iface_mac);
            return Verdict::Tx { stat: Stat::Forwarded, packet: out, backend: Some(backend.identity.clone()) };
        }
        let outer_v6 = backend.family == FAMILY_V6;
        let (outer_len, flag) = if outer_v6 { (40, NODE_FLAG_TUNNEL_V6) } else { (20, NODE_FLAG_TUNNEL_V4) };
        if self.node.flags & flag == 0 {
            return Verdict::Drop(Stat::DropNoTunnelSource);
        }
        if p.ip_len + outer_len > self.node.mtu as usize {
            if !(answer && p.dont_fragment) {
                return Verdict::Drop(Stat::DropTooBig);
            }
            return self.too_big(frame, p, self.node.mtu - outer_len as u32, &l2);
        }
        let mut out = l2(backend.mac, self.node.iface_mac, if outer_v6 { 0x86dd } else { 0x0800 });
        let inner = &frame[p.l3..];
        if outer_v6 {
            let mut source = self.node.tunnel_v6;
            source[3] = (source[3] & self.node.tunnel_v6_mask) | (hash & !self.node.tunnel_v6_mask);
            let header = Ipv6Header {
                traffic_class: p.tos,
                flow_label: Ipv6FlowLabel::try_new(hash & 0xfffff).expect("20 bits"),
                payload_length: p.ip_len as u16,
                next_header: if p.family == FAMILY_V4 { IpNumber::IPV4 } else { IpNumber::IPV6 },
                hop_limit: 64,
                source: bytes16(&source),
                destination: bytes16(&backend.addr),
            };
            header.write(&mut out).expect("write");
        } else {
            let source = (self.node.tunnel_v4 & self.node.tunnel_v4_mask) | (hash & !self.node.tunnel_v4_mask);
            // etherparse takes the payload length and adds its own header.
            let mut header = Ipv4Header::new(
                p.ip_len as u16,
                64,
                IpNumber::IPV4,
                source.to_ne_bytes(),
                backend.addr[0].to_ne_bytes(),
            )
            .expect("header");
            header.dscp = IpDscp::try_new(p.tos >> 2).expect("6 bits");
            header.ecn = IpEcn::try_new(p.tos & 3).expect("2 bits");
            header.identification = 0;
            header.dont_fragment = true;
            header.header_checksum = header.calc_header_checksum();
            header.write(&mut out).expect("write");
        }
        out.extend_from_slice(inner);
        Verdict::Tx { stat: Stat::Forwarded, packet: out, backend: Some(backend.identity.clone()) }
    }

    fn too_big(&self, frame: &[u8], p: &Parsed, mtu: u32, l2: &dyn Fn([u8; 6], [u8; 6], u16) -> Vec<u8>) -> Verdict {
        let client_mac: [u8; 6] = frame[6..12].try_into().expect("6");
        let our_mac: [u8; 6] = frame[0..6].try_into().expect("6");
        if p.family == FAMILY_V4 {
            let quote = &frame[p.l3..p.l3 + p.ip_header_len + 8];
            let mut out = l2(client_mac, our_mac, 0x0800);
            let icmp = Icmpv4Header::with_checksum(
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: mtu as u16,
                }),
                quote,
            );
            let mut ip = Ipv4Header::new(
                (8 + quote.len()) as u16,
                64,
                IpNumber::ICMP,
                p.daddr[0].to_ne_bytes(),
                p.saddr[0].to_ne_bytes(),
            )
            .expect("header");
            ip.dont_fragment = false;
            ip.identification = 0;
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).expect("write");
            icmp.write(&mut out).expect("write");
            out.extend_from_slice(quote);
            Verdict::Tx { stat: Stat::IcmpTooBigSent, packet: out, backend: None }
        } else {
            let quote = &frame[p.l3..p.l3 + 48];
            let mut out = l2(client_mac, our_mac, 0x86dd);
            let (source, destination) = (bytes16(&p.daddr), bytes16(&p.saddr));
            let icmp = Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu }, source, destination, quote)
                .expect("checksum");
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: (8 + quote.len()) as u16,
                next_header: IpNumber::IPV6_ICMP,
                hop_limit: 64,
                source,
                destination,
            };
            ip.write(&mut out).expect("write");
            icmp.write(&mut out).expect("write");
            out.extend_from_slice(quote);
            Verdict::Tx { stat: Stat::IcmpTooBigSent, packet: out, backend: None }
        }
    }
}

/// The 5-tuple hash, from the flow key as the program builds it.
pub fn tuple_hash(flow: &FlowKey) -> u32 {
    flow_hash(&flow.saddr, &flow.daddr, (u32::from(flow.sport) << 16) | u32::from(flow.dport), u32::from(flow.proto))
}

fn parse(b: &[u8]) -> Result<Parsed, Early> {
    if b.len() < 14 {
        return Err(Early::Pass(Stat::TruncatedEth));
    }
    let mut ether_type = be16(b, 12);
    let mut l3 = 14;
    if ether_type == 0x8100 {
        if b.len() < 18 {
            return Err(Early::Pass(Stat::TruncatedVlan));
        }
        ether_type = be16(b, 16);
        l3 = 18;
    }
    let mut p = match ether_type {
        0x0800 => {
            if b.len() < l3 + 20 {
                return Err(Early::Pass(Stat::TruncatedIpv4));
            }
            let (version, ihl) = (b[l3] >> 4, (b[l3] & 0xf) as usize);
            if version != 4 || ihl < 5 {
                return Err(Early::Pass(Stat::BadIpv4Header));
            }
            if l3 + ihl * 4 > b.len() {
                return Err(Early::Pass(Stat::TruncatedIpv4));
            }
            let total = be16(b, l3 + 2) as usize;
            if total < ihl * 4 || l3 + total > b.len() {
                return Err(Early::Pass(Stat::BadIpv4Length));
            }
            let frag = be16(b, l3 + 6);
            let daddr = addr(b, l3 + 16, FAMILY_V4);
            if frag & 0x3fff != 0 {
                return Err(Early::Unhashable(FAMILY_V4, daddr));
            }
            Parsed {
                l3,
                family: FAMILY_V4,
                proto: b[l3 + 9],
                ip_len: total,
                ip_header_len: ihl * 4,
                dont_fragment: frag & 0x4000 != 0,
                tos: b[l3 + 1],
                ttl: b[l3 + 8],
                saddr: addr(b, l3 + 12, FAMILY_V4),
                daddr,
                sport: 0,
                dport: 0,
                tcp_flags: 0,
                quoted: None,
            }
        }
        0x86dd => {
            if b.len() < l3 + 40 {
                return Err(Early::Pass(Stat::TruncatedIpv6));
            }
            if b[l3] >> 4 != 6 {
                return Err(Early::Pass(Stat::BadIpv6Header));
            }
            let payload = be16(b, l3 + 4) as usize;
            if l3 + 40 + payload > b.len() {
                return Err(Early::Pass(Stat::BadIpv6Length));
            }
            let next = b[l3 + 6];
            let daddr = addr(b, l3 + 24, FAMILY_V6);
            if matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254) {
                return Err(Early::Unhashable(FAMILY_V6, daddr));
            }
            Parsed {
                l3,
                family: FAMILY_V6,
                proto: next,
                ip_len: 40 + payload,
                ip_header_len: 40,
                dont_fragment: true,
                tos: ((u32::from(be16(b, l3)) >> 4) & 0xff) as u8,
                ttl: b[l3 + 7],
                saddr: addr(b, l3 + 8, FAMILY_V6),
                daddr,
                sport: 0,
                dport: 0,
                tcp_flags: 0,
                quoted: None,
            }
        }
        _ => return Err(Early::Pass(Stat::PassNotIp)),
    };
    let l4 = l3 + p.ip_header_len;
    let ip_end = l3 + p.ip_len;
    match p.proto {
        PROTO_TCP => {
            if l4 + 20 > b.len() {
                return Err(Early::Pass(Stat::TruncatedTcp));
            }
            let doff = ((b[l4 + 12] >> 4) as usize) * 4;
            if doff < 20 || l4 + doff > ip_end {
                return Err(Early::Pass(Stat::TruncatedTcp));
            }
            (p.sport, p.dport, p.tcp_flags) = (raw16(b, l4), raw16(b, l4 + 2), b[l4 + 13]);
        }
        PROTO_UDP => {
            if l4 + 8 > b.len() || l4 + 8 > ip_end {
                return Err(Early::Pass(Stat::TruncatedUdp));
            }
            (p.sport, p.dport) = (raw16(b, l4), raw16(b, l4 + 2));
        }
        proto if (p.family == FAMILY_V4 && proto == PROTO_ICMP) || (p.family == FAMILY_V6 && proto == PROTO_ICMPV6) => {
            if l4 + 8 > b.len() || l4 + 8 > ip_end {
                return Err(Early::Pass(Stat::TruncatedIcmp));
            }
            let (too_big, error) = if p.family == FAMILY_V4 {
                (b[l4] == 3 && b[l4 + 1] == 4, matches!(b[l4], 3 | 11 | 12))
            } else {
                (b[l4] == 2, (1..=4).contains(&b[l4]))
            };
            if error {
                p.quoted = quoted(b, l4 + 8, p.family, too_big);
            }
        }
        _ => {}
    }
    Ok(p)
}

fn quoted(b: &[u8], at: usize, family: u8, too_big: bool) -> Option<Quoted> {
    let (saddr, daddr, proto, l4) = if family == FAMILY_V4 {
        if at + 20 > b.len() || b[at] >> 4 != 4 || (b[at] & 0xf) < 5 {
            return None;
        }
        (addr(b, at + 12, FAMILY_V4), addr(b, at + 16, FAMILY_V4), b[at + 9], at + ((b[at] & 0xf) as usize) * 4)
    } else {
        if at + 40 > b.len() {
            return None;
        }
        (addr(b, at + 8, FAMILY_V6), addr(b, at + 24, FAMILY_V6), b[at + 6], at + 40)
    };
    if (proto != PROTO_TCP && proto != PROTO_UDP) || l4 + 4 > b.len() {
        return None;
    }
    Some(Quoted { saddr, daddr, sport: raw16(b, l4), dport: raw16(b, l4 + 2), proto, too_big, ip_at: at, l4_at: l4 })
}

/// The connection table as the program keeps it: `flow_sets(size)` sets of `FLOW_WAYS` entries,
/// a flow in the set its hash picks. A new flow takes the first free entry of its set, else the
/// first embryonic one (never a confirmed one: the program takes those only after minutes idle,
/// which no test waits), else is not recorded. Entries are in way order, as the program scans.
#[derive(Debug)]
struct FlowTableModel {
    sets: u32,
    entries: HashMap<u32, [Option<FlowEntryModel>; FLOW_WAYS]>,
}

#[derive(Debug, Clone, Copy)]
struct FlowEntryModel {
    key: FlowKey,
    backend: usize,
    confirmed: bool,
    /// Its client sent a FIN or a RST: a SYN on it is a new flow, recorded in this entry.
    closed: bool,
}

/// What the table holds for a packet's flow.
enum Found {
    Flow(usize),
    /// A SYN on an entry its client closed: a new flow, to be recorded in that entry (way).
    Reopened(usize),
    Missing,
}

impl FlowTableModel {
    fn new(size: u32) -> Self {
        Self { sets: flow_sets(size), entries: HashMap::new() }
    }

    fn set(&mut self, key: &FlowKey) -> &mut [Option<FlowEntryModel>; FLOW_WAYS] {
        self.entries.entry(flow_set(tuple_hash(key), self.sets)).or_insert([None; FLOW_WAYS])
    }

    /// The backend the table holds for `key`: the entry confirmed if `confirm`, marked closed if
    /// `closes` (a FIN or RST forwarded on it); a `syn` on a closed entry finds a new flow.
    fn find(&mut self, key: &FlowKey, confirm: bool, syn: bool, closes: bool) -> Found {
        let Some((way, entry)) = self
            .set(key)
            .iter_mut()
            .enumerate()
            .find_map(|(way, e)| e.as_mut().filter(|e| e.key == *key).map(|e| (way, e)))
        else {
            return Found::Missing;
        };
        if syn && entry.closed {
            return Found::Reopened(way);
        }
        entry.confirmed |= confirm;
        entry.closed |= closes;
        Found::Flow(entry.backend)
    }

    /// Records a new flow on a closed entry's 4-tuple in that entry (way), embryonic.
    fn record_at(&mut self, key: &FlowKey, way: usize, backend: usize) {
        self.set(key)[way] = Some(FlowEntryModel { key: *key, backend, confirmed: false, closed: false });
    }

    /// Records a new flow, embryonic.
    fn record(&mut self, key: &FlowKey, backend: usize) -> Recorded {
        let set = self.set(key);
        let (way, recorded) = match set.iter().position(Option::is_none) {
            Some(way) => (way, Recorded::Free),
            None => match set.iter().position(|e| e.is_some_and(|e| !e.confirmed)) {
                Some(way) => (way, Recorded::Replaced),
                None => return Recorded::SetFull,
            },
        };
        set[way] = Some(FlowEntryModel { key: *key, backend, confirmed: false, closed: false });
        recorded
    }
}

/// Where `FlowTableModel::record` put a flow.
enum Recorded {
    /// In a free entry.
    Free,
    /// In place of an embryonic flow.
    Replaced,
    /// Nowhere: the set holds only confirmed flows.
    SetFull,
}
