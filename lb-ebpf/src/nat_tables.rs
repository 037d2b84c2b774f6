//! NAT mode's tables and the steps every NAT path shares: the forward table (client 5-tuple →
//! backend and source port) and the reverse table (the backend's reply 5-tuple → client), the
//! pools and each backend slot's source state, the interfaces a translated packet leaves by, a
//! flow's liveness and refresh, its release, and the verdict on a translated packet. The claim of
//! a source is `nat_flows`'s; the cookie handshake is `syn_cookies`'s.

use aya_ebpf::{
    btf_maps::{Array, DevMap, HashMap},
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    BACKEND_FLAG_ACTIVE, Backend, FlowKey, Iface, MAX_BACKENDS, MAX_IFACES, MAX_NAT_POOLS, NAT_FLAG_CLOSING,
    NAT_FLAG_COOKIE, NAT_FLAG_REPLIED, NAT_SOURCE_HINTS, NAT_TABLE_SIZE, NAT_TOUCH_NS, NODE_FLAG_MULTI_IFACE, NatFlow,
    NatPool, NatReverse, NatSources, NodeConfig, PROTO_TCP, Stat, nat_expired, nat_surely_live,
};
use lb_ebpf::{
    headers::{EthHdr, TCP_FLAG_FIN, TCP_FLAG_RST},
    nat::Translation,
    parse::{Frame, Packet},
};

use crate::{Counts, XLB_BACKENDS, add_traffic, clock::now};

#[btf_map]
pub(crate) static XLB_NAT_POOLS: Array<NatPool, { MAX_NAT_POOLS as usize }> = Array::new();

/// Client 5-tuple → the flow's backend and source. Plain hash maps (sized by the agent), not
/// LRU: an evicted entry would strand its port and break its flow; a full table is a counted
/// drop of new flows instead, and expired entries are taken over or swept by the agent.
#[btf_map]
pub(crate) static XLB_NAT_FLOWS: HashMap<FlowKey, NatFlow, { NAT_TABLE_SIZE as usize }> = HashMap::new();

/// Backend reply 5-tuple (backend → pool address and port) → the client side.
#[btf_map]
pub(crate) static XLB_NAT_REVERSE: HashMap<FlowKey, NatReverse, { NAT_TABLE_SIZE as usize }> = HashMap::new();

/// The interfaces the agent runs on, by index (from 1), and the redirect map over the same
/// indexes: a NAT packet leaves by another interface than it came in on through these.
#[btf_map]
pub(crate) static XLB_IFACES: Array<Iface, { MAX_IFACES as usize }> = Array::new();

#[btf_map]
pub(crate) static XLB_DEVS: DevMap<{ MAX_IFACES as usize }> = DevMap::new();

/// Per backend slot: exhaustion mark, cursor and released sources (see `NatSources`).
#[btf_map]
pub(crate) static XLB_NAT_SOURCES: Array<NatSources, { MAX_BACKENDS as usize }> = Array::new();

/// `NAT_FLAG_CLOSING` for a TCP FIN or RST.
#[inline(always)]
pub(crate) fn closing(packet: &Packet) -> u32 {
    if packet.proto == PROTO_TCP && packet.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        NAT_FLAG_CLOSING
    } else {
        0
    }
}

/// The source MAC of the frame: where replies to it go.
#[inline(always)]
pub(crate) fn sender_mac(ctx: &XdpContext) -> Option<[u8; 6]> {
    let eth: *const EthHdr = Frame::new(ctx).at(0)?;
    // SAFETY: bounds checked by `at`.
    Some(unsafe { (*eth).src })
}

/// How a translated packet leaves: `iface` 0 back out of the interface it came in on (XDP_TX),
/// else redirected to that index of `XLB_DEVS`; `mac` is the source MAC of that interface.
pub(crate) struct Egress {
    pub(crate) iface: u32,
    pub(crate) mac: [u8; 6],
}

/// Where a packet that must leave by interface index `iface` (0: the one it came in on) goes.
/// `None`: `iface` is not an interface the agent runs on.
#[inline(always)]
pub(crate) fn egress(ctx: &XdpContext, node: &NodeConfig, iface: u32) -> Option<Egress> {
    let ingress = ctx.ingress_ifindex() as u32;
    let iface = if iface != 0 {
        iface
    } else if node.flags & NODE_FLAG_MULTI_IFACE == 0 || ingress == node.ifindex {
        // One interface (or its first): the common case, without a lookup.
        return Some(Egress { iface: 0, mac: node.iface_mac });
    } else {
        iface_index(ingress)
    };
    let entry = XLB_IFACES.get(iface)?;
    if entry.ifindex == 0 {
        return None;
    }
    Some(Egress { iface: if entry.ifindex == ingress { 0 } else { iface }, mac: entry.mac })
}

