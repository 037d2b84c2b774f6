//! xlb's balancer: find the VIP of each packet, keep each flow on one backend (connection table,
//! else the VIP's Maglev table), and send it there by MAC rewrite or encapsulation. Everything
//! that is not ours passes untouched.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;

use aya_ebpf::{
    Global,
    bindings::xdp_action,
    btf_maps::{Array, ArrayOfMaps, HashMap, PerCpuArray, ProgramArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    ADDR_FLAG_DROP_UNHASHABLE, BACKEND_FLAG_ACTIVE, BACKEND_FLAG_IPIP, Backend, BackendCounters, FILTER_NAT_BACKEND,
    FILTER_NAT_POOL, FILTER_NAT_VIP, FILTER_VIP, FLOW_CONFIRMED, FLOW_USED, Flow, FlowKey, MAGLEV_TABLE_FLAGS,
    MAX_BACKENDS, MAX_MAGLEV_GROUPS, MAX_VIP_ADDRS, MAX_VIPS, MaglevGroup, NODE_FLAG_DNAT_ONLY, NodeConfig, PROTO_TCP,
    PROTO_UDP, Stat, StatCounters, VIP_FILTER_SIZE, VIP_FLAG_CONN_LIMIT, VIP_FLAG_HASH_SOURCE_ONLY, VIP_FLAG_NAT,
    VIP_INDEX_PROBES, VIP_INDEX_SIZE, VipAddrKey, VipAddrPolicy, VipKey, VipMeta, VipSlot, addr_bucket,
    maglev_position, source_hash, vip_index_slot,
};
use lb_ebpf::{
    forward::{encapsulate, rewrite_macs},
    headers::{TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    parse::{Frame, NotParsed, Packet, Quoted, parse},
};

mod clock;
mod conn_limits;
mod drop_log;
mod flow_table;
mod lookup;
mod nat_flows;
mod nat_tables;
mod sources;
mod syn_cookies;

/// The VIPs: the truth, which the agent mirrors into `XLB_VIP_INDEX`.
#[btf_map]
static XLB_VIPS: HashMap<VipKey, VipMeta, { MAX_VIPS as usize }> = HashMap::new();

/// The VIP map's entries in an array, read in place (see `VipSlot`).
#[btf_map]
static XLB_VIP_INDEX: Array<VipSlot, { VIP_INDEX_SIZE as usize }> = Array::new();

#[btf_map]
static XLB_VIP_ADDRS: HashMap<VipAddrKey, VipAddrPolicy, { MAX_VIP_ADDRS as usize }> = HashMap::new();

/// `FILTER_*` bits where some VIP, pool or DNAT backend address falls (`addr_bucket`): a cheap
/// first test for "not ours".
#[btf_map]
static XLB_VIP_FILTER: Array<u32, { VIP_FILTER_SIZE as usize }> = Array::new();

#[btf_map]
static XLB_BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

#[btf_map]
static XLB_BACKEND_COUNTERS: PerCpuArray<BackendCounters, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// One Maglev table per VIP id, each an array of backend slots. Tables are built whole in
/// userspace and swapped in with one update of this outer map, so a packet never sees a
/// half-written table. BPF_F_INNER_MAP lets tables differ in size; BPF_F_MMAPABLE lets the
/// agent fill one with a single mmap.
#[btf_map]
static XLB_MAGLEV: ArrayOfMaps<
    Array<MaglevGroup, { MAX_MAGLEV_GROUPS as usize }, { MAGLEV_TABLE_FLAGS as usize }>,
    { MAX_VIPS as usize },
> = ArrayOfMaps::new();

#[btf_map]
static XLB_NODE: Array<NodeConfig, 1> = Array::new();

/// The global counters: one `StatCounters` per CPU, looked up once per packet.
#[btf_map]
static XLB_STATS: PerCpuArray<StatCounters, 1> = PerCpuArray::new();

/// The NAT program's packet and flow key: per-CPU scratch, because the BPF stack (512 bytes over
/// all nested calls) cannot hold them beside the NAT paths' own state; and how the parsed packet
/// crosses the tail call.
struct Scratch {
    packet: Packet,
    flow: FlowKey,
    /// What `xlb_balancer` found in the pre-filter for this packet's destination: not looked
    /// up again.
    bits: u32,
    /// Whether the packet concerns a NAT address (else it came for its ICMP too-big alone).
    nat: bool,
    /// `XLB_GENERATION` of the balancer that filled the scratch.
    generation: u32,
}

#[btf_map]
static XLB_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// The NAT program (`PROG_NAT`), set by the agent. Pinned beside the maps (a prog array forgets
/// its programs when no user holds it, and forwarding must outlive the agent), but one per load
/// of the program: a new agent's NAT program never lands in the array the running balancer
/// tail-calls, so an upgrade switches both programs at once.
#[btf_map]
static XLB_PROGS: ProgramArray<3> = ProgramArray::new();
const PROG_NAT: u32 = lb_common::PROG_INDEX_NAT;
const PROG_LOG: u32 = lb_common::PROG_INDEX_LOG;
const PROG_RESET: u32 = lb_common::PROG_INDEX_RESET;

/// This load of the program: a read-only global the agent sets to a number of its own at each
/// load. The balancer writes it into the scratch before the tail call and `xlb_nat` checks it,
/// so a packet whose scratch another load's balancer filled (program arrays mixed across an
/// upgrade) is dropped and counted, never misread.
#[unsafe(no_mangle)]
static XLB_GENERATION: Global<u32> = Global::new(0);

/// What a separately compiled path returns when the packet is not its business. (Those paths
/// return a plain `u32`: an `Option` would come back through a stack pointer, which the
/// verifier refuses.)
const NOT_HANDLED: u32 = u32::MAX;

/// This packet's view of this CPU's counters.
#[derive(Clone, Copy)]
struct Counts(*mut StatCounters);

impl Counts {
    #[inline(always)]
    fn bump(self, stat: Stat) {
        // SAFETY: the pointer came from this CPU's slot of XLB_STATS; only this CPU writes it
        // while the program runs. (`get_mut` rather than indexing: no panic path in eBPF.)
        if let Some(value) = unsafe { (*self.0).values.get_mut(stat as usize) } {
            *value += 1;
        }
    }

    /// Counts an outcome and returns its verdict: drops drop, everything else passes.
    #[inline(always)]
    fn outcome(self, stat: Stat) -> u32 {
        self.bump(stat);
        if stat.is_drop() {
            drop_log::note(stat);
        }
        if stat.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
    }

    /// Counts an outcome whose frame goes back out of the interface.
    #[inline(always)]
    fn sent(self, stat: Stat) -> u32 {
        self.bump(stat);
        xdp_action::XDP_TX
    }
}

/// The entry program: the hot paths inline on one BPF frame — direct server return, and NAT
/// replies and known NAT flows; anything else that concerns a NAT address (new flows, ICMP
/// errors), and the rare ICMP too-big about a flow, goes on to `xlb_nat` by tail call, with the
/// parsed packet in the per-CPU scratch (opening a NAT flow does not fit this frame's 512-byte
/// stack beside the rest).
///
/// Written out as `#[xdp]` would expand it, but with the body inlined by force: the macro wraps
/// the body in an inner function, which grew past LLVM's inlining threshold and became a
/// BPF-to-BPF call on every packet (~14 ns here: returns are costly under SRSO mitigations).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn xlb_balancer(ctx: *mut aya_ebpf::bindings::xdp_md) -> u32 {
    let verdict = balancer(XdpContext::new(ctx));
    if verdict == xdp_action::XDP_DROP {
        drop_log::tail_call(&XdpContext::new(ctx));
    }
    verdict
}

#[inline(always)]
fn balancer(ctx: XdpContext) -> u32 {
    let Some(stats) = XLB_STATS.get_ptr_mut(0) else { return xdp_action::XDP_PASS };
    let counts = Counts(stats);
    let frame = Frame::new(&ctx);
    let mut packet = MaybeUninit::uninit();
    let packet = match parse(&frame, &mut packet) {
        Ok(packet) => packet,
        Err(NotParsed::Pass(stat)) => return counts.outcome(stat),
        Err(NotParsed::Unhashable { family, daddr }) => return counts.outcome(unhashable(family, daddr)),
    };
    let Some(node) = XLB_NODE.get(0) else { return counts.outcome(Stat::PassNotVip) };
    let bits = XLB_VIP_FILTER.get(addr_bucket(&packet.daddr)).copied().unwrap_or(0);
    let from_dnat_backend = node.flags & NODE_FLAG_DNAT_ONLY != 0
        && XLB_VIP_FILTER.get(addr_bucket(&packet.saddr)).is_some_and(|b| b & FILTER_NAT_BACKEND != 0);
    // NAT VIPs and pool addresses (destination), DNAT backends (source): replies and known
    // flows here, everything else in the NAT program; so are ICMP too-big errors.
    let nat = bits & (FILTER_NAT_VIP | FILTER_NAT_POOL) != 0 || from_dnat_backend;
    if nat || packet.quoted.is_some_and(|quoted| quoted.too_big != 0) {
        if packet.proto == PROTO_TCP || packet.proto == PROTO_UDP {
            if (bits & FILTER_NAT_POOL != 0 || from_dnat_backend)
                && let Some(action) = nat_flows::reply(&ctx, counts, packet)
            {
                return action;
            }
            if bits & FILTER_NAT_VIP != 0
                && let Some(action) = nat_flows::forward_known(&ctx, counts, packet, &packet.flow_key())
            {
                return action;
            }
        }
        if let Some(scratch) = XLB_SCRATCH.get_ptr_mut(0) {
            // SAFETY: this CPU's scratch slot; XDP runs to completion, so only this packet uses
            // it until the NAT program has read it.
            unsafe {
                // (A copy LLVM expands inline; an assignment became a `memmove` call.)
                core::ptr::copy_nonoverlapping(packet, core::ptr::addr_of_mut!((*scratch).packet), 1);
                (*scratch).bits = bits;
                (*scratch).nat = nat;
                (*scratch).generation = XLB_GENERATION.load();
                XLB_PROGS.tail_call(&ctx, PROG_NAT);
            }
        }
        // Only if the NAT program is not loaded. A too-big error for no NAT address goes on
        // as any other packet (it is then not forwarded to a backend).
        if nat {
            return counts.outcome(Stat::DropNatUnavailable);
        }
    }
    if bits & FILTER_VIP == 0 {
        return counts.outcome(Stat::PassNotVip);
    }
    let flow = packet.flow_key();
    direct_inline::<true>(&ctx, counts, packet, &flow, node)
}

/// NAT: new flows, ICMP errors — and direct server return for a DSR VIP
/// whose address shares a pre-filter bucket with a NAT address. Entered by tail call from
/// `xlb_balancer`, which left the parsed packet in the scratch. Its paths are separate BPF
/// functions with their state in per-CPU maps, so that nested calls stay within 512 bytes.
#[xdp]
pub fn xlb_nat(ctx: XdpContext) -> u32 {
    let verdict = nat(&ctx);
    if verdict == xdp_action::XDP_DROP {
        drop_log::tail_call(&ctx);
    }
    verdict
}

#[inline(always)]
fn nat(ctx: &XdpContext) -> u32 {
    let ctx = XdpContext::new(ctx.ctx);
    let Some(stats) = XLB_STATS.get_ptr_mut(0) else { return xdp_action::XDP_PASS };
    let counts = Counts(stats);
    let Some(scratch) = XLB_SCRATCH.get_ptr_mut(0) else { return xdp_action::XDP_PASS };
    // SAFETY: this CPU's scratch slot, filled by `xlb_balancer` for this very packet.
    let Scratch { packet, flow, bits, nat, generation } = unsafe { &mut *scratch };
    if *generation != XLB_GENERATION.load() {
        return counts.outcome(Stat::DropNatUnavailable);
    }
    let (packet, bits, nat) = (&*packet, *bits, *nat);
    // One place writes and sends the segments the paths ready (a RST, a cookie path's).
    let mut action = nat_action(&ctx, counts, packet, flow, bits, nat);
    if action == conn_limits::RESET_WANTED {
        action = syn_cookies::refuse_syn(&ctx, counts, packet);
    }
    if action == syn_cookies::SEGMENT_READY {
        return syn_cookies::send(&ctx, counts, packet);
    }
    action
}

/// The NAT program's verdict for `packet`, or `syn_cookies::SEGMENT_READY` /
/// `conn_limits::RESET_WANTED` for the segment `nat` then sends.
#[inline(always)]
fn nat_action(ctx: &XdpContext, counts: Counts, packet: &Packet, flow: &mut FlowKey, bits: u32, nat: bool) -> u32 {
    if let Some(quoted) = packet.quoted {
        let action =
            if quoted.too_big != 0 { icmp_error_to_backend(ctx, counts, packet, &quoted) } else { NOT_HANDLED };
        if action != NOT_HANDLED {
            return action;
        }
        let action = if nat { nat_flows::icmp_error(ctx, counts, packet) } else { NOT_HANDLED };
        if action != NOT_HANDLED {
            return action;
        }
    }
    let Some(node) = XLB_NODE.get(0) else { return counts.outcome(Stat::PassNotVip) };
    let has_ports = packet.proto == PROTO_TCP || packet.proto == PROTO_UDP;
    // A backend's packet of a cookie flow (the inlined reply path leaves those here).
    if bits & FILTER_NAT_POOL != 0 && packet.proto == PROTO_TCP {
        let action = syn_cookies::backend_packet(ctx, counts, packet);
        if action != NOT_HANDLED {
            return action;
        }
    }
    if bits & (FILTER_VIP | FILTER_NAT_VIP) == 0 {
        return counts.outcome(Stat::PassNotVip);
    }
    *flow = packet.flow_key();
    let flow = &*flow;
    // Not a known flow (`xlb_balancer` tried): a new one, or one whose entry is dead.
    if bits & FILTER_NAT_VIP != 0
        && has_ports
        && let Some(meta) = find_vip(packet.daddr, packet.dport, packet.proto, packet.family, VipLookup::MapOnly)
        && meta.flags & VIP_FLAG_NAT != 0
    {
        // The cookie paths first (answered SYNs, cookie flows, cookies checked), then the rest;
        // each judges the source policy and connection limit of a flow it would open.
        let mut action = NOT_HANDLED;
        if packet.proto == PROTO_TCP && syn_cookies::enabled(&meta) {
            action = syn_cookies::cookie_flow(ctx, counts, packet, flow);
            if action == NOT_HANDLED {
                action = syn_cookies::client(ctx, counts, packet, flow, &meta);
            }
        }
        if action == NOT_HANDLED {
            action = nat_flows::forward_new(ctx, counts, packet, flow, &meta);
        }
        return action;
    }
    direct(ctx, counts, packet, flow, node)
}

/// A RST for a SYN a connection limit refused: entered by tail call from `xlb_balancer` (whose
/// frame leaves no room to write a segment, nor its verifier budget to hand over the parsed
/// packet), it parses the untouched frame again.
#[xdp]
pub fn xlb_reset(ctx: XdpContext) -> u32 {
    let Some(stats) = XLB_STATS.get_ptr_mut(0) else { return xdp_action::XDP_PASS };
    let counts = Counts(stats);
    let frame = Frame::new(&ctx);
    let mut packet = MaybeUninit::uninit();
    let Ok(packet) = parse(&frame, &mut packet) else { return counts.outcome(Stat::DropConnLimited) };
    if packet.proto != PROTO_TCP {
        return counts.outcome(Stat::DropConnLimited);
    }
    let action = syn_cookies::refuse_syn(&ctx, counts, packet);
    if action == syn_cookies::SEGMENT_READY { syn_cookies::send(&ctx, counts, packet) } else { action }
}

/// `direct_inline` as a separate BPF function, for the NAT program (its frame and NAT's must
/// never add up on the 512-byte stack).
#[inline(never)]
fn direct(ctx: &XdpContext, counts: Counts, packet: &Packet, flow: &FlowKey, node: &NodeConfig) -> u32 {
    direct_inline::<false>(ctx, counts, packet, flow, node)
}

/// Direct server return (dsr-l2, dsr-ipip): connection table, else the VIP's Maglev table.
/// `BALANCER`: in `xlb_balancer`, which hands a SYN to answer with a RST to `xlb_reset` (else
/// the NAT program, which writes it itself).
#[inline(always)]
fn direct_inline<const BALANCER: bool>(
    ctx: &XdpContext,
    counts: Counts,
    packet: &Packet,
    flow: &FlowKey,
    node: &NodeConfig,
) -> u32 {
    let opens = if packet.proto == PROTO_UDP {
        Opens::Udp
    } else if packet.proto == PROTO_TCP && packet.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
        Opens::Syn
    } else {
        Opens::No
    };
    let hash = flow.hash();
    // An established flow needs only the connection table: its entry names a backend slot whose
    // generation proves the VIP still has that backend (removing a VIP retires its slots), and
    // the slot says how to send. Any packet but a TCP SYN confirms the flow's entry; the
    // client's FIN or RST marks it closed (for a VIP's concurrent connections).
    let entry = flow_table::find(flow, hash, if opens == Opens::Syn { 0 } else { FLOW_CONFIRMED });
    if let Some(known) = entry.flow
        && let Some(backend) = live_backend(known)
    {
        if packet.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
            entry.close();
        }
        return send(ctx, counts, packet, node, known.backend, &backend, hash, false, true);
    }
    let Some(meta) = find_vip(packet.daddr, packet.dport, packet.proto, packet.family, VipLookup::Indexed) else {
        return counts.outcome(Stat::PassNotVip);
    };
    // Not an established flow: the source policy, if the VIP has one. A stale flow (its backend
    // gone) is judged by the lists but not counted as a new flow.
    if let Some(action) =
        source_refusal::<BALANCER>(ctx, counts, packet, &meta, opens != Opens::No && entry.flow.is_none())
    {
        return action;
    }
    let Some(choice) = choose_backend(counts, &meta, flow, hash, opens, entry) else {
        return counts.outcome(Stat::DropNoBackend);
    };
    send(ctx, counts, packet, node, choice.slot, &choice.backend, hash, choice.new_flow, true)
}

