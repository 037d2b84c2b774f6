//! xlb's balancer: find the VIP of each packet, keep each flow on one backend (connection table,
//! else the VIP's Maglev table), and send it there by MAC rewrite or encapsulation. Everything
//! that is not ours passes untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    ADDR_FLAG_DROP_UNHASHABLE, BACKEND_FLAG_ACTIVE, Backend, BackendCounters, FLOW_TABLE_SIZE, Flow, FlowKey,
    MAGLEV_TABLE_FLAGS, MAX_BACKENDS, MAX_MAGLEV_TABLE_SIZE, MAX_VIP_ADDRS, MAX_VIPS, MODE_DSR_IPIP, NodeConfig,
    PROTO_TCP, PROTO_UDP, STAT_COUNT, Stat, VIP_FLAG_HASH_SOURCE_ONLY, VipAddrKey, VipAddrPolicy, VipCounters, VipKey,
    VipMeta, flow_hash, source_hash,
};
use lb_ebpf::{
    forward::{encapsulate, rewrite_macs},
    headers::{TCP_FLAG_ACK, TCP_FLAG_SYN},
    parse::{Frame, NotParsed, Packet, Quoted, parse},
};

#[btf_map]
static XLB_VIPS: HashMap<VipKey, VipMeta, { MAX_VIPS as usize }> = HashMap::new();

#[btf_map]
static XLB_VIP_ADDRS: HashMap<VipAddrKey, VipAddrPolicy, { MAX_VIP_ADDRS as usize }> = HashMap::new();

#[btf_map]
static XLB_VIP_COUNTERS: PerCpuArray<VipCounters, { MAX_VIPS as usize }> = PerCpuArray::new();

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
    Array<u32, { MAX_MAGLEV_TABLE_SIZE as usize }, { MAGLEV_TABLE_FLAGS as usize }>,
    { MAX_VIPS as usize },
> = ArrayOfMaps::new();

/// The connection table. Sized by the agent at load time (`FLOW_TABLE_SIZE` is the default).
#[btf_map]
static XLB_FLOWS: LruHashMap<FlowKey, Flow, { FLOW_TABLE_SIZE as usize }> = LruHashMap::new();

#[btf_map]
static XLB_NODE: Array<NodeConfig, 1> = Array::new();

#[btf_map]
static XLB_STATS: PerCpuArray<u64, { STAT_COUNT as usize }> = PerCpuArray::new();

#[xdp]
pub fn xlb_balancer(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    let frame_len = frame.len() as u64;
    let packet = match parse(&frame) {
        Ok(packet) => packet,
        Err(NotParsed::Pass(stat)) => return count(stat),
        Err(NotParsed::Unhashable { family, daddr }) => return unhashable(family, daddr),
    };
    if let Some(quoted) = packet.quoted {
        if let Some(action) = icmp_error_to_backend(&ctx, &packet, &quoted, frame_len) {
            return action;
        }
    }
    let key = VipKey { addr: packet.daddr, port: packet.dport, proto: packet.proto, family: packet.family };
    // SAFETY: the value is copied out; the agent replaces entries whole.
    let Some(&meta) = (unsafe { XLB_VIPS.get(&key) }) else {
        return count(Stat::PassNotVip);
    };
    let flow = FlowKey {
        saddr: packet.saddr,
        daddr: packet.daddr,
        sport: packet.sport,
        dport: packet.dport,
        proto: packet.proto,
        family: packet.family,
        pad: 0,
    };
    let opens_flow = packet.proto == PROTO_UDP
        || (packet.proto == PROTO_TCP && packet.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN);
    forward(&ctx, &packet, &meta, &flow, opens_flow, frame_len)
}

/// Chooses the backend of `flow` and sends the packet there.
#[inline(always)]
fn forward(ctx: &XdpContext, packet: &Packet, meta: &VipMeta, flow: &FlowKey, opens_flow: bool, frame_len: u64) -> u32 {
    let Some(node) = XLB_NODE.get(0) else { return count(Stat::DropNoBackend) };
    let hash = flow_hash(
        &flow.saddr,
        &flow.daddr,
        (u32::from(flow.sport) << 16) | u32::from(flow.dport),
        u32::from(flow.proto),
    );
    let Some((id, backend)) = choose_backend(meta, flow, hash, opens_flow) else {
        return count(Stat::DropNoBackend);
    };
    let sent = if meta.mode == MODE_DSR_IPIP {
        encapsulate(ctx, packet, &backend, node, hash, true)
    } else {
        rewrite_macs(ctx, &backend, node)
    };
    match sent {
        Ok(stat) => {
            add_traffic(meta.id, id, frame_len);
            count_tx(stat)
        }
        Err(stat) => count(stat),
    }
}

