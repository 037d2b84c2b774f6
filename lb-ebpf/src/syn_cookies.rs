//! SYN cookies for NAT VIPs (see lb-common's `syn_cookies`): the SYN answered with a cookie, the
//! ACK that returns a valid one turned into the SYN to the backend, the backend's SYN-ACK
//! answered with the ACK that completes its handshake, and the sequence shift between the two
//! sides for the life of the flow.

use core::mem::size_of;

use aya_ebpf::{
    btf_maps::{Array, LruHashMap, PerCpuArray},
    helpers::generated::bpf_xdp_adjust_tail,
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    FAMILY_V4, FlowKey, MAX_VIPS, NAT_NO_POOL, NAT_SEQ_ESTABLISHED, NAT_SEQ_SYN_SENT, NAT_TABLE_SIZE, NatSeq,
    PROTO_TCP, SYN_COOKIE_HOLD_WINDOWS, SYN_COOKIE_PERIOD_SHIFT, SYN_COOKIE_WINDOW_SHIFT, Stat, SynCookieMeter,
    SynCookieSecret, VIP_FLAG_SYN_COOKIES, VIP_FLAG_SYN_COOKIES_AUTO, VipMeta, syn_cookie, syn_cookie_check,
    syn_cookie_mss, syn_cookie_mss_index,
};
use lb_ebpf::{
    headers::{EthHdr, IPV4_DF, Ipv4Hdr, Ipv6Hdr, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN, TcpHdr, fold, sum32},
    nat::{Csum, Translation, from_code, to_code, translate},
    parse::{Frame, Packet},
};

use crate::{
    Counts, NOT_HANDLED, XLB_BACKENDS, XLB_NODE,
    clock::now,
    nat_tables::{
        Egress, cookie_flow_closing, egress, finish, live_flow, release_flow, replied, reverse_key_at, toward_backend,
        toward_client,
    },
    table_pick,
};

/// The automatic mode's meter, by VIP id.
#[btf_map]
static XLB_SYN_COOKIES: Array<SynCookieMeter, { MAX_VIPS as usize }> = Array::new();

/// The MAC's key (one entry; all zero: no cookies).
#[btf_map]
static XLB_SYN_COOKIE_SECRET: Array<SynCookieSecret, 1> = Array::new();

/// Cookie flows' sequence state, by the flow's reverse key. LRU: an entry a swept or taken-over
/// flow left behind goes first (live flows touch theirs with every packet).
#[btf_map]
static XLB_NAT_SEQ: LruHashMap<FlowKey, NatSeq, { NAT_TABLE_SIZE as usize }> = LruHashMap::new();

/// What a cookie path returns when it has put a segment in the scratch for [`send`] to write
/// (the writing's frame must not nest under theirs: the NAT program calls it after them).
pub const SEGMENT_READY: u32 = u32::MAX - 1;

/// Per-CPU scratch of the cookie paths (their frames nest under the NAT program's within the
/// 512-byte stack): the segment to write and how it leaves, the flow's state being made.
pub struct CookieScratch {
    segment: Segment,
    seq: NatSeq,
    key: FlowKey,
    to: Translation,
    /// How the segment leaves (`Egress`: 0 back out where it came in) and is counted: `Stat`, and
    /// the backend slot it is traffic of (`u32::MAX`: none) and whether it opens a flow.
    iface: u32,
    stat: u32,
    slot: u32,
    new_flow: u32,
    /// 1 when `client` found a valid cookie in this packet's ACK (read by `vouched`).
    vouched: u32,
}

#[btf_map]
static XLB_COOKIE_SCRATCH: PerCpuArray<CookieScratch, 1> = PerCpuArray::new();

/// A TCP segment the data plane writes itself (SYN-ACK to a client, SYN and ACK to a backend)
/// over the frame it came in: addresses and ports in network order, the rest in host order.
struct Segment {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    window: u16,
    /// The MSS option's value; 0: no options.
    mss: u16,
    flags: u8,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
}

/// TTL / hop limit of the segments the data plane writes (it sends them itself).
const SEGMENT_TTL: u8 = 64;
/// The window a cookie SYN-ACK offers (no window scaling: the client's SYN options are gone).
const SYN_ACK_WINDOW: u16 = 65_535;
const NO_SLOT: u32 = u32::MAX;