/// The source policy of VIP `meta` (if it has one) on a packet of no established flow that
/// would open one when `opens`, and then its connection limit (if it has one and `opens`): the
/// drop's verdict if refused (counted by reason), for a SYN to answer with a RST the tail call
/// to `xlb_reset` (`BALANCER`) or `conn_limits::RESET_WANTED` (the NAT program writes it),
/// else `None` (an uncounted admission counted as `source_untracked`). One call for both: each
/// call site costs the balancer's frame spill slots it cannot spare.
#[inline(always)]
fn source_refusal<const BALANCER: bool>(
    ctx: &XdpContext,
    counts: Counts,
    packet: &Packet,
    meta: &VipMeta,
    opens: bool,
) -> Option<u32> {
    let conn_limit = opens && meta.flags & VIP_FLAG_CONN_LIMIT != 0;
    if !conn_limit && !sources::active(meta.id) {
        return None;
    }
    let how = u32::from(opens) | if conn_limit { sources::CONN_LIMIT } else { 0 };
    let refused = match sources::judge(packet, meta.id, how) {
        sources::DENIED => Stat::DropSourceDenied,
        sources::NOT_ALLOWED => Stat::DropSourceNotAllowed,
        sources::LIMITED => Stat::DropSourceLimited,
        sources::CONN_LIMITED => Stat::DropConnLimited,
        sources::CONN_RESET if !BALANCER => return Some(conn_limits::RESET_WANTED),
        sources::CONN_RESET => {
            // SAFETY: a tail call; `xlb_reset` parses the untouched frame again.
            unsafe { XLB_PROGS.tail_call(ctx, PROG_RESET) };
            Stat::DropConnLimited
        }
        sources::UNTRACKED => {
            counts.bump(Stat::SourceUntracked);
            return None;
        }
        _ => return None,
    };
    Some(counts.outcome(refused))
}

