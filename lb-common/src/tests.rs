//! Layouts, counter tables and hashes checked.

use super::*;

#[test]
fn stat_table_is_complete_and_ordered() {
    assert_eq!(Stat::ALL.len(), STAT_COUNT as usize);
    for (i, s) in Stat::ALL.iter().enumerate() {
        assert_eq!(*s as usize, i, "{} out of order", s.name());
    }
}

#[test]
fn types_have_no_padding() {
    use core::mem::size_of;
    assert_eq!(size_of::<VipKey>(), 16 + 2 + 1 + 1);
    assert_eq!(size_of::<VipMeta>(), 3 * 4 + 2 * 2 + 4);
    assert_eq!(size_of::<VipSlot>(), 20 + 4 + 20 + 4);
    assert_eq!(size_of::<Backend>(), 16 + 6 + 1 + 1 + 4 + 4 + 2 + 2);
    assert_eq!(size_of::<MaglevGroup>(), 8);
    assert_eq!(size_of::<BackendCounters>(), 3 * 8);
    assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
    assert_eq!(size_of::<Flow>(), 8);
    assert_eq!(size_of::<FlowEntry>(), 64);
    assert_eq!(size_of::<FlowSet>(), 64 + FLOW_WAYS * 64);
    assert_eq!(size_of::<VipAddrKey>(), 16 + 4);
    assert_eq!(size_of::<NodeConfig>(), 6 + 6 + 4 + 4 + 4 + 16 + 4 + 4 + 4 * 4);
    assert_eq!(size_of::<NatPool>(), 16 * MAX_POOL_ADDRS + 4 * 4);
    assert_eq!(size_of::<NatFlow>(), 8 + 16 + 2 + 2 + 4 + 8);
    assert_eq!(size_of::<NatReverse>(), 16 + 16 + 2 + 2 + 4 + 6 + 2 + 4 + 4 + 8);
    assert_eq!(size_of::<Iface>(), 4 + 6 + 2);
    assert_eq!(size_of::<NatSources>(), 2 + 2 + 4 + 8 + 4 + 4 + 4 * NAT_SOURCE_HINTS);
    assert_eq!(size_of::<SynCookieSecret>(), 16);
    assert_eq!(size_of::<SynCookieMeter>(), 4 + 4 + 8 + 8);
    assert_eq!(size_of::<NatSeq>(), 4 * 4 + 2 + 2 + 4);
}

#[test]
#[allow(deprecated)] // std's SipHasher is SipHash-2-4: the reference here.
fn siphash_matches_the_reference() {
    use core::hash::Hasher;
    extern crate std;
    let words = [1u64, 0x0123_4567_89ab_cdef, u64::MAX, 0, 42, 1 << 63];
    for (k0, k1) in [(0u64, 0u64), (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908), (u64::MAX, 7)] {
        let mut reference = std::hash::SipHasher::new_with_keys(k0, k1);
        for word in words {
            reference.write(&word.to_le_bytes());
        }
        assert_eq!(siphash24(k0, k1, &words), reference.finish(), "keys {k0:#x} {k1:#x}");
    }
}

#[test]
fn a_syn_cookie_is_valid_for_its_connection_for_two_periods_only() {
    let secret = SynCookieSecret { k0: 0x1234, k1: 0x5678 };
    let flow = flow_key(40_000);
    for mss_index in 0..4 {
        let cookie = syn_cookie(&secret, &flow, 1000, 77, mss_index);
        assert_eq!(cookie & 3, mss_index);
        assert_eq!(syn_cookie_check(&secret, &flow, 1000, cookie, 77), Some(mss_index));
        assert_eq!(syn_cookie_check(&secret, &flow, 1000, cookie, 78), Some(mss_index), "the next period");
        assert_eq!(syn_cookie_check(&secret, &flow, 1000, cookie, 79), None, "two periods on");
        assert_eq!(syn_cookie_check(&secret, &flow, 1001, cookie, 77), None, "another sequence number");
        assert_eq!(syn_cookie_check(&secret, &flow_key(40_001), 1000, cookie, 77), None, "another port");
        let other = SynCookieSecret { k0: 0x1234, k1: 0x5679 };
        assert_eq!(syn_cookie_check(&other, &flow, 1000, cookie, 77), None, "another secret");
        assert_eq!(syn_cookie_check(&secret, &flow, 1000, cookie ^ 0x100, 77), None, "a flipped bit");
    }
    // The MSS: the largest table entry not above the client's.
    assert_eq!(syn_cookie_mss(syn_cookie_mss_index(1460, FAMILY_V4), FAMILY_V4), 1460);
    assert_eq!(syn_cookie_mss(syn_cookie_mss_index(1400, FAMILY_V4), FAMILY_V4), 1300);
    assert_eq!(syn_cookie_mss(syn_cookie_mss_index(0, FAMILY_V4), FAMILY_V4), 536);
    assert_eq!(syn_cookie_mss(syn_cookie_mss_index(9000, FAMILY_V6), FAMILY_V6), 8940);
    assert_eq!(syn_cookie_mss(syn_cookie_mss_index(1440, FAMILY_V6), FAMILY_V6), 1440);
    // The meter: per second to per window, at least one.
    assert_eq!(SynCookieMeter::per_second(1000).threshold, 134);
    assert_eq!(SynCookieMeter::per_second(1).threshold, 1);
}