/// Connection table first; on a miss (or a retired backend) the VIP's Maglev table. New flows
/// (TCP SYN, UDP) and re-hashed flows are recorded; a TCP packet of an unknown flow is sent by
/// the table without recording it, as Katran does, so stray packets cannot fill the table.
#[inline(always)]
fn choose_backend(meta: &VipMeta, flow: &FlowKey, hash: u32, opens_flow: bool) -> Option<(u32, Backend)> {
    // SAFETY: copied out; entries are replaced whole.
    let known = unsafe { XLB_FLOWS.get(flow) }.copied();
    let mut stale = false;
    if let Some(known) = known {
        if let Some(backend) = XLB_BACKENDS.get(known.backend) {
            if backend.flags & BACKEND_FLAG_ACTIVE != 0 && backend.generation == known.generation {
                return Some((known.backend, *backend));
            }
        }
        stale = true;
        bump(Stat::FlowStale);
    } else {
        bump(Stat::FlowMiss);
    }
    if meta.table_size == 0 {
        return None;
    }
    let pick = if meta.flags & VIP_FLAG_HASH_SOURCE_ONLY != 0 {
        source_hash(&flow.saddr, u32::from(flow.proto))
    } else {
        hash
    };
    let id = *XLB_MAGLEV.get_value(meta.id, &(pick % meta.table_size))?;
    let backend = *XLB_BACKENDS.get(id)?;
    if backend.flags & BACKEND_FLAG_ACTIVE == 0 {
        return None;
    }
    if opens_flow || stale {
        let entry = Flow { backend: id, generation: backend.generation };
        // A failed insert (table full of in-flight updates) only costs the flow its pinning.
        let _ = XLB_FLOWS.insert(flow, &entry, if stale { 0 } else { u64::from(BPF_NOEXIST) });
        if !stale {
            count_new_flow(meta.id, id);
        }
    }
    Some((id, backend))
}

/// An ICMP fragmentation-needed / packet-too-big about a packet a backend sent from a VIP: it
/// belongs to the backend that owns the flow (the quoted tuple, reversed).
#[inline(always)]
fn icmp_error_to_backend(ctx: &XdpContext, packet: &Packet, quoted: &Quoted, frame_len: u64) -> Option<u32> {
    let key = VipKey { addr: quoted.saddr, port: quoted.sport, proto: quoted.proto, family: packet.family };
    // SAFETY: copied out; entries are replaced whole.
    let meta = *unsafe { XLB_VIPS.get(&key) }?;
    let flow = FlowKey {
        saddr: quoted.daddr,
        daddr: quoted.saddr,
        sport: quoted.dport,
        dport: quoted.sport,
        proto: quoted.proto,
        family: packet.family,
        pad: 0,
    };
    let node = XLB_NODE.get(0)?;
    let hash = flow_hash(
        &flow.saddr,
        &flow.daddr,
        (u32::from(flow.sport) << 16) | u32::from(flow.dport),
        u32::from(flow.proto),
    );
    let Some((id, backend)) = choose_backend(&meta, &flow, hash, false) else {
        return Some(count(Stat::DropNoBackend));
    };
    let sent = if meta.mode == MODE_DSR_IPIP {
        // Never answer an ICMP error with another one.
        encapsulate(ctx, packet, &backend, node, hash, false)
    } else {
        rewrite_macs(ctx, &backend, node)
    };
    Some(match sent {
        Ok(stat) => {
            bump(Stat::IcmpErrorToBackend);
            add_traffic(meta.id, id, frame_len);
            count_tx(stat)
        }
        Err(stat) => count(stat),
    })
}

/// IPv4 fragments and IPv6 extension headers: not ours unless sent to a VIP address, whose
/// policy then passes or drops them. Never hashed.
#[inline(always)]
fn unhashable(family: u8, daddr: [u32; 4]) -> u32 {
    let key = VipAddrKey { addr: daddr, family, pad: [0; 3] };
    // SAFETY: copied out.
    match unsafe { XLB_VIP_ADDRS.get(&key) } {
        None => count(Stat::PassNotVip),
        Some(policy) if policy.flags & ADDR_FLAG_DROP_UNHASHABLE != 0 => count(Stat::DropUnhashable),
        Some(_) => count(Stat::PassUnhashable),
    }
}

#[inline(always)]
fn add_traffic(vip: u32, backend: u32, bytes: u64) {
    if let Some(c) = XLB_VIP_COUNTERS.get_ptr_mut(vip) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    if let Some(c) = XLB_BACKEND_COUNTERS.get_ptr_mut(backend) {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
fn count_new_flow(vip: u32, backend: u32) {
    if let Some(c) = XLB_VIP_COUNTERS.get_ptr_mut(vip) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*c).new_flows += 1 };
    }
    if let Some(c) = XLB_BACKEND_COUNTERS.get_ptr_mut(backend) {
        // SAFETY: as above.
        unsafe { (*c).new_flows += 1 };
    }
}

#[inline(always)]
fn bump(stat: Stat) {
    if let Some(slot) = XLB_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Counts an outcome and returns its verdict: drops drop, everything else passes.
#[inline(always)]
fn count(stat: Stat) -> u32 {
    bump(stat);
    if stat.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

/// Counts an outcome whose frame goes back out of the interface.
#[inline(always)]
fn count_tx(stat: Stat) -> u32 {
    bump(stat);
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
