//! The reference model's NAT mode: forward and reverse tables, the source claim (the same scan
//! the data plane makes), and translations with checksums updated by RFC 1624 in network byte
//! order — written from the behaviour the NAT issue defines, not from the XDP code. Flow
//! expiry is not modelled (a differential run is far shorter than any timeout).

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    FAMILY_V4, FILTER_NAT_BACKEND, FILTER_NAT_POOL, FILTER_NAT_VIP, FlowKey, NAT_NO_POOL, NODE_FLAG_DNAT_ONLY, NatPool,
    PROTO_TCP, PROTO_UDP, Stat, VIP_FLAG_NAT, VipKey, addr_bucket,
};

use crate::model::{Model, Parsed, Quoted, Verdict, be16, tuple_hash};

#[derive(Debug, Clone, Copy)]
struct ModelFlow {
    /// Index of the backend in its VIP.
    backend: usize,
    vip: VipKey,
    source: [u32; 4],
    source_port: u16,
    backend_port: u16,
}

#[derive(Debug, Clone, Copy)]
struct ModelReverse {
    client: [u32; 4],
    vip: [u32; 4],
    client_port: u16,
    vip_port: u16,
    client_mac: [u8; 6],
}

/// NAT pools and flow tables as the model keeps them.
#[derive(Debug, Default)]
pub struct NatState {
    pools: BTreeMap<u32, NatPool>,
    /// The pre-filter: which buckets hold NAT addresses.
    filter: BTreeMap<u32, u32>,
    flows: HashMap<FlowKey, ModelFlow>,
    reverse: HashMap<FlowKey, ModelReverse>,
    /// Reverse keys in the order they were made (for picking replies reproducibly).
    pub reply_keys: Vec<FlowKey>,
    /// Forward keys in the order they were made.
    pub flow_keys: Vec<FlowKey>,
}

impl NatState {
    pub fn new(pools: &BTreeMap<u32, NatPool>, filter: &BTreeMap<u32, u32>) -> Self {
        Self { pools: pools.clone(), filter: filter.clone(), ..Self::default() }
    }
}

/// New addresses and ports (ports as in memory) for a translation.
struct To {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
}