/// The VIP serving `addr`, `port` (network order), `proto`: the exact port's, else a port-range
/// VIP on that address (kept under port 0) whose range holds the port.
#[inline(always)]
fn find_vip(addr: [u32; 4], port: u16, proto: u8, family: u8, lookup: VipLookup) -> Option<VipMeta> {
    let key = VipKey { addr, port, proto, family };
    if let Some(meta) = lookup.get(&key) {
        return Some(meta);
    }
    if port == 0 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let meta = lookup.get(&VipKey { port: 0, ..key })?;
    let port = u16::from_be(port);
    (meta.port_first <= port && port <= meta.port_last).then_some(meta)
}

/// Where `find_vip` looks for a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VipLookup {
    /// The index when it holds the key, else the map.
    Indexed,
    /// Only the map: for the NAT program's new flows, whose frame the index's probes would push
    /// past the stack its deepest call chain may use.
    MapOnly,
}

impl VipLookup {
    #[inline(always)]
    fn get(self, key: &VipKey) -> Option<VipMeta> {
        if self == VipLookup::Indexed {
            let hash = key.index_hash();
            for probe in 0..VIP_INDEX_PROBES {
                if let Some(slot) = XLB_VIP_INDEX.get(vip_index_slot(hash, probe))
                    && let Some(meta) = slot.holds(key, hash)
                {
                    return Some(meta);
                }
            }
        }
        // SAFETY: the value is copied out; the agent replaces entries whole.
        unsafe { XLB_VIPS.get(key) }.copied()
    }
}