/// The cookies' key, once the agent has set one.
#[inline(always)]
fn secret() -> Option<SynCookieSecret> {
    XLB_SYN_COOKIE_SECRET.get(0).copied().filter(SynCookieSecret::is_set)
}

#[inline(always)]
fn scratch() -> Option<&'static mut CookieScratch> {
    let scratch = XLB_COOKIE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; XDP runs to completion, so only this packet uses it.
    Some(unsafe { &mut *scratch })
}

/// Whether the VIP may answer SYNs with cookies at all (a pool is needed: a DNAT-only VIP's
/// replies are found by the client's own address, which the cookie paths do not follow).
#[inline(always)]
pub fn enabled(meta: &VipMeta) -> bool {
    meta.flags & (VIP_FLAG_SYN_COOKIES | VIP_FLAG_SYN_COOKIES_AUTO) != 0 && meta.pool != NAT_NO_POOL
}

/// Whether this SYN of an `enabled` VIP is answered with a cookie: always, or (automatic mode)
/// while its meter says SYNs arrive faster than its threshold. Counts the SYN on the meter.
#[inline(always)]
fn on(meta: &VipMeta) -> bool {
    if meta.flags & VIP_FLAG_SYN_COOKIES != 0 {
        return true;
    }
    let Some(meter) = XLB_SYN_COOKIES.get_ptr_mut(meta.id) else { return false };
    let now = now();
    let window = now >> SYN_COOKIE_WINDOW_SHIFT;
    // SAFETY: a value of the map, valid while the program runs. Every CPU writes it without a
    // lock: a lost count only makes the threshold a little fuzzier.
    let meter = unsafe { &mut *meter };
    // Not written yet (the agent writes the meter after the meta that names it): off.
    if meter.threshold == 0 {
        return false;
    }
    if meter.window != window {
        meter.window = window;
        meter.count = 0;
    }
    meter.count += 1;
    if meter.count > meter.threshold {
        meter.active_until = window + SYN_COOKIE_HOLD_WINDOWS;
    }
    meter.active(now)
}

/// A client's TCP packet at an `enabled` VIP that `xlb_balancer` found no live plain flow for:
/// - a SYN while cookies are on: answered with a SYN-ACK whose sequence number is its cookie
///   (after the source policy, and only if the VIP has a backend for it);
/// - an ACK of no live cookie flow (`cookie_flow` came first): its cookie checked; a valid one
///   vouches for the flow, which `forward_new` then opens (`vouched`), an invalid one is dropped.
///
/// `NOT_HANDLED`: `forward_new`'s to do; `SEGMENT_READY`: [`send`]'s.
#[inline(never)]
pub fn client(ctx: &XdpContext, counts: Counts, packet: &Packet, flow: &FlowKey, meta: &VipMeta) -> u32 {
    let Some(scratch) = scratch() else { return NOT_HANDLED };
    scratch.vouched = 0;
    if packet.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
        if !on(meta) {
            return NOT_HANDLED;
        }
        if let Some(action) = crate::source_refusal::<false>(ctx, counts, packet, meta, true) {
            return action;
        }
        if table_pick(meta, flow, flow.hash()).is_none() {
            return counts.outcome(Stat::DropNoBackend);
        }
        return answer_syn(ctx, counts, packet, flow, scratch);
    }
    if packet.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST | TCP_FLAG_ACK) != TCP_FLAG_ACK {
        return NOT_HANDLED;
    }
    if !acked(ctx, packet, flow, scratch) {
        return counts.outcome(Stat::DropSynCookieInvalid);
    }
    scratch.vouched = 1;
    NOT_HANDLED
}

/// Whether `client` found a valid cookie in this packet (call only for `enabled` VIPs, whose
/// TCP packets all pass `client` first).
#[inline(always)]
pub fn vouched() -> bool {
    scratch().is_some_and(|scratch| scratch.vouched != 0)
}

