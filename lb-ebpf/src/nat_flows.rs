//! NAT mode's paths: known flows both ways (inlined into the balancer), new flows with the claim
//! of a source (address, port) from the VIP's pool, and ICMP errors about NAT flows — in XDP,
//! without the agent on the path. The tables and shared steps are `nat_tables`'s.
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
    btf_maps::PerCpuArray,
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    BACKEND_FLAG_ACTIVE, FlowKey, NAT_EXHAUSTED_NS, NAT_FLAG_COOKIE, NAT_FLAG_REPLIED, NAT_NO_POOL, NAT_SOURCE_HINTS,
    NAT_TOUCH_NS, NatFlow, NatReverse, PROTO_TCP, PROTO_UDP, Stat, VipMeta, nat_expired,
};
use lb_ebpf::{
    headers::{TCP_FLAG_ACK, TCP_FLAG_SYN},
    nat::{QuoteTranslation, Translation, translate, translate_inline, translate_quote},
    parse::{Frame, Packet},
};

use crate::{
    Counts, NOT_HANDLED, XLB_BACKENDS, XLB_NODE,
    clock::now,
    nat_tables::{
        XLB_NAT_FLOWS, XLB_NAT_POOLS, XLB_NAT_REVERSE, XLB_NAT_SOURCES, closing, egress, finish, flow_expired,
        ingress_iface, release_flow, sender_mac, toward_backend,
    },
    syn_cookies, table_pick,
};

/// Scratch space of the source claim (see `Claim`).
#[btf_map]
static XLB_NAT_CLAIM: PerCpuArray<Claim, 1> = PerCpuArray::new();

const EEXIST: i32 = 17;

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
    release_flow(flow);
    if !opens && !cookie {
        return counts.outcome(Stat::DropNatNoFlow);
    }
    // (A cookie's ACK was counted against its source's limit as a SYN; judged by the lists.)
    if let Some(action) = crate::source_refusal::<false>(ctx, counts, packet, meta, !cookie) {
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