/// Sends the packet to `backend` (slot `slot`) by its VIP's mode and counts it.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn send(
    ctx: &XdpContext,
    counts: Counts,
    packet: &Packet,
    node: &NodeConfig,
    slot: u32,
    backend: &Backend,
    hash: u32,
    new_flow: bool,
    answer_too_big: bool,
) -> u32 {
    // The frame as it came in (before a tunnel header is added): what the backend counts.
    let frame_len = Frame::new(ctx).len() as u64;
    let sent = if backend.flags & BACKEND_FLAG_IPIP != 0 {
        encapsulate(ctx, packet, backend, node, hash, answer_too_big)
    } else {
        rewrite_macs(ctx, backend, node)
    };
    match sent {
        Ok(Stat::Forwarded) => {
            add_traffic(slot, frame_len, new_flow);
            counts.sent(Stat::Forwarded)
        }
        Ok(stat) => counts.sent(stat),
        Err(stat) => counts.outcome(stat),
    }
}

/// The backend of a connection-table entry, if its slot still holds the same live backend.
#[inline(always)]
fn live_backend(entry: Flow) -> Option<Backend> {
    let backend = XLB_BACKENDS.get(entry.backend)?;
    (backend.flags & BACKEND_FLAG_ACTIVE != 0 && backend.generation == entry.generation).then_some(*backend)
}