/// The SYN-ACK with the cookie, back out where the SYN came in. `NOT_HANDLED` when no cookie can
/// be made (no secret yet): the SYN opens its flow as usual.
#[inline(always)]
fn answer_syn(ctx: &XdpContext, counts: Counts, packet: &Packet, flow: &FlowKey, scratch: &mut CookieScratch) -> u32 {
    let Some(secret) = secret() else { return NOT_HANDLED };
    let frame = Frame::new(ctx);
    let Some((dst_mac, src_mac)) = swapped_macs(&frame) else { return counts.outcome(Stat::TruncatedEth) };
    let l4 = packet.l3() + packet.ip_header_len();
    let Some(tcp) = frame.at::<TcpHdr>(l4) else { return counts.outcome(Stat::TruncatedTcp) };
    // SAFETY: bounds checked by `at`.
    let (isn, doff) = unsafe { (u32::from_be((*tcp).seq), usize::from((*tcp).doff_res >> 4) * 4) };
    let mss_index = syn_cookie_mss_index(syn_mss(&frame, l4, doff), packet.family);
    let cookie = syn_cookie(&secret, flow, isn, now() >> SYN_COOKIE_PERIOD_SHIFT, mss_index);
    scratch.segment = Segment {
        saddr: packet.daddr,
        daddr: packet.saddr,
        sport: packet.dport,
        dport: packet.sport,
        seq: cookie,
        ack: isn.wrapping_add(1),
        window: SYN_ACK_WINDOW,
        mss: syn_cookie_mss(mss_index, packet.family),
        flags: TCP_FLAG_SYN | TCP_FLAG_ACK,
        dst_mac,
        src_mac,
    };
    ready(scratch, 0, Stat::SynCookieSent, NO_SLOT)
}

/// A RST answering `packet`'s SYN, which a connection limit refused (`on_limit: reset`),
/// readied for [`send`]: the client learns at once instead of retrying into the limit.
#[inline(never)]
pub fn refuse_syn(ctx: &XdpContext, counts: Counts, packet: &Packet) -> u32 {
    let Some(scratch) = scratch() else { return counts.outcome(Stat::DropConnLimited) };
    let frame = Frame::new(ctx);
    let Some((dst_mac, src_mac)) = swapped_macs(&frame) else { return counts.outcome(Stat::TruncatedEth) };
    let l4 = packet.l3() + packet.ip_header_len();
    let Some(tcp) = frame.at::<TcpHdr>(l4) else { return counts.outcome(Stat::TruncatedTcp) };
    // SAFETY: bounds checked by `at`.
    let isn = unsafe { u32::from_be((*tcp).seq) };
    scratch.segment = Segment {
        saddr: packet.daddr,
        daddr: packet.saddr,
        sport: packet.dport,
        dport: packet.sport,
        seq: 0,
        ack: isn.wrapping_add(1),
        window: 0,
        mss: 0,
        flags: TCP_FLAG_RST | TCP_FLAG_ACK,
        dst_mac,
        src_mac,
    };
    ready(scratch, 0, Stat::ConnLimitReset, NO_SLOT)
}

/// The frame's Ethernet addresses swapped (destination, source): a segment answering it goes
/// back to the hop it came from. Read at once: the verifier must see this check before the
/// reads, which LLVM would otherwise fold into a later, larger one.
#[inline(always)]
fn swapped_macs(frame: &Frame) -> Option<([u8; 6], [u8; 6])> {
    let eth = frame.at::<EthHdr>(0)?;
    // SAFETY: bounds checked by `at`.
    let macs = unsafe { core::ptr::read_volatile(&(*eth).src) };
    // SAFETY: as above.
    Some((macs, unsafe { core::ptr::read_volatile(&(*eth).dst) }))
}

/// Marks the scratch's segment ready to leave by `iface` (0: back out), counted as `stat` and
/// as traffic of backend slot `slot` (`NO_SLOT`: none).
#[inline(always)]
fn ready(scratch: &mut CookieScratch, iface: u32, stat: Stat, slot: u32) -> u32 {
    scratch.iface = iface;
    scratch.stat = stat as u32;
    scratch.slot = slot;
    scratch.new_flow = u32::from(stat == Stat::SynCookieOpened);
    SEGMENT_READY
}