fn addr_bytes(a: &[u32; 4], family: u8) -> Vec<u8> {
    let n = if family == FAMILY_V4 { 1 } else { 4 };
    a[..n].iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// The 16-bit words that change from `old` to `new` (same length, even).
fn word_changes(old: &[u8], new: &[u8]) -> Vec<(u16, u16)> {
    old.chunks(2).zip(new.chunks(2)).map(|(o, n)| (be16(o, 0), be16(n, 0))).collect()
}

/// RFC 1624 eqn. 3: the checksum after `changes` (old word, new word).
fn adjust(check: u16, changes: &[(u16, u16)]) -> u16 {
    let mut sum = u32::from(!check);
    for (old, new) in changes {
        sum += u32::from(!old) + u32::from(*new);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

impl Model {
    /// Whether the data plane looks at this packet's NAT state at all: its destination is (in
    /// the pre-filter bucket of) a NAT VIP or pool address, or its source that of a DNAT-only
    /// backend.
    pub(crate) fn enters_nat(&self, p: &Parsed) -> bool {
        let bits = |a: &[u32; 4]| self.nat.filter.get(&addr_bucket(a)).copied().unwrap_or(0);
        bits(&p.daddr) & (FILTER_NAT_VIP | FILTER_NAT_POOL) != 0
            || (self.node.flags & NODE_FLAG_DNAT_ONLY != 0 && bits(&p.saddr) & FILTER_NAT_BACKEND != 0)
    }

    pub(crate) fn is_nat(&self, key: &VipKey) -> bool {
        self.vips[key].flags & VIP_FLAG_NAT != 0
    }

    /// Rewrites `out` (a copy of the frame `p` describes): addresses, ports, TTL, checksums,
    /// MACs. ICMP packets keep their payload (the caller translated the quote).
    fn nat_rewrite(&self, out: &mut [u8], p: &Parsed, to: &To, dst_mac: [u8; 6]) -> Result<(), Stat> {
        let l3 = p.l3;
        let v4 = p.family == FAMILY_V4;
        let (old_s, old_d) = (addr_bytes(&p.saddr, p.family), addr_bytes(&p.daddr, p.family));
        let (new_s, new_d) = (addr_bytes(&to.saddr, p.family), addr_bytes(&to.daddr, p.family));
        if v4 {
            let ttl = out[l3 + 8];
            if ttl <= 1 {
                return Err(Stat::DropTtlExceeded);
            }
            let old_word = be16(out, l3 + 8);
            out[l3 + 8] = ttl - 1;
            let mut changes = vec![(old_word, be16(out, l3 + 8))];
            changes.extend(word_changes(&old_s, &new_s));
            changes.extend(word_changes(&old_d, &new_d));
            let check = adjust(be16(out, l3 + 10), &changes);
            put16(out, l3 + 10, check);
            out[l3 + 12..l3 + 16].copy_from_slice(&new_s);
            out[l3 + 16..l3 + 20].copy_from_slice(&new_d);
        } else {
            let hop = out[l3 + 7];
            if hop <= 1 {
                return Err(Stat::DropTtlExceeded);
            }
            out[l3 + 7] = hop - 1;
            out[l3 + 8..l3 + 24].copy_from_slice(&new_s);
            out[l3 + 24..l3 + 40].copy_from_slice(&new_d);
        }
        let l4 = l3 + p.ip_header_len;
        let mut l4_changes = word_changes(&old_s, &new_s);
        l4_changes.extend(word_changes(&old_d, &new_d));
        l4_changes.push((be16(&p.sport.to_ne_bytes(), 0), be16(&to.sport.to_ne_bytes(), 0)));
        l4_changes.push((be16(&p.dport.to_ne_bytes(), 0), be16(&to.dport.to_ne_bytes(), 0)));
        let check_at = match p.proto {
            PROTO_TCP => Some(l4 + 16),
            PROTO_UDP => Some(l4 + 6),
            _ => None,
        };
        if let Some(at) = check_at {
            let check = be16(out, at);
            // IPv4 UDP without a checksum stays without; a computed 0 goes out as all ones.
            if p.proto == PROTO_TCP {
                put16(out, at, adjust(check, &l4_changes));
            } else if check != 0 || !v4 {
                let new = adjust(check, &l4_changes);
                put16(out, at, if new == 0 { 0xffff } else { new });
            }
            out[l4..l4 + 2].copy_from_slice(&to.sport.to_ne_bytes());
            out[l4 + 2..l4 + 4].copy_from_slice(&to.dport.to_ne_bytes());
        }
        out[0..6].copy_from_slice(&dst_mac);
        out[6..12].copy_from_slice(&self.node.iface_mac);
        Ok(())
    }

    fn nat_send(
        &self,
        frame: &[u8],
        p: &Parsed,
        to: &To,
        dst_mac: [u8; 6],
        stat: Stat,
        backend: Option<String>,
    ) -> Verdict {
        let mut out = frame.to_vec();
        match self.nat_rewrite(&mut out, p, to, dst_mac) {
            Ok(()) => Verdict::Tx { stat, packet: out, backend },
            Err(drop) => Verdict::Drop(drop),
        }
    }

    /// A client packet to a NAT VIP.
    pub(crate) fn nat_forward(&mut self, frame: &[u8], p: &Parsed, vip: &VipKey) -> Verdict {
        let flow = p.flow_key();
        if let Some(f) = self.nat.flows.get(&flow).copied() {
            let backend = &self.vips[&f.vip].backends[f.backend];
            let to = To { saddr: f.source, daddr: backend.addr, sport: f.source_port, dport: f.backend_port };
            return self.nat_send(frame, p, &to, backend.mac, Stat::NatForwarded, Some(backend.identity.clone()));
        }
        let opens = p.proto == PROTO_UDP || (p.proto == PROTO_TCP && p.tcp_flags & 0x12 == 0x02);
        if !opens {
            return Verdict::Drop(Stat::DropNatNoFlow);
        }
        if p.ttl <= 1 {
            return Verdict::Drop(Stat::DropTtlExceeded);
        }
        *self.events.entry("flow_miss").or_default() += 1;
        let Some(index) = self.table_pick(vip, &flow) else { return Verdict::Drop(Stat::DropNoBackend) };
        let backend = self.vips[vip].backends[index].clone();
        let backend_port = if backend.port != 0 { backend.port } else { flow.dport };
        let reverse_key = |source: [u32; 4], source_port: u16| FlowKey {
            saddr: backend.addr,
            daddr: source,
            sport: backend_port,
            dport: source_port,
            proto: flow.proto,
            family: flow.family,
            pad: 0,
        };
        let pool = self.vips[vip].pool;
        let claimed = if pool == NAT_NO_POOL {
            let key = reverse_key(flow.saddr, flow.sport);
            (!self.nat.reverse.contains_key(&key)).then_some((flow.saddr, flow.sport))
        } else {
            let pool = self.nat.pools[&pool];
            let size = pool.addr_count * pool.port_count;
            let start = tuple_hash(&flow).rotate_left(16) % size;
            (0..size).map(|i| (start + i) % size).find_map(|at| {
                let addr = pool.addrs[(at % pool.addr_count) as usize];
                let port = ((pool.port_first + at / pool.addr_count) as u16).to_be();
                (!self.nat.reverse.contains_key(&reverse_key(addr, port))).then_some((addr, port))
            })
        };
        let Some((source, source_port)) = claimed else { return Verdict::Drop(Stat::DropPoolExhausted) };
        let key = reverse_key(source, source_port);
        let client_mac: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
        self.nat.reverse.insert(
            key,
            ModelReverse {
                client: flow.saddr,
                vip: flow.daddr,
                client_port: flow.sport,
                vip_port: flow.dport,
                client_mac,
            },
        );
        self.nat.reply_keys.push(key);
        self.nat.flows.insert(flow, ModelFlow { backend: index, vip: *vip, source, source_port, backend_port });
        self.nat.flow_keys.push(flow);
        let to = To { saddr: source, daddr: backend.addr, sport: source_port, dport: backend_port };
        self.nat_send(frame, p, &to, backend.mac, Stat::NatForwarded, Some(backend.identity))
    }

    /// A backend's reply to a NAT flow, if this is one.
    pub(crate) fn nat_reply(&self, frame: &[u8], p: &Parsed) -> Option<Verdict> {
        let key = p.flow_key();
        let r = self.nat.reverse.get(&key)?;
        let to = To { saddr: r.vip, daddr: r.client, sport: r.vip_port, dport: r.client_port };
        Some(self.nat_send(frame, p, &to, r.client_mac, Stat::NatReplied, None))
    }

    /// An ICMP error about a NAT flow, from either side, if this is one: sent to the address
    /// the quoted packet came from.
    pub(crate) fn nat_icmp(&self, frame: &[u8], p: &Parsed, q: &Quoted) -> Option<Verdict> {
        if p.daddr != q.saddr || !self.enters_nat(p) {
            return None;
        }
        let swapped = q.flow_key(p.family);
        let (outer, inner, mac) = if let Some(f) = self.nat.flows.get(&swapped) {
            let backend = &self.vips[&f.vip].backends[f.backend];
            (
                To { saddr: f.source, daddr: backend.addr, sport: 0, dport: 0 },
                To { saddr: backend.addr, daddr: f.source, sport: f.backend_port, dport: f.source_port },
                backend.mac,
            )
        } else {
            let r = self.nat.reverse.get(&swapped)?;
            (
                To { saddr: r.vip, daddr: r.client, sport: 0, dport: 0 },
                To { saddr: r.client, daddr: r.vip, sport: r.client_port, dport: r.vip_port },
                r.client_mac,
            )
        };
        let mut out = frame.to_vec();
        let v4 = p.family == FAMILY_V4;
        let icmp_at = p.l3 + p.ip_header_len;
        let (ip_at, l4_at) = (q.ip_at, q.l4_at);
        let mut icmp_changes = Vec::new();
        let (s_at, d_at, n) = if v4 { (ip_at + 12, ip_at + 16, 4) } else { (ip_at + 8, ip_at + 24, 16) };
        let (old_s, old_d) = (out[s_at..s_at + n].to_vec(), out[d_at..d_at + n].to_vec());
        let (new_s, new_d) = (addr_bytes(&inner.saddr, p.family), addr_bytes(&inner.daddr, p.family));
        icmp_changes.extend(word_changes(&old_s, &new_s));
        icmp_changes.extend(word_changes(&old_d, &new_d));
        if v4 {
            let mut changes = word_changes(&old_s, &new_s);
            changes.extend(word_changes(&old_d, &new_d));
            let old_check = be16(&out, ip_at + 10);
            let new_check = adjust(old_check, &changes);
            icmp_changes.push((old_check, new_check));
            put16(&mut out, ip_at + 10, new_check);
        } else {
            // ICMPv6 covers the outer addresses (pseudo-header).
            icmp_changes.extend(word_changes(&addr_bytes(&p.saddr, p.family), &addr_bytes(&outer.saddr, p.family)));
            icmp_changes.extend(word_changes(&addr_bytes(&p.daddr, p.family), &addr_bytes(&outer.daddr, p.family)));
        }
        out[s_at..s_at + n].copy_from_slice(&new_s);
        out[d_at..d_at + n].copy_from_slice(&new_d);
        icmp_changes.push((be16(&out, l4_at), be16(&inner.sport.to_ne_bytes(), 0)));
        icmp_changes.push((be16(&out, l4_at + 2), be16(&inner.dport.to_ne_bytes(), 0)));
        out[l4_at..l4_at + 2].copy_from_slice(&inner.sport.to_ne_bytes());
        out[l4_at + 2..l4_at + 4].copy_from_slice(&inner.dport.to_ne_bytes());
        let check = adjust(be16(&out, icmp_at + 2), &icmp_changes);
        put16(&mut out, icmp_at + 2, check);
        Some(match self.nat_rewrite(&mut out, p, &outer, mac) {
            Ok(()) => Verdict::Tx { stat: Stat::NatIcmpTranslated, packet: out, backend: None },
            Err(drop) => Verdict::Drop(drop),
        })
    }
}