/// Whether a packet may open a flow in the connection table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opens {
    No,
    /// A TCP SYN (without ACK).
    Syn,
    /// UDP: any packet of an unknown flow opens it.
    Udp,
}

struct Choice {
    slot: u32,
    backend: Backend,
    new_flow: bool,
}

/// After the connection table (`entry`, as `flow_table::find` left it): the VIP's Maglev table.
/// New flows (TCP SYN, UDP) and re-hashed flows are recorded (embryonic, unless their set holds
/// only live confirmed flows: then they go unrecorded and counted); a TCP packet of an unknown
/// flow is sent by the table without recording it, as Katran does, so stray packets cannot fill
/// the table.
#[inline(always)]
fn choose_backend(
    counts: Counts,
    meta: &VipMeta,
    flow: &FlowKey,
    hash: u32,
    opens: Opens,
    entry: flow_table::Entry,
) -> Option<Choice> {
    let stale = match entry.flow {
        Some(known) => {
            if let Some(backend) = live_backend(known) {
                return Some(Choice { slot: known.backend, backend, new_flow: false });
            }
            counts.bump(Stat::FlowStale);
            true
        }
        None => {
            counts.bump(Stat::FlowMiss);
            false
        }
    };
    let (slot, backend) = table_pick(meta, flow, hash)?;
    let new_flow = opens != Opens::No && !stale;
    if (new_flow || stale) && !entry.record(flow, hash, Flow { backend: slot, generation: backend.generation }) {
        // Every entry of the set is a live confirmed flow: sent by the table, unrecorded.
        counts.bump(Stat::FlowSetFull);
    }
    Some(Choice { slot, backend, new_flow })
}