/// The index in `XLB_IFACES` of the interface a packet came in on (0 if the agent runs on one
/// interface, or it is not one of them).
#[inline(always)]
pub(crate) fn ingress_iface(ctx: &XdpContext, node: &NodeConfig) -> u32 {
    if node.flags & NODE_FLAG_MULTI_IFACE == 0 { 0 } else { iface_index(ctx.ingress_ifindex() as u32) }
}

#[inline(always)]
pub(crate) fn iface_index(ifindex: u32) -> u32 {
    let mut index = 1;
    while index < MAX_IFACES {
        if XLB_IFACES.get(index).is_some_and(|e| e.ifindex == ifindex) {
            return index;
        }
        index += 1;
    }
    0
}

/// The forward entry of `flow`, if the flow is live (its backend slot holds the same live backend;
/// the entry refreshed by this packet) and a cookie flow exactly when `cookie` says so (those
/// take the NAT program's paths).
///
/// (`forward_known` spells the same steps out: calling this from the balancer's inlined path
/// made LLVM keep the returned entry in a stack slot of its own, and the balancer's frame, at
/// 504 of 512 bytes, went over.)
#[inline(always)]
pub(crate) fn live_flow(packet: &Packet, flow: &FlowKey, node: &NodeConfig, cookie: bool) -> Option<NatFlow> {
    let entry = XLB_NAT_FLOWS.get_ptr_mut(flow)?;
    // SAFETY: a pointer into the map's value; copied out, fields written one at a time below.
    let known = unsafe { *entry };
    if (known.flags & NAT_FLAG_COOKIE != 0) != cookie {
        return None;
    }
    let backend = *XLB_BACKENDS.get(known.backend)?;
    if backend.flags & BACKEND_FLAG_ACTIVE == 0 || backend.generation != known.generation {
        return None;
    }
    let now = now();
    let flags = closing(packet);
    if now.saturating_sub(known.last_seen) > NAT_TOUCH_NS || flags & !known.flags != 0 {
        if flow_expired(now, &known, flow, node) {
            return None;
        }
        // SAFETY: as above; a racing writer on another CPU writes the same kind of value.
        unsafe {
            (*entry).last_seen = now;
            (*entry).flags = known.flags | flags;
        }
    }
    Some(known)
}

/// Whether the forward table holds `flow` as a cookie flow: `None` if not, else whether its
/// client has closed it (a FIN or RST seen).
#[inline(always)]
pub(crate) fn cookie_flow_closing(flow: &FlowKey) -> Option<bool> {
    let entry = XLB_NAT_FLOWS.get_ptr(flow)?;
    // SAFETY: a live value of the map; one field read.
    let flags = unsafe { (*entry).flags };
    (flags & NAT_FLAG_COOKIE != 0).then_some(flags & NAT_FLAG_CLOSING != 0)
}

/// Frees `flow`'s source and entries, if it has any.
#[inline(always)]
pub(crate) fn release_flow(flow: &FlowKey) {
    if let Some(old) = XLB_NAT_FLOWS.get_ptr(flow) {
        release(flow, old);
    }
}

/// How a live flow's client packets are rewritten toward its backend, leaving by `out`.
#[inline(always)]
pub(crate) fn toward_backend(known: &NatFlow, backend: &Backend, out: &Egress) -> Translation {
    Translation {
        saddr: known.source,
        daddr: backend.addr,
        sport: known.source_port,
        dport: known.backend_port,
        dst_mac: backend.mac,
        src_mac: out.mac,
    }
}

/// The reverse entry under `key`, refreshed by this backend packet, if it is a cookie flow's
/// exactly when `cookie` says so.
#[inline(always)]
pub(crate) fn replied(key: &FlowKey, packet: &Packet, cookie: bool) -> Option<NatReverse> {
    let entry = XLB_NAT_REVERSE.get_ptr_mut(key)?;
    // SAFETY: a pointer into the map's value; copied out, fields written one at a time below.
    let known = unsafe { *entry };
    if (known.flags & NAT_FLAG_COOKIE != 0) != cookie {
        return None;
    }
    let flags = closing(packet) | NAT_FLAG_REPLIED;
    let now = now();
    if now.saturating_sub(known.last_seen) > NAT_TOUCH_NS || flags & !known.flags != 0 {
        // SAFETY: as above.
        unsafe {
            (*entry).last_seen = now;
            (*entry).flags = known.flags | flags;
        }
    }
    Some(known)
}

