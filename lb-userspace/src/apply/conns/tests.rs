use lb_common::{
    FAMILY_V4, FLOW_CLOSED, FLOW_CONFIRMED, FLOW_CONFIRMED_IDLE_JIFFIES, FLOW_STATE_BITS, FLOW_USED, FLOW_WAYS, Flow,
    FlowEntry, FlowKey, FlowSet, PROTO_TCP, VipKey, flow_check,
};

use super::*;

fn empty_set() -> FlowSet {
    let entry = FlowEntry { key: FlowKey::default(), flow: Flow::default(), check: 0, pad: [0; 3] };
    FlowSet { hashes: [0; FLOW_WAYS], used: [0; FLOW_WAYS], entries: [entry; FLOW_WAYS] }
}

fn client(sport: u16) -> FlowKey {
    FlowKey {
        saddr: [0x0a00_0001, 0, 0, 0],
        daddr: [0x0a00_0064, 0, 0, 0],
        sport,
        dport: 80,
        proto: PROTO_TCP,
        family: FAMILY_V4,
        pad: 0,
    }
}

/// Writes an entry as the data plane does, last used at `stamp` (jiffies), confirmed or not.
fn record(set: &mut FlowSet, way: usize, key: &FlowKey, flow: Flow, stamp: u32, confirmed: bool) {
    let hash = key.hash();
    set.hashes[way] = hash;
    set.used[way] = (stamp & !FLOW_STATE_BITS) | FLOW_USED | if confirmed { FLOW_CONFIRMED } else { 0 };
    set.entries[way].key = *key;
    set.entries[way].flow = flow;
    set.entries[way].check = flow_check(hash, &flow);
}

fn vip(port: u16) -> VipKey {
    VipKey { addr: [0x0a00_0064, 0, 0, 0], port, proto: PROTO_TCP, family: FAMILY_V4 }
}

/// VIP 0 (port 80) has backends in slots 3 (generation 7) and 4 (generation 1); VIP 1 (port 81)
/// has slot 9 (generation 2).
fn owners() -> SlotOwners {
    SlotOwners::from_slots(
        [(vip(80), vec![(3, 7), (4, 1)]), (vip(81), vec![(9, 2)])].into_iter().map(|(k, b)| (k, b.into_iter())),
    )
}

#[test]
fn entries_are_live_until_idle_past_the_tables_rule() {
    let now = 1_000_000;
    assert_eq!(entry_state(0, now), None, "a free entry");
    assert_eq!(entry_state((now - 400) | FLOW_USED | FLOW_CONFIRMED, now), Some(FlowState::Confirmed));
    assert_eq!(entry_state((now - 400) | FLOW_USED, now), Some(FlowState::Embryonic));
    let idle = now - FLOW_CONFIRMED_IDLE_JIFFIES - 8;
    assert_eq!(entry_state(idle | FLOW_USED | FLOW_CONFIRMED, now), None, "idle confirmed");
    assert_eq!(entry_state(idle | FLOW_USED, now), None, "idle embryonic");
    let just_in = now - FLOW_CONFIRMED_IDLE_JIFFIES + 8;
    assert_eq!(entry_state(just_in | FLOW_USED | FLOW_CONFIRMED, now), Some(FlowState::Confirmed));
}

#[test]
fn ages_follow_the_clock_across_its_wrap_and_never_go_negative() {
    let stamp = u32::MAX - 15;
    let now = 100; // 116 jiffies later, past the 32-bit wrap
    assert_eq!(entry_age(stamp | FLOW_USED, now), (now & !FLOW_STATE_BITS).wrapping_sub(stamp & !FLOW_STATE_BITS));
    assert!(entry_age(stamp | FLOW_USED, now) < 200);
    assert_eq!(entry_state(stamp | FLOW_USED | FLOW_CONFIRMED, now), Some(FlowState::Confirmed));
    // Stamped by another CPU a tick after the agent read the clock.
    assert_eq!(entry_age(1008 | FLOW_USED, 1000), 0);
    assert_eq!(entry_state(1008 | FLOW_USED, 1000), Some(FlowState::Embryonic));
    // The client's FIN or RST marks it closed, whatever else it is.
    assert_eq!(entry_state(1000 | FLOW_USED | FLOW_CONFIRMED | FLOW_CLOSED, 1000), Some(FlowState::Closed));
}

#[test]
fn open_connections_are_confirmed_ones_not_closed_and_young_handshakes() {
    let now = 5_000_000;
    let mut set = empty_set();
    let flow = Flow { backend: 3, generation: 7 };
    record(&mut set, 0, &client(1000), flow, now - 100, true);
    record(&mut set, 1, &client(1001), flow, now - 16, false);
    // A SYN older than a second (HZ 1000): a stale handshake, or a flood's.
    record(&mut set, 2, &client(1002), flow, now - 2000, false);
    record(&mut set, 3, &client(1003), flow, now, true);
    set.used[3] |= FLOW_CLOSED;
    // Another VIP's (slot 9), not counted here.
    record(&mut set, 4, &client(1004), Flow { backend: 9, generation: 2 }, now, true);
    let owners = owners();
    let vip_of = |slot: u32| owners.slot_owner(slot).expect("owned").vip;
    let (ours, theirs) = (vip_of(3), vip_of(9));
    assert_ne!(ours, theirs);
    let mut open = std::collections::HashMap::new();
    add_open(&mut open, &set, now, &owners, 1000, &|vip| vip == ours);
    assert_eq!(open.get(&ours), Some(&2), "the confirmed flow and the young handshake");
    assert_eq!(open.get(&theirs), None, "a VIP not asked for");
}