/// The VIP's Maglev table entry for this flow: backend slot and backend, if live.
#[inline(always)]
fn table_pick(meta: &VipMeta, flow: &FlowKey, hash: u32) -> Option<(u32, Backend)> {
    if meta.table_size == 0 {
        return None;
    }
    let pick = if meta.flags & VIP_FLAG_HASH_SOURCE_ONLY != 0 {
        source_hash(&flow.saddr, u32::from(flow.proto))
    } else {
        hash
    };
    let (group, lane) = maglev_position(pick % meta.table_size);
    let slot = *XLB_MAGLEV.get_value(meta.id, &group)?.get(lane)?;
    let backend = *XLB_BACKENDS.get(slot)?;
    (backend.flags & BACKEND_FLAG_ACTIVE != 0).then_some((slot, backend))
}

/// An ICMP fragmentation-needed / packet-too-big about a packet a backend sent from a VIP: it
/// belongs to the backend that owns the flow (the quoted tuple, reversed). Rare, so not inlined:
/// its locals stay off the NAT program's frame.
#[inline(never)]
fn icmp_error_to_backend(ctx: &XdpContext, counts: Counts, packet: &Packet, quoted: &Quoted) -> u32 {
    icmp_error_to_backend_inner(ctx, counts, packet, quoted).unwrap_or(NOT_HANDLED)
}