#[test]
fn outcomes_and_events_partition_the_counters() {
    for s in Stat::ALL {
        assert!(!(s.is_drop() && !s.is_outcome()), "{} is a drop but not an outcome", s.name());
        assert!(!(s.is_malformed() && !s.is_outcome()), "{}", s.name());
    }
}

fn flow_key(sport: u16) -> FlowKey {
    FlowKey { saddr: [1, 0, 0, 0], daddr: [2, 0, 0, 0], sport, dport: 80, proto: PROTO_TCP, family: FAMILY_V4, pad: 0 }
}

/// Writes `key` → `flow` into entry `way` as the data plane does.
fn record(set: &mut FlowSet, way: usize, key: &FlowKey, flow: Flow) {
    let hash = key.hash();
    set.hashes[way] = hash;
    set.used[way] = 1;
    set.entries[way].key = *key;
    set.entries[way].flow = flow;
    set.entries[way].check = flow_check(hash, &flow);
}

#[test]
fn a_flow_set_finds_whole_entries_and_not_torn_ones() {
    let entry = FlowEntry { key: FlowKey::default(), flow: Flow::default(), check: 0, pad: [0; 3] };
    let mut set = FlowSet { hashes: [0; FLOW_WAYS], used: [0; FLOW_WAYS], entries: [entry; FLOW_WAYS] };
    let (a, b) = (flow_key(1000), flow_key(1001));
    assert_eq!(set.find(&a), None);
    record(&mut set, 3, &a, Flow { backend: 7, generation: 2 });
    record(&mut set, 5, &b, Flow { backend: 9, generation: 1 });
    assert_eq!(set.find(&a), Some(Flow { backend: 7, generation: 2 }));
    assert_eq!(set.find(&b), Some(Flow { backend: 9, generation: 1 }));
    // Two writers interleaved: a's key and hash with b's flow (or a's flow, another generation).
    let mut torn = set;
    torn.entries[3].flow = Flow { backend: 9, generation: 1 };
    assert_eq!(torn.find(&a), None, "a torn entry reads as absent");
    let mut torn = set;
    torn.entries[3].flow.generation = 3;
    assert_eq!(torn.find(&a), None);
    let mut torn = set;
    torn.hashes[3] = b.hash();
    torn.entries[3].check = flow_check(b.hash(), &Flow { backend: 7, generation: 2 });
    assert_eq!(torn.find(&a), None, "another flow's hash and check");
    // A free entry holds nothing even if its bytes are a's.
    let mut freed = set;
    freed.used[3] = 0;
    assert_eq!(freed.find(&a), None);
}

#[test]
fn confirmed_entries_are_idle_only_past_the_limit() {
    let now = 0x1234_5670 | FLOW_USED;
    let stamp = |age: u32| (now & !FLOW_STATE_BITS).wrapping_sub(age) | FLOW_USED | FLOW_CONFIRMED;
    assert!(!flow_idle(stamp(0), now));
    assert!(!flow_idle(stamp(FLOW_CONFIRMED_IDLE_JIFFIES), now));
    assert!(flow_idle(stamp(FLOW_CONFIRMED_IDLE_JIFFIES + 4), now));
    // Stamped by another CPU a tick after `now`: the newest, not the oldest.
    assert!(!flow_idle((now & !FLOW_STATE_BITS).wrapping_add(4) | FLOW_USED | FLOW_CONFIRMED, now));
    // Across the 32-bit wrap of jiffies.
    assert!(!flow_idle(0xffff_fff0 | FLOW_USED, 0x10 | FLOW_USED));
}