/// The MSS option of a SYN whose TCP header (`doff` bytes) is at `l4`; 0 if it has none.
#[inline(always)]
fn syn_mss(frame: &Frame, l4: usize, doff: usize) -> u16 {
    let end = doff.saturating_sub(size_of::<TcpHdr>()) & 0x3f;
    let options = l4 + size_of::<TcpHdr>();
    let mut at = 0usize;
    // Each round steps over one option (at least a byte): 40 bytes of options at most.
    for _ in 0..40 {
        if at >= end {
            break;
        }
        let Some(kind) = frame.at::<u8>(options + (at & 0x3f)) else { break };
        // SAFETY: bounds checked by `at`.
        let kind = unsafe { *kind };
        if kind == 0 {
            break;
        }
        if kind == 1 {
            at += 1;
            continue;
        }
        let Some(option) = frame.at::<[u8; 4]>(options + (at & 0x3f)) else { break };
        // SAFETY: as above.
        let [kind, len, high, low] = unsafe { *option };
        if kind == 2 && len == 4 {
            return u16::from_be_bytes([high, low]);
        }
        if len < 2 {
            break;
        }
        at += usize::from(len);
    }
    0
}

/// Whether an ACK of no flow returns a valid cookie; if so, the flow's state to be is in the
/// scratch (client's initial sequence number, cookie, MSS and window).
#[inline(always)]
fn acked(ctx: &XdpContext, packet: &Packet, flow: &FlowKey, scratch: &mut CookieScratch) -> bool {
    let Some(secret) = secret() else { return false };
    let frame = Frame::new(ctx);
    let Some(tcp) = frame.at::<TcpHdr>(packet.l3() + packet.ip_header_len()) else { return false };
    // SAFETY: bounds checked by `at`.
    let (seq, ack, window) =
        unsafe { (u32::from_be((*tcp).seq), u32::from_be((*tcp).ack_seq), u16::from_be((*tcp).window)) };
    let (isn, cookie) = (seq.wrapping_sub(1), ack.wrapping_sub(1));
    let Some(mss_index) = syn_cookie_check(&secret, flow, isn, cookie, now() >> SYN_COOKIE_PERIOD_SHIFT) else {
        return false;
    };
    scratch.seq = NatSeq {
        client_isn: isn,
        cookie,
        delta: 0,
        state: NAT_SEQ_SYN_SENT,
        mss: syn_cookie_mss(mss_index, packet.family),
        window,
        pad: 0,
    };
    true
}

/// `forward_new` claimed a source (reverse key `key`) and made the forward entry of the flow
/// `client` vouched for: records its sequence state and readies the SYN to the backend (`to`:
/// the claim's translation, leaving by `iface`, traffic of backend slot `slot`). `Err`: the
/// state could not be stored.
#[inline(always)]
pub fn opened(key: &FlowKey, to: &Translation, iface: u32, slot: u32) -> Result<u32, Stat> {
    let scratch = scratch().ok_or(Stat::DropNatTableFull)?;
    XLB_NAT_SEQ.insert(key, &scratch.seq, 0).map_err(|_| Stat::DropNatTableFull)?;
    syn_to_backend(scratch, to);
    Ok(ready(scratch, iface, Stat::SynCookieOpened, slot))
}

/// The SYN to the backend from the flow's state (`scratch.seq`) and translation.
#[inline(always)]
fn syn_to_backend(scratch: &mut CookieScratch, to: &Translation) {
    scratch.segment = Segment {
        saddr: to.saddr,
        daddr: to.daddr,
        sport: to.sport,
        dport: to.dport,
        seq: scratch.seq.client_isn,
        ack: 0,
        window: scratch.seq.window,
        mss: scratch.seq.mss,
        flags: TCP_FLAG_SYN,
        dst_mac: to.dst_mac,
        src_mac: to.src_mac,
    };
}

