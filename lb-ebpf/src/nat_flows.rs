//! NAT mode's flow state: the forward table (client 5-tuple → backend and source port), the
//! reverse table (the backend's reply 5-tuple → client), and the claim of a source (address,
//! port) from the VIP's pool — in XDP, without the agent on the path.
//!
//! A claim is an insert-if-absent on the reverse table: the reverse key is unique per (pool
//! address, pool port, backend address, backend port, protocol), so two flows can never share a
//! source toward one backend. Candidates are tried from a hashed start (alternating addresses) up to
//! the first free one; a candidate held by an expired flow is taken over, so a pool fills to
//! exactly its size. A claim that finds none marks the backend slot exhausted for
//! `NAT_EXHAUSTED_NS`: meanwhile its new flows try one candidate each and the sources its flows
//! released, so a full pool costs one scan per slot and period, and a SYN O(1) work otherwise.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    btf_maps::{Array, DevMap, HashMap, PerCpuArray},
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    BACKEND_FLAG_ACTIVE, Backend, FlowKey, Iface, MAX_BACKENDS, MAX_IFACES, MAX_NAT_POOLS, NAT_EXHAUSTED_NS,
    NAT_FLAG_CLOSING, NAT_FLAG_COOKIE, NAT_FLAG_REPLIED, NAT_NO_POOL, NAT_SOURCE_HINTS, NAT_TABLE_SIZE, NAT_TOUCH_NS,
    NODE_FLAG_MULTI_IFACE, NatFlow, NatPool, NatReverse, NatSources, NodeConfig, PROTO_TCP, PROTO_UDP, Stat, VipMeta,
    nat_expired,
};
use lb_ebpf::{
    headers::{EthHdr, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    nat::{QuoteTranslation, Translation, translate, translate_inline, translate_quote},
    parse::{Frame, Packet},
};

use crate::{Counts, NOT_HANDLED, XLB_BACKENDS, XLB_NODE, add_traffic, clock::now, syn_cookies, table_pick};

#[btf_map]
static XLB_NAT_POOLS: Array<NatPool, { MAX_NAT_POOLS as usize }> = Array::new();

/// Client 5-tuple → the flow's backend and source. Plain hash maps (sized by the agent), not
/// LRU: an evicted entry would strand its port and break its flow; a full table is a counted
/// drop of new flows instead, and expired entries are taken over or swept by the agent.
#[btf_map]
static XLB_NAT_FLOWS: HashMap<FlowKey, NatFlow, { NAT_TABLE_SIZE as usize }> = HashMap::new();

/// Backend reply 5-tuple (backend → pool address and port) → the client side.
#[btf_map]
static XLB_NAT_REVERSE: HashMap<FlowKey, NatReverse, { NAT_TABLE_SIZE as usize }> = HashMap::new();

/// The interfaces the agent runs on, by index (from 1), and the redirect map over the same
/// indexes: a NAT packet leaves by another interface than it came in on through these.
#[btf_map]
static XLB_IFACES: Array<Iface, { MAX_IFACES as usize }> = Array::new();

#[btf_map]
static XLB_DEVS: DevMap<{ MAX_IFACES as usize }> = DevMap::new();

/// Scratch space of the source claim (see `Claim`).
#[btf_map]
static XLB_NAT_CLAIM: PerCpuArray<Claim, 1> = PerCpuArray::new();

/// Per backend slot: exhaustion mark, cursor and released sources (see `NatSources`).
#[btf_map]
static XLB_NAT_SOURCES: Array<NatSources, { MAX_BACKENDS as usize }> = Array::new();

const EEXIST: i32 = 17;

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
pub struct Egress {
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
fn ingress_iface(ctx: &XdpContext, node: &NodeConfig) -> u32 {
    if node.flags & NODE_FLAG_MULTI_IFACE == 0 { 0 } else { iface_index(ctx.ingress_ifindex() as u32) }
}

#[inline(always)]
fn iface_index(ifindex: u32) -> u32 {
    let mut index = 1;
    while index < MAX_IFACES {
        if XLB_IFACES.get(index).is_some_and(|e| e.ifindex == ifindex) {
            return index;
        }
        index += 1;
    }
    0
}

/// A client packet of a NAT flow the forward table knows: translated toward its backend.
/// `None`: not a known, live flow (the caller goes on to the VIP lookup). Inlined into the
/// entry program: the established path must not pay a tail call.
#[inline(always)]
pub fn forward_known(ctx: &XdpContext, counts: Counts, packet: &Packet, flow: &FlowKey) -> Option<u32> {
    let node = XLB_NODE.get(0)?;
    let frame_len = Frame::new(ctx).len() as u64;
    let entry = XLB_NAT_FLOWS.get_ptr_mut(flow)?;
    // SAFETY: a pointer into the map's value; copied out, fields written one at a time below.
    let known = unsafe { *entry };
    if known.flags & NAT_FLAG_COOKIE != 0 {
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
    let Some(out) = egress(ctx, node, u32::from(backend.egress)) else {
        return Some(counts.outcome(Stat::DropNoEgress));
    };
    let to = toward_backend(&known, &backend, &out);
    let result = translate_inline(&Frame::new(ctx), packet, &to);
    Some(finish(counts, result, &out, Some((known.backend, frame_len, false)), Stat::NatForwarded))
}

/// The forward entry of `flow`, if the flow is live (its backend slot holds the same live backend;
/// the entry refreshed by this packet) and a cookie flow exactly when `cookie` says so (those
/// take the NAT program's paths).
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

/// A client packet of a NAT VIP that the forward table does not know (or knows as expired or
/// sent to a backend that is gone): opens the flow — TCP SYN or UDP only.
///
/// Not inlined (a BPF-to-BPF call, so at most five arguments): its locals would push the
/// balancer's frame over the 512-byte stack.
#[inline(never)]
pub fn forward_new(ctx: &XdpContext, counts: Counts, packet: &Packet, flow: &FlowKey, meta: &VipMeta) -> u32 {
    let Some(node) = XLB_NODE.get(0) else { return counts.outcome(Stat::PassNotVip) };
    let frame_len = Frame::new(ctx).len() as u64;
    let hash = flow.hash();
    let syn = packet.proto == PROTO_TCP && packet.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    let opens = packet.proto == PROTO_UDP || syn;
    // At a VIP with SYN cookies, an ACK whose cookie `syn_cookies::client` found valid opens
    // its flow.
    let cookie = !opens && packet.proto == PROTO_TCP && syn_cookies::enabled(meta) && syn_cookies::vouched();
    // A flow whose entry is still here but dead: free its source first.
    if let Some(old) = XLB_NAT_FLOWS.get_ptr(flow) {
        release(flow, old);
    }
    if !opens && !cookie {
        return counts.outcome(Stat::DropNatNoFlow);
    }
    // (A cookie's ACK was counted against its source's limit as a SYN; judged by the lists.)
    if let Some(action) = crate::source_refusal(counts, packet, meta.id, !cookie) {
        return action;
    }
    // Checked before a source is claimed for a packet that could not be sent.
    if packet.ttl <= 1 {
        return counts.outcome(Stat::DropTtlExceeded);
    }
    counts.bump(Stat::FlowMiss);
    let Some((slot, backend)) = table_pick(meta, flow, hash) else { return counts.outcome(Stat::DropNoBackend) };
    let backend_port = if backend.port != 0 { backend.port } else { flow.dport };
    let Some(client_mac) = sender_mac(ctx) else { return counts.outcome(Stat::TruncatedEth) };
    let Some(out) = egress(ctx, node, u32::from(backend.egress)) else { return counts.outcome(Stat::DropNoEgress) };
    let now = now();
    let Some(claim) = XLB_NAT_CLAIM.get_ptr_mut(0) else { return counts.outcome(Stat::DropPoolExhausted) };
    // SAFETY: this CPU's scratch slot, used by this packet only (XDP runs to completion).
    let claim = unsafe { &mut *claim };
    claim.key = FlowKey {
        saddr: backend.addr,
        daddr: flow.saddr,
        sport: backend_port,
        dport: flow.sport,
        proto: flow.proto,
        family: flow.family,
        pad: 0,
    };
    claim.value = NatReverse {
        client: flow.saddr,
        vip: flow.daddr,
        client_port: flow.sport,
        vip_port: flow.dport,
        backend: slot,
        client_mac,
        pad: 0,
        flags: if cookie { NAT_FLAG_COOKIE } else { 0 },
        client_iface: ingress_iface(ctx, node),
        last_seen: now,
    };
    claim.pool = meta.pool;
    claim.outcome = Claimed::No;
    if meta.pool == NAT_NO_POOL {
        // DNAT only: the client's own address and port are the source.
        try_claim(claim);
    } else {
        claim.slot = slot;
        // Another hash than the Maglev pick's, so one backend's flows still cover the pool.
        claim.start = hash.rotate_left(16);
        claim.stage = 0;
        // At most two rounds: a released source, then the cursor or the bounded scan.
        for _ in 0..2 {
            let probes = claim_plan();
            if probes == 0 {
                break;
            }
            if probes == 1 {
                // One candidate (a hint, the cursor): a plain call, without the helper.
                claim_step(0, core::ptr::null_mut());
            } else {
                // SAFETY: `claim_step` is a static function of the bpf_loop callback type; it
                // takes its state from this CPU's scratch slot, not from the (null) context.
                unsafe {
                    bpf_loop(probes, claim_step as *mut c_void, core::ptr::null_mut(), 0);
                }
            }
            if claim.outcome != Claimed::No {
                break;
            }
        }
        claim_done();
    }
    match claim.outcome {
        Claimed::No => return counts.outcome(Stat::DropPoolExhausted),
        Claimed::TableFull => return counts.outcome(Stat::DropNatTableFull),
        Claimed::Reclaimed => counts.bump(Stat::NatPortReclaimed),
        Claimed::Free => {}
    }
    if claim.hinted != 0 {
        counts.bump(Stat::NatSourceReused);
    }
    claim.entry = NatFlow {
        backend: slot,
        generation: backend.generation,
        source: claim.key.daddr,
        source_port: claim.key.dport,
        backend_port,
        flags: closing(packet) | claim.value.flags,
        last_seen: now,
    };
    if XLB_NAT_FLOWS.insert(flow, &claim.entry, 0).is_err() {
        let _ = XLB_NAT_REVERSE.remove(&claim.key);
        return counts.outcome(Stat::DropNatTableFull);
    }
    claim.to = Translation {
        saddr: claim.key.daddr,
        daddr: backend.addr,
        sport: claim.key.dport,
        dport: backend_port,
        dst_mac: backend.mac,
        src_mac: out.mac,
    };
    if cookie {
        // The ACK becomes the SYN to the backend (`syn_cookies::send` writes it).
        return match syn_cookies::opened(&claim.key, &claim.to, out.iface, slot) {
            Ok(ready) => ready,
            Err(stat) => {
                let _ = XLB_NAT_FLOWS.remove(flow);
                let _ = XLB_NAT_REVERSE.remove(&claim.key);
                counts.outcome(stat)
            }
        };
    }
    finish(counts, translate(ctx, packet, &claim.to), &out, Some((slot, frame_len, true)), Stat::NatForwarded)
}

/// A backend's reply (its 5-tuple is in the reverse table): translated back to VIP → client.
/// `None`: not a NAT reply. Inlined into the entry program, like `forward_known`.
#[inline(always)]
pub fn reply(ctx: &XdpContext, counts: Counts, packet: &Packet) -> Option<u32> {
    let node = XLB_NODE.get(0)?;
    let key = packet.flow_key();
    let entry = XLB_NAT_REVERSE.get_ptr_mut(&key)?;
    // SAFETY: a pointer into the map's value; copied out, fields written one at a time below.
    let known = unsafe { *entry };
    if known.flags & NAT_FLAG_COOKIE != 0 {
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
    let Some(out) = egress(ctx, node, known.client_iface) else { return Some(counts.outcome(Stat::DropNoEgress)) };
    let to = Translation {
        saddr: known.vip,
        daddr: known.client,
        sport: known.vip_port,
        dport: known.client_port,
        dst_mac: known.client_mac,
        src_mac: out.mac,
    };
    Some(finish(counts, translate_inline(&Frame::new(ctx), packet, &to), &out, None, Stat::NatReplied))
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
fn flow_expired(now: u64, entry: &NatFlow, flow: &FlowKey, node: &NodeConfig) -> bool {
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
fn reverse_key(flow: &FlowKey, entry: &NatFlow) -> FlowKey {
    let backend = XLB_BACKENDS.get(entry.backend).copied().unwrap_or(Backend::default());
    FlowKey {
        saddr: backend.addr,
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
fn release(flow: &FlowKey, entry: *const NatFlow) {
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

#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    No,
    Free,
    Reclaimed,
    TableFull,
}

/// The state of one claim, shared with the bpf_loop callback (in a per-CPU map: it does not
/// fit the 512-byte BPF stack beside the rest of the packet's work).
#[repr(C)]
pub struct Claim {
    /// The reverse key being claimed; the scan fills in `daddr`/`dport` (the source).
    key: FlowKey,
    value: NatReverse,
    /// The forward entry and the translation made from the claim.
    entry: NatFlow,
    to: Translation,
    /// An ICMP error's quote translation (`icmp_error`).
    quote: QuoteTranslation,
    pool: u32,
    start: u32,
    size: u32,
    outcome: Claimed,
    /// The backend slot the flow goes to (its `NatSources`).
    slot: u32,
    /// 1 when the round in progress tries a source from the slot's hints (one a flow released).
    hinted: u32,
    /// 1 when the round in progress is the bounded scan.
    scanned: u32,
    /// Which round `claim_plan` plans next: 0 the hints, 1 the cursor or the scan, 2 none.
    stage: u32,
    /// 1 for the cursor's round: a candidate whose reverse entry is live by itself is taken.
    quick: u32,
}

/// Plans the next round of a claim from the pool `claim.pool` for `claim.key`'s backend (sets
/// `claim.start`, `claim.size`) and returns its candidates (0: none left). Bounded work in every
/// case: first a source a flow of this slot released (its hints); then, while the slot is
/// marked exhausted (`NAT_EXHAUSTED_NS`), one candidate at its cursor; else candidates from the
/// flow's hashed start up to the first free one. A full pool therefore costs one scan per slot
/// and period, then a new flow a few map operations; a released source is taken again at once.
///
/// The rounds run in `forward_new` (bpf_loop over `claim_step`): this function and
/// `claim_done` only read and write the slot's state. Not inlined and without arguments (their
/// state is this CPU's claim scratch): their frames must not add to `forward_new`'s.
#[inline(never)]
fn claim_plan() -> u32 {
    let Some(claim) = XLB_NAT_CLAIM.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's scratch slot, filled by `forward_new` for this packet.
    let claim = unsafe { &mut *claim };
    let Some(pool) = XLB_NAT_POOLS.get(claim.pool) else { return 0 };
    let size = pool.size();
    claim.size = size;
    let Some(state) = XLB_NAT_SOURCES.get_ptr_mut(claim.slot) else { return 0 };
    if size == 0 {
        return 0;
    }
    // SAFETY: a value of the map, valid while the program runs. Other CPUs write it without a
    // lock: every field is a plain word, and a mixed read only suggests a wrong candidate, which
    // the reverse table's insert-if-absent refuses.
    let state = unsafe { &mut *state };
    let ours = state.backend_port == claim.key.sport && state.pool == claim.pool;
    if claim.stage > 1 {
        // No round left: `hinted` and `scanned` describe the last one.
        return 0;
    }
    claim.hinted = 0;
    claim.scanned = 0;
    claim.quick = 0;
    if claim.stage == 0 {
        claim.stage = 1;
        let count = state.count;
        if ours && count > 0 {
            // Masked, not compared: LLVM merged a comparison with the tests above into
            // arithmetic the verifier could not read a bound from. (A count past the hints,
            // which no writer makes, would only suggest a wrong candidate.)
            let last = (count as usize - 1) & (NAT_SOURCE_HINTS - 1);
            if let Some(&hint) = state.hints.get(last) {
                state.count = count - 1;
                claim.hinted = 1;
                claim.start = hint;
                return 1;
            }
        }
    }
    claim.stage = 2;
    if ours && state.exhausted_at != 0 && claim.value.last_seen.saturating_sub(state.exhausted_at) < NAT_EXHAUSTED_NS {
        // (`checked_rem`: no division-by-zero path for the verifier to refuse.)
        let at = state.cursor.checked_rem(size).unwrap_or(0);
        state.cursor = at + 1;
        claim.start = at;
        claim.quick = 1;
        return 1;
    }
    claim.start = claim.start.checked_rem(size).unwrap_or(0);
    claim.scanned = 1;
    // Not marked: the scan goes on to the first free source, the whole pool if need be, so a
    // pool fills to exactly its size. The scan that finds none marks the slot, so a full pool
    // costs at most one whole scan per slot and `NAT_EXHAUSTED_NS`; meanwhile one candidate.
    size
}

/// After the claim's rounds: a bounded scan that found nothing marks the slot exhausted.
#[inline(never)]
fn claim_done() {
    let Some(claim) = XLB_NAT_CLAIM.get_ptr_mut(0) else { return };
    // SAFETY: as in `claim_plan`.
    let claim = unsafe { &mut *claim };
    if claim.outcome != Claimed::No || claim.scanned == 0 {
        return;
    }
    let Some(state) = XLB_NAT_SOURCES.get_ptr_mut(claim.slot) else { return };
    // SAFETY: as in `claim_plan`.
    let state = unsafe { &mut *state };
    if state.backend_port != claim.key.sport || state.pool != claim.pool {
        state.count = 0;
    }
    state.backend_port = claim.key.sport;
    state.pool = claim.pool;
    state.exhausted_at = claim.value.last_seen;
    state.cursor = claim.start;
}

/// Remembers that a flow of backend slot `slot` released source `key.daddr`, `key.dport` (of
/// reverse key `key`), if the slot's state is about that backend port: its next new flow takes
/// it without a scan.
#[inline(always)]
fn release_source(slot: u32, key: &FlowKey) {
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

/// bpf_loop callback: tries candidate `index` of the scan; 1 stops the loop.
#[inline(never)]
extern "C" fn claim_step(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(claim) = XLB_NAT_CLAIM.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's scratch slot, filled by `forward_new` for this packet.
    let claim = unsafe { &mut *claim };
    let Some(pool) = XLB_NAT_POOLS.get(claim.pool) else { return 1 };
    let at = claim.start as u64 + index;
    let at = if at >= claim.size as u64 { at - claim.size as u64 } else { at };
    let Some((addr, port)) = pool.candidate(at as u32) else { return 1 };
    claim.key.daddr = addr;
    claim.key.dport = port;
    if claim.quick != 0
        && let Some(held) = XLB_NAT_REVERSE.get_ptr(&claim.key)
        && let Some(node) = XLB_NODE.get(0)
    {
        // SAFETY: a live value of the map; two fields read.
        let (last, flags) = unsafe { ((*held).last_seen, (*held).flags) };
        // Live by its reverse side alone: taken, without the insert and the owner's lookup
        // (the common case of an exhausted pool). Otherwise judged in full below: the owner's
        // side may show it closed or idle.
        if !nat_expired(claim.value.last_seen, last, flags, claim.key.proto, node) {
            return 1;
        }
    }
    try_claim(claim);
    i64::from(claim.outcome != Claimed::No)
}

/// Claims `claim.key` for `claim.value`: free, or held by an expired flow.
#[inline(always)]
fn try_claim(claim: &mut Claim) {
    match XLB_NAT_REVERSE.insert(&claim.key, &claim.value, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            claim.outcome = Claimed::Free;
            return;
        }
        Err(e) if e != -EEXIST => {
            claim.outcome = Claimed::TableFull;
            return;
        }
        Err(_) => {}
    }
    // SAFETY: copied out.
    let Some(held) = (unsafe { XLB_NAT_REVERSE.get(&claim.key) }).copied() else { return };
    let owner = held.forward_key(claim.key.proto, claim.key.family);
    let (mut last, mut flags) = (held.last_seen, held.flags);
    // The owner's forward entry, if it still uses this source (it may have moved on).
    // SAFETY: copied out.
    let owner_entry = unsafe { XLB_NAT_FLOWS.get(&owner) }
        .copied()
        .filter(|e| e.source == claim.key.daddr && e.source_port == claim.key.dport);
    if let Some(entry) = owner_entry {
        last = last.max(entry.last_seen);
        flags |= entry.flags;
    }
    let Some(node) = XLB_NODE.get(0) else { return };
    if !nat_expired(claim.value.last_seen, last, flags, claim.key.proto, node) {
        return;
    }
    if XLB_NAT_REVERSE.insert(&claim.key, &claim.value, u64::from(BPF_EXIST)).is_ok() {
        if owner_entry.is_some() {
            let _ = XLB_NAT_FLOWS.remove(&owner);
        }
        claim.outcome = Claimed::Reclaimed;
    }
}

/// An ICMP error about a NAT flow, from either side: sent on to the other side with its outer
/// and its quoted headers translated. The quote is a packet that went the other way: the client
/// side quotes VIP → client (look it up reversed in the forward table), the backend side quotes
/// source → backend (reversed, it is the reverse table's key). Not inlined, like `forward_new`.
#[inline(never)]
pub fn icmp_error(ctx: &XdpContext, counts: Counts, packet: &Packet) -> u32 {
    icmp_error_inner(ctx, counts, packet).unwrap_or(NOT_HANDLED)
}

#[inline(always)]
fn icmp_error_inner(ctx: &XdpContext, counts: Counts, packet: &Packet) -> Option<u32> {
    let quote = packet.quoted.as_ref()?;
    // An error about a packet we sent comes back to the address we sent it from.
    if packet.daddr != quote.saddr {
        return None;
    }
    let node = XLB_NODE.get(0)?;
    // The translations live in the per-CPU scratch: this path's frame must stay small.
    let scratch = XLB_NAT_CLAIM.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, used by this packet only.
    let scratch = unsafe { &mut *scratch };
    scratch.key = quote.flow_key(packet.family);
    // The interface the error leaves by: toward the backend, or the client's.
    let iface = if let Some(entry) = XLB_NAT_FLOWS.get_ptr(&scratch.key) {
        // SAFETY: a live value of the map; fields read one at a time.
        let entry = unsafe { &*entry };
        let backend = XLB_BACKENDS.get(entry.backend)?;
        scratch.to = Translation {
            saddr: entry.source,
            daddr: backend.addr,
            sport: 0,
            dport: 0,
            dst_mac: backend.mac,
            src_mac: [0; 6],
        };
        scratch.quote = QuoteTranslation {
            saddr: backend.addr,
            daddr: entry.source,
            sport: entry.backend_port,
            dport: entry.source_port,
        };
        u32::from(backend.egress)
    } else {
        let rev = XLB_NAT_REVERSE.get_ptr(&scratch.key)?;
        // SAFETY: as above.
        let rev = unsafe { &*rev };
        scratch.to = Translation {
            saddr: rev.vip,
            daddr: rev.client,
            sport: 0,
            dport: 0,
            dst_mac: rev.client_mac,
            src_mac: [0; 6],
        };
        scratch.quote =
            QuoteTranslation { saddr: rev.client, daddr: rev.vip, sport: rev.client_port, dport: rev.vip_port };
        rev.client_iface
    };
    let Some(out) = egress(ctx, node, iface) else { return Some(counts.outcome(Stat::DropNoEgress)) };
    scratch.to.src_mac = out.mac;
    if let Err(drop) = translate_quote(ctx, packet, &scratch.quote, &scratch.to) {
        return Some(counts.outcome(drop));
    }
    Some(finish(counts, translate(ctx, packet, &scratch.to), &out, None, Stat::NatIcmpTranslated))
}