#[test]
fn live_entries_are_attributed_by_slot_and_generation() {
    let now = 5_000_000;
    let mut set = empty_set();
    record(&mut set, 0, &client(1000), Flow { backend: 3, generation: 7 }, now - 100, true);
    record(&mut set, 1, &client(1001), Flow { backend: 3, generation: 7 }, now - 40, false);
    record(&mut set, 2, &client(1002), Flow { backend: 4, generation: 1 }, now, true);
    // Stale: slot 3 was another backend's at generation 6.
    record(&mut set, 3, &client(1003), Flow { backend: 3, generation: 6 }, now, true);
    // A slot no VIP holds.
    record(&mut set, 4, &client(1004), Flow { backend: 5, generation: 0 }, now, true);
    // Idle past the rule.
    record(
        &mut set,
        5,
        &client(1005),
        Flow { backend: 4, generation: 1 },
        now - FLOW_CONFIRMED_IDLE_JIFFIES - 64,
        true,
    );
    // Torn: two writers, one's flow under the other's check.
    record(&mut set, 6, &client(1006), Flow { backend: 9, generation: 2 }, now, true);
    set.entries[6].flow = Flow { backend: 4, generation: 1 };
    let mut second = empty_set();
    record(&mut second, 7, &client(2000), Flow { backend: 9, generation: 2 }, now, true);

    let owners = owners();
    let mut counts = ConnCounts::default();
    counts.add_set(&set, now, &owners);
    counts.add_set(&second, now, &owners);
    assert_eq!(counts.occupied, 8, "every entry in use, live or not");
    assert_eq!(counts.of(3, 7), BackendConns { confirmed: 1, embryonic: 1, closed: 0, nat: 0 });
    assert_eq!(counts.of(4, 1), BackendConns { confirmed: 1, embryonic: 0, closed: 0, nat: 0 });
    assert_eq!(counts.of(9, 2), BackendConns { confirmed: 1, embryonic: 0, closed: 0, nat: 0 });
    assert_eq!(counts.of(3, 6).total(), 0, "the stale generation is nobody's");
    assert_eq!(counts.of(5, 0).total(), 0);

    counts.add_nat(&[((9, 2), 5), ((4, 1), 2)].into_iter().collect());
    assert_eq!(counts.of(9, 2), BackendConns { confirmed: 1, embryonic: 0, closed: 0, nat: 5 });
    assert_eq!(counts.of(4, 1).total(), 3);
}

#[test]
fn a_vips_listing_keeps_the_youngest_and_counts_them_all() {
    let now = 90_000;
    let owners = owners();
    let mut sets = vec![empty_set(), empty_set()];
    // VIP 0: six flows aged 0, 40, 80, … jiffies over both backends; one flow of VIP 1.
    for i in 0..6u16 {
        let set = &mut sets[usize::from(i % 2)];
        let flow = if i % 3 == 0 { Flow { backend: 4, generation: 1 } } else { Flow { backend: 3, generation: 7 } };
        record(set, usize::from(i / 2), &client(3000 + i), flow, now - 40 * u32::from(i), i != 5);
    }
    record(&mut sets[1], 7, &client(4000), Flow { backend: 9, generation: 2 }, now, true);
    let vip0 = owners.vip_index(&vip(80)).unwrap();

    let mut all = VipFlowsBuilder::new(100);
    let mut two = VipFlowsBuilder::new(2);
    for set in &sets {
        all.add_set(set, now, &owners, vip0);
        two.add_set(set, now, &owners, vip0);
    }
    let (all, two) = (all.finish(), two.finish());
    assert_eq!((all.confirmed, all.embryonic), (5, 1));
    assert_eq!(all.flows.len(), 6);
    assert!(all.flows.iter().all(|f| f.key.sport != 4000u16), "another VIP's flow");
    let ports: Vec<u16> = all.flows.iter().map(|f| f.key.sport).collect();
    assert_eq!(ports, [3000, 3001, 3002, 3003, 3004, 3005], "youngest first");
    assert_eq!(all.flows[3].backend_index, 1, "slot 4 is VIP 0's second backend");
    assert_eq!(all.flows[1].backend_index, 0);
    assert_eq!(all.flows[5].state, FlowState::Embryonic);
    assert_eq!((two.confirmed, two.embryonic), (5, 1), "totals do not depend on the limit");
    assert_eq!(two.flows.iter().map(|f| f.key.sport).collect::<Vec<_>>(), [3000, 3001]);
    assert_eq!(two.flows[1].age, 40);
}

/// What counting a full table of the default size costs in this build (printed; the bound only
/// catches a scan gone quadratic): every entry of every set live and attributed.
#[test]
fn counting_a_full_default_table_is_bounded() {
    let now = 5_000_000;
    let owners = owners();
    let mut set = empty_set();
    for way in 0..FLOW_WAYS {
        let flow = if way % 2 == 0 { Flow { backend: 3, generation: 7 } } else { Flow { backend: 9, generation: 2 } };
        record(&mut set, way, &client(5000 + way as u16), flow, now - 4 * way as u32, way != 0);
    }
    let sets = lb_common::flow_sets(lb_common::FLOW_TABLE_SIZE);
    let started = Instant::now();
    let mut counts = ConnCounts::default();
    for _ in 0..sets {
        counts.add_set(std::hint::black_box(&set), now, &owners);
    }
    let took = started.elapsed();
    eprintln!("{} entries counted in {took:?}", counts.occupied);
    assert_eq!(counts.occupied, u64::from(sets) * FLOW_WAYS as u64);
    assert_eq!(counts.of(3, 7).total() + counts.of(9, 2).total(), counts.occupied);
    assert_eq!(counts.of(3, 7).embryonic, u64::from(sets));
    assert!(took < Duration::from_secs(20), "{took:?}");
}