/// A client packet of a cookie flow: toward the backend with its acknowledgment
/// shifted into the backend's sequence space, or, before the backend answered, the SYN again
/// (`SEGMENT_READY`). `NOT_HANDLED`: not a live cookie flow (`client`, then `forward_new`, go
/// on; the latter frees a dead entry). Apart from `client`: their frames would add up.
#[inline(never)]
pub fn cookie_flow(ctx: &XdpContext, counts: Counts, packet: &Packet, flow: &FlowKey) -> u32 {
    let Some(closing) = cookie_flow_closing(flow) else { return NOT_HANDLED };
    if packet.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN && closing {
        // A new connection on a closed flow's addresses and ports (a client port reused): the
        // old flow goes, so that the ACK of the new one's cookie is not taken for the old one's.
        // (A SYN on a live flow goes along it, as on a plain NAT flow.)
        release_flow(flow);
        return NOT_HANDLED;
    }
    let Some(scratch) = scratch() else { return NOT_HANDLED };
    let Some(node) = XLB_NODE.get(0) else { return NOT_HANDLED };
    let frame_len = Frame::new(ctx).len() as u64;
    let Some(known) = live_flow(packet, flow, node, true) else { return NOT_HANDLED };
    let Some(backend) = XLB_BACKENDS.get(known.backend).copied() else { return NOT_HANDLED };
    let Some(out) = egress(ctx, node, u32::from(backend.egress)) else { return counts.outcome(Stat::DropNoEgress) };
    scratch.to = toward_backend(&known, &backend, &out);
    scratch.key = reverse_key_at(flow, &known, backend.addr);
    // SAFETY: copied out.
    let Some(seq) = (unsafe { XLB_NAT_SEQ.get(&scratch.key) }).copied() else {
        return counts.outcome(Stat::DropSynCookieNoState);
    };
    if seq.state != NAT_SEQ_ESTABLISHED {
        scratch.seq = seq;
        let to = &scratch.to as *const Translation;
        // SAFETY: `to` points into the scratch, a field `syn_to_backend` does not write.
        syn_to_backend(scratch, unsafe { &*to });
        return ready(scratch, out.iface, Stat::SynCookieSynResent, known.backend);
    }
    let result = translate(ctx, packet, &scratch.to).and_then(|()| shift(ctx, packet, 0, seq.delta.wrapping_neg()));
    finish(counts, result, &out, Some((known.backend, frame_len, false)), Stat::NatForwarded)
}

/// A backend packet of a cookie flow (`NOT_HANDLED` if it is not one): its SYN-ACK answered with
/// the ACK that completes its handshake (`SEGMENT_READY`); then toward the client with its
/// sequence number shifted into the client's space. Before the SYN-ACK only an RST goes through
/// (with the sequence number the client expects), the rest is dropped.
#[inline(never)]
pub fn backend_packet(ctx: &XdpContext, counts: Counts, packet: &Packet) -> u32 {
    let Some(node) = XLB_NODE.get(0) else { return NOT_HANDLED };
    let Some(scratch) = scratch() else { return NOT_HANDLED };
    scratch.key = packet.flow_key();
    let Some(known) = replied(&scratch.key, packet, true) else { return NOT_HANDLED };
    let Some(state) = XLB_NAT_SEQ.get_ptr_mut(&scratch.key) else {
        return counts.outcome(Stat::DropSynCookieNoState);
    };
    let frame = Frame::new(ctx);
    let Some((dst_mac, src_mac)) = swapped_macs(&frame) else { return counts.outcome(Stat::TruncatedEth) };
    let Some(tcp) = frame.at::<TcpHdr>(packet.l3() + packet.ip_header_len()) else {
        return counts.outcome(Stat::TruncatedTcp);
    };
    // SAFETY: bounds checked by `at`; `state` is a value of the map, written by whichever CPU
    // sees the SYN-ACK (each writes the same values).
    let (seq, ack, mut current) = unsafe { (u32::from_be((*tcp).seq), u32::from_be((*tcp).ack_seq), *state) };
    if packet.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN | TCP_FLAG_ACK {
        if current.state != NAT_SEQ_ESTABLISHED {
            current.delta = current.cookie.wrapping_sub(seq);
            // SAFETY: as above.
            unsafe {
                (*state).delta = current.delta;
                (*state).state = NAT_SEQ_ESTABLISHED;
            }
        }
        scratch.segment = Segment {
            saddr: packet.daddr,
            daddr: packet.saddr,
            sport: packet.dport,
            dport: packet.sport,
            seq: ack,
            ack: seq.wrapping_add(1),
            window: current.window,
            mss: 0,
            flags: TCP_FLAG_ACK,
            dst_mac,
            src_mac,
        };
        return ready(scratch, 0, Stat::SynCookieHandshake, NO_SLOT);
    }
    let add = if current.state == NAT_SEQ_ESTABLISHED {
        current.delta
    } else if packet.tcp_flags & TCP_FLAG_RST != 0 {
        // The backend refused the connection: the client learns it with the sequence number
        // its side expects next.
        current.cookie.wrapping_add(1).wrapping_sub(seq)
    } else {
        return counts.outcome(Stat::DropSynCookieNoState);
    };
    let Some(out) = egress(ctx, node, known.client_iface) else { return counts.outcome(Stat::DropNoEgress) };
    scratch.to = toward_client(&known, &out);
    let result = translate(ctx, packet, &scratch.to).and_then(|()| shift(ctx, packet, add, 0));
    finish(counts, result, &out, None, Stat::NatReplied)
}