#[test]
fn a_vip_slot_holds_only_its_own_whole_write() {
    let key = VipKey::v4(0x0102_0304, 80u16.to_be(), PROTO_TCP);
    let other = VipKey::v4(0x0102_0305, 80u16.to_be(), PROTO_TCP);
    let meta = VipMeta { id: 3, flags: 0, table_size: 65537, port_first: 0, port_last: 0, pool: 0 };
    let slot = VipSlot::new(key, meta);
    assert_eq!(slot.holds(&key, key.index_hash()), Some(meta));
    assert_eq!(slot.holds(&other, other.index_hash()), None);
    assert_eq!(VipSlot::default().holds(&VipKey::default(), VipKey::default().index_hash()), None, "a free slot");
    // Each meta field from another write makes the slot read as not holding the key.
    let torn: [fn(&mut VipMeta); 6] = [
        |m| m.id = 4,
        |m| m.flags = VIP_FLAG_NAT,
        |m| m.table_size = 251,
        |m| m.port_first = 1,
        |m| m.port_last = 9,
        |m| m.pool = 1,
    ];
    for change in torn {
        let mut half = slot;
        change(&mut half.meta);
        assert_eq!(half.holds(&key, key.index_hash()), None, "{:?}", half.meta);
    }
}

#[test]
fn flow_sets_cover_the_table_evenly() {
    assert_eq!(flow_sets(1024), 128);
    assert_eq!(flow_sets(1025), 129);
    assert_eq!(flow_set(0, 129), 0);
    assert_eq!(flow_set(u32::MAX, 129), 128);
    let mut counts = [0u32; 129];
    for port in 0..12900u16 {
        counts[flow_set(flow_key(port).hash(), 129) as usize] += 1;
    }
    assert!(counts.iter().all(|&c| (50..=160).contains(&c)), "{counts:?}");
}

#[test]
fn flow_hash_spreads_and_depends_on_every_field() {
    let base = flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 0], 0x0050_1f90, 6);
    assert_ne!(base, flow_hash(&[3, 0, 0, 0], &[2, 0, 0, 0], 0x0050_1f90, 6));
    assert_ne!(base, flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 1], 0x0050_1f90, 6));
    assert_ne!(base, flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 0], 0x0051_1f90, 6));
    assert_ne!(base, flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 0], 0x0050_1f90, 17));
    assert_ne!(source_hash(&[1, 0, 0, 0], 6), source_hash(&[2, 0, 0, 0], 6));
    // Sequential source ports fill 7 buckets evenly (within 10%).
    let mut buckets = [0u32; 7];
    for port in 0..7000u32 {
        buckets[(flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 0], port << 16 | 80, 6) % 7) as usize] += 1;
    }
    assert!(buckets.iter().all(|&b| (900..=1100).contains(&b)), "{buckets:?}");
}

#[test]
fn a_flow_surely_live_by_one_direction_is_never_expired_by_both() {
    const S: u64 = 1_000_000_000;
    let mut checked = 0;
    for (tcp, closing, udp) in [(300, 10, 30), (10, 300, 30), (60, 60, 5)] {
        let node = NodeConfig {
            nat_tcp_timeout: tcp,
            nat_closing_timeout: closing,
            nat_udp_timeout: udp,
            ..Default::default()
        };
        for proto in [PROTO_TCP, PROTO_UDP] {
            for idle in [0, 4, 5, 6, 9, 10, 11, 29, 30, 31, 59, 60, 61, 299, 300, 301] {
                let (now, last) = (1_000 * S, (1_000 - idle) * S);
                if !nat_surely_live(now, last, proto, &node) {
                    continue;
                }
                // The other direction: seen later or not at all, with any flags.
                for other in [None, Some(last), Some(last + S / 2), Some(now)] {
                    for flags in 0..8 {
                        let both = other.map_or(last, |o| o.max(last));
                        assert!(
                            !nat_expired(now, both, flags, proto, &node),
                            "{tcp}/{closing}/{udp} {proto} idle {idle}s flags {flags}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 100);
}