/// How a backend's packets are rewritten back toward the client, leaving by `out`.
#[inline(always)]
pub(crate) fn toward_client(known: &NatReverse, out: &Egress) -> Translation {
    Translation {
        saddr: known.vip,
        daddr: known.client,
        sport: known.vip_port,
        dport: known.client_port,
        dst_mac: known.client_mac,
        src_mac: out.mac,
    }
}

/// The verdict on a translated packet: sent out by `out` (back out, XDP_TX, or redirected to
/// another interface) and counted as `stat`, and on a backend slot if `traffic` names one; or
/// the translation's drop.
#[inline(always)]
pub(crate) fn finish(
    counts: Counts,
    translated: Result<(), Stat>,
    out: &Egress,
    traffic: Option<(u32, u64, bool)>,
    stat: Stat,
) -> u32 {
    if let Err(drop) = translated {
        return counts.outcome(drop);
    }
    let action = if out.iface == 0 {
        counts.sent(stat)
    } else {
        match XLB_DEVS.redirect(out.iface, 0) {
            Ok(action) => {
                counts.bump(Stat::NatRedirected);
                counts.bump(stat);
                action
            }
            Err(_) => return counts.outcome(Stat::DropNoEgress),
        }
    };
    if let Some((slot, bytes, new_flow)) = traffic {
        add_traffic(slot, bytes, new_flow);
    }
    action
}

/// Whether a flow is past its timeout, judged by both directions.
#[inline(always)]
pub(crate) fn flow_expired(now: u64, entry: &NatFlow, flow: &FlowKey, node: &NodeConfig) -> bool {
    if nat_surely_live(now, entry.last_seen, flow.proto, node) {
        return false;
    }
    let (mut last, mut flags) = (entry.last_seen, entry.flags);
    // SAFETY: copied out.
    if let Some(rev) = unsafe { XLB_NAT_REVERSE.get(&reverse_key(flow, entry)) } {
        last = last.max(rev.last_seen);
        flags |= rev.flags;
    }
    nat_expired(now, last, flags, flow.proto, node)
}

/// The reverse-table key of a forward entry.
#[inline(always)]
pub(crate) fn reverse_key(flow: &FlowKey, entry: &NatFlow) -> FlowKey {
    let backend = XLB_BACKENDS.get(entry.backend).copied().unwrap_or(Backend::default());
    reverse_key_at(flow, entry, backend.addr)
}

/// [`reverse_key`] for a flow whose backend's address the caller has.
#[inline(always)]
pub(crate) fn reverse_key_at(flow: &FlowKey, entry: &NatFlow, backend: [u32; 4]) -> FlowKey {
    FlowKey {
        saddr: backend,
        daddr: entry.source,
        sport: entry.backend_port,
        dport: entry.source_port,
        proto: flow.proto,
        family: flow.family,
        pad: 0,
    }
}

/// Frees a dead flow's source (if still its own) and its forward entry. Not inlined: it runs
/// before the claim, so its frame never nests with the claim's.
#[inline(never)]
pub(crate) fn release(flow: &FlowKey, entry: *const NatFlow) {
    // SAFETY: a pointer to a live value of the map, copied out.
    let entry = unsafe { *entry };
    let key = reverse_key(flow, &entry);
    // SAFETY: copied out.
    if let Some(rev) = unsafe { XLB_NAT_REVERSE.get(&key) }
        && rev.client == flow.saddr
        && rev.client_port == flow.sport
        && rev.vip == flow.daddr
        && rev.vip_port == flow.dport
    {
        let _ = XLB_NAT_REVERSE.remove(&key);
        release_source(rev.backend, &key);
    }
    let _ = XLB_NAT_FLOWS.remove(flow);
}

/// Remembers that a flow of backend slot `slot` released source `key.daddr`, `key.dport` (of
/// reverse key `key`), if the slot's state is about that backend port: its next new flow takes
/// it without a scan.
#[inline(always)]
pub(crate) fn release_source(slot: u32, key: &FlowKey) {
    let Some(state) = XLB_NAT_SOURCES.get_ptr_mut(slot) else { return };
    // SAFETY: as in `claim_from_pool`.
    let state = unsafe { &mut *state };
    if state.backend_port != key.sport {
        return;
    }
    let Some(pool) = XLB_NAT_POOLS.get(state.pool) else { return };
    let Some(index) = pool.index_of(&key.daddr, key.dport) else { return };
    let count = state.count;
    if (count as usize) < NAT_SOURCE_HINTS
        && let Some(hint) = state.hints.get_mut(count as usize & (NAT_SOURCE_HINTS - 1))
    {
        *hint = index;
        state.count = count + 1;
    }
}