/// Writes the segment a cookie path readied (`SEGMENT_READY`) and sends it as that path said.
#[inline(never)]
pub fn send(ctx: &XdpContext, counts: Counts, packet: &Packet) -> u32 {
    let frame_len = Frame::new(ctx).len() as u64;
    let Some(scratch) = scratch() else { return counts.outcome(Stat::DropAdjustFailed) };
    let out = Egress { iface: scratch.iface, mac: scratch.segment.src_mac };
    // Named again, not looked up by number: the counter's index must be a constant the verifier
    // sees within the counters.
    let stat = match scratch.stat {
        x if x == Stat::SynCookieOpened as u32 => Stat::SynCookieOpened,
        x if x == Stat::SynCookieHandshake as u32 => Stat::SynCookieHandshake,
        x if x == Stat::SynCookieSynResent as u32 => Stat::SynCookieSynResent,
        x if x == Stat::ConnLimitReset as u32 => Stat::ConnLimitReset,
        _ => Stat::SynCookieSent,
    };
    let traffic = (scratch.slot != NO_SLOT).then_some((scratch.slot, frame_len, scratch.new_flow != 0));
    finish(counts, from_code(write_segment(ctx, packet)), &out, traffic, stat)
}

/// Adds `seq_add` to the TCP sequence number and `ack_add` to the acknowledgment (if the ACK
/// flag is set), with the checksum updated.
#[inline(always)]
fn shift(ctx: &XdpContext, packet: &Packet, seq_add: u32, ack_add: u32) -> Result<(), Stat> {
    let frame = Frame::new(ctx);
    let tcp: *mut TcpHdr = frame.at(packet.l3() + packet.ip_header_len()).ok_or(Stat::TruncatedTcp)?;
    // SAFETY: bounds checked by `at`.
    unsafe {
        let mut check = Csum::of((*tcp).check);
        if seq_add != 0 {
            let old = (*tcp).seq;
            let new = u32::from_be(old).wrapping_add(seq_add).to_be();
            check.replace32(old, new);
            (*tcp).seq = new;
        }
        if ack_add != 0 && packet.tcp_flags & TCP_FLAG_ACK != 0 {
            let old = (*tcp).ack_seq;
            let new = u32::from_be(old).wrapping_add(ack_add).to_be();
            check.replace32(old, new);
            (*tcp).ack_seq = new;
        }
        (*tcp).check = check.finish();
    }
    Ok(())
}

/// Writes the scratch's segment over the frame (cut or grown to fit): Ethernet addresses, a
/// fresh IP header and the TCP header with at most the MSS option, checksums computed whole. A
/// `nat::to_code` result. Not inlined: three paths write segments.
#[inline(never)]
fn write_segment(ctx: &XdpContext, packet: &Packet) -> u32 {
    to_code(write_segment_inline(ctx, packet))
}