#[inline(always)]
fn icmp_error_to_backend_inner(ctx: &XdpContext, counts: Counts, packet: &Packet, quoted: &Quoted) -> Option<u32> {
    let meta = find_vip(quoted.saddr, quoted.sport, quoted.proto, packet.family, VipLookup::Indexed)?;
    if meta.flags & VIP_FLAG_NAT != 0 {
        // NAT flows have their own tables (nat_flows::icmp_error).
        return None;
    }
    let flow = quoted.flow_key(packet.family);
    let node = XLB_NODE.get(0)?;
    let hash = flow.hash();
    let Some(choice) = choose_backend(counts, &meta, &flow, hash, Opens::No, flow_table::find(&flow, hash, FLOW_USED))
    else {
        return Some(counts.outcome(Stat::DropNoBackend));
    };
    // Never answer an ICMP error with another one: so XDP_TX here means forwarded.
    let action = send(ctx, counts, packet, node, choice.slot, &choice.backend, hash, false, false);
    if action == xdp_action::XDP_TX {
        counts.bump(Stat::IcmpErrorToBackend);
    }
    Some(action)
}

/// IPv4 fragments and IPv6 extension headers: not ours unless sent to a VIP address, whose
/// policy then passes or drops them. Never hashed.
#[inline(always)]
fn unhashable(family: u8, daddr: [u32; 4]) -> Stat {
    let key = VipAddrKey { addr: daddr, family, pad: [0; 3] };
    // SAFETY: copied out.
    match unsafe { XLB_VIP_ADDRS.get(&key) } {
        None => Stat::PassNotVip,
        Some(policy) if policy.flags & ADDR_FLAG_DROP_UNHASHABLE != 0 => Stat::DropUnhashable,
        Some(_) => Stat::PassUnhashable,
    }
}

/// Counts the packet on its backend slot: one per-CPU lookup (VIP totals are sums over slots).
#[inline(always)]
fn add_traffic(backend: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = XLB_BACKEND_COUNTERS.get_ptr_mut(backend) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += u64::from(new_flow);
        }
    }
}

/// The drop log (`bpf_log`): tail-called on drops while on; logs the reason and the packet.
#[xdp]
pub fn xlb_log(ctx: XdpContext) -> u32 {
    drop_log::record(&ctx);
    xdp_action::XDP_DROP
}

lb_ebpf::xdp_object!();