#[inline(always)]
fn write_segment_inline(ctx: &XdpContext, packet: &Packet) -> Result<(), Stat> {
    let scratch = scratch().ok_or(Stat::DropAdjustFailed)?;
    let seg = &scratch.segment;
    let v4 = packet.family == FAMILY_V4;
    let l3 = packet.l3();
    let ip_len = if v4 { size_of::<Ipv4Hdr>() } else { size_of::<Ipv6Hdr>() };
    let tcp_len = size_of::<TcpHdr>() + if seg.mss != 0 { 4 } else { 0 };
    let new_len = l3 + ip_len + tcp_len;
    let old_len = Frame::new(ctx).len();
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    if new_len != old_len && unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - old_len as i32) } != 0 {
        return Err(Stat::DropAdjustFailed);
    }
    let frame = Frame::new(ctx);
    let eth: *mut EthHdr = frame.at(0).ok_or(Stat::TruncatedEth)?;
    let l4 = l3 + ip_len;
    // (Each header checked right before it is written: a check LLVM finds implied by a later one
    // is dropped, and the verifier would not see it.)
    // The pseudo-header's and the TCP header's words, summed as they sit in memory.
    let mut sum = sum_addr(&seg.saddr, packet.family)
        + sum_addr(&seg.daddr, packet.family)
        + u32::from(u16::from(PROTO_TCP).to_be())
        + u32::from((tcp_len as u16).to_be());
    // SAFETY: bounds checked by `at`; plain integer fields of the packet.
    unsafe {
        (*eth).dst = seg.dst_mac;
        (*eth).src = seg.src_mac;
        if v4 {
            let ip: *mut Ipv4Hdr = frame.at(l3).ok_or(Stat::TruncatedIpv4)?;
            let total = ((ip_len + tcp_len) as u16).to_be();
            let version_tos = u16::from_ne_bytes([0x45, 0]);
            let ttl_proto = u16::from_ne_bytes([SEGMENT_TTL, PROTO_TCP]);
            let dont_fragment = IPV4_DF.to_be();
            (*ip).version_ihl = 0x45;
            (*ip).tos = 0;
            (*ip).total_len = total;
            (*ip).id = 0;
            (*ip).frag_off = dont_fragment;
            (*ip).ttl = SEGMENT_TTL;
            (*ip).proto = PROTO_TCP;
            (*ip).saddr = seg.saddr[0];
            (*ip).daddr = seg.daddr[0];
            (*ip).check = fold(
                u32::from(version_tos)
                    + u32::from(total)
                    + u32::from(dont_fragment)
                    + u32::from(ttl_proto)
                    + sum32(seg.saddr[0])
                    + sum32(seg.daddr[0]),
            );
        } else {
            let ip: *mut Ipv6Hdr = frame.at(l3).ok_or(Stat::TruncatedIpv6)?;
            (*ip).version_tc_flow = 0x6000_0000u32.to_be();
            (*ip).payload_len = (tcp_len as u16).to_be();
            (*ip).next_hdr = PROTO_TCP;
            (*ip).hop_limit = SEGMENT_TTL;
            (*ip).saddr = seg.saddr;
            (*ip).daddr = seg.daddr;
        }
        let tcp: *mut TcpHdr = frame.at(l4).ok_or(Stat::TruncatedTcp)?;
        let seq = seg.seq.to_be();
        let ack = seg.ack.to_be();
        let offset_flags = u16::from_ne_bytes([((tcp_len / 4) as u8) << 4, seg.flags]);
        let window = seg.window.to_be();
        (*tcp).source = seg.sport;
        (*tcp).dest = seg.dport;
        (*tcp).seq = seq;
        (*tcp).ack_seq = ack;
        (*tcp).doff_res = ((tcp_len / 4) as u8) << 4;
        (*tcp).flags = seg.flags;
        (*tcp).window = window;
        (*tcp).urg_ptr = 0;
        sum += u32::from(seg.sport)
            + u32::from(seg.dport)
            + sum32(seq)
            + sum32(ack)
            + u32::from(offset_flags)
            + u32::from(window);
        if seg.mss != 0 {
            let option: *mut [u8; 4] = frame.at(l4 + size_of::<TcpHdr>()).ok_or(Stat::TruncatedTcp)?;
            let [high, low] = seg.mss.to_be_bytes();
            *option = [2, 4, high, low];
            sum += u32::from(u16::from_ne_bytes([2, 4])) + u32::from(u16::from_ne_bytes([high, low]));
        }
        (*tcp).check = fold(sum);
    }
    Ok(())
}

/// One's-complement sum of an address's words (the first only for IPv4).
#[inline(always)]
fn sum_addr(addr: &[u32; 4], family: u8) -> u32 {
    if family == FAMILY_V4 { sum32(addr[0]) } else { sum32(addr[0]) + sum32(addr[1]) + sum32(addr[2]) + sum32(addr[3]) }
}
