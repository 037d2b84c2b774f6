//! The reconciler at edge sizes, against the real maps: a thousand VIPs written in steps with
//! batched table swaps, health losses ahead of the rest of a pass, and the readers' batch reads
//! agreeing with per-slot reads.

use std::collections::BTreeSet;

use lb_common::{MAX_BACKENDS, MAX_VIPS};
use xlb::{
    apply::pass::Pass,
    apply::reconcile::STEP_VIPS,
    apply::testrun::XdpAction,
    state::desired::{BackendStates, DesiredState},
    state::maglev::{self, Member},
};
use xlb_tests::{
    Balancer, FACTS,
    packets::{Frame, L4},
    parse_config, require_root,
};

const VIPS: usize = 1000;
const BACKENDS: usize = 16;
const TABLE: u32 = 251;

/// VIP `v` at 10.(100 + v / 250).(v % 250).1:80, backends 172.16.(v % 200).(first + i) with a
/// MAC that names their last octet.
fn config(vips: usize, first: usize) -> String {
    let mut yaml = String::from("vips:\n");
    for v in 0..vips {
        yaml.push_str(&format!(
            "  - name: v{v}\n    address: 10.{}.{}.1\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    maglev_table_size: {TABLE}\n    backends:\n",
            100 + v / 250,
            v % 250
        ));
        for i in first..first + BACKENDS {
            yaml.push_str(&format!("      - {{ address: 172.16.{}.{i}, mac: \"02:00:00:00:00:{i:02x}\" }}\n", v % 200));
        }
    }
    yaml
}

fn vip_address(v: usize) -> String {
    format!("10.{}.{}.1", 100 + v / 250, v % 250)
}

/// The backend octets a SYN to VIP `v` may be sent to (the destination MAC's last byte).
fn forwarded_to(lb: &Balancer, v: usize, sport: u16) -> u8 {
    let out = lb.run(&Frame::v4("198.51.100.1", &vip_address(v), L4::TcpSyn { sport, dport: 80 }).build());
    assert_eq!(out.action, XdpAction::Tx, "VIP v{v} forwards");
    out.packet[5]
}

#[test]
fn a_reload_of_a_thousand_vips_swaps_every_table_and_each_vip_forwards_to_its_new_set() {
    require_root!();
    let mut lb = Balancer::with_config(&config(VIPS, 1));
    assert_eq!(lb.reconciler.applied().len(), VIPS);
    // Every backend set changes: backends 1..=16 become 9..=24.
    let changes = lb.reload(&config(VIPS, 9));
    assert_eq!(changes.updated.len(), VIPS);
    assert_eq!(changes.tables_rebuilt, VIPS);
    for (v, sport) in (0..VIPS).zip(40000u16..) {
        let octet = forwarded_to(&lb, v, sport);
        assert!((9..25).contains(&octet), "VIP v{v} sent a new flow to backend .{octet}, not in its new set");
    }
    // Golden check of a sample of tables: exactly the Maglev table of the new set, over the
    // slots the reconciler gave the backends.
    for v in [0, 1, 499, 998, 999] {
        let applied = lb.applied(&format!("v{v}"));
        let members: Vec<Member<'_>> =
            applied.vip.backends.iter().map(|b| Member { identity: &b.identity, weight: b.weight }).collect();
        let expected: Vec<u32> =
            maglev::build(&members, TABLE).unwrap().slots.iter().map(|&i| applied.slots[i as usize]).collect();
        assert_eq!(lb.maps.table(applied.meta.id).unwrap(), expected, "table of v{v}");
    }
    // Retired slots went back: 1000 × 8 backends left, 1000 × 8 came, no slot leaked.
    let live: BTreeSet<u32> = lb.reconciler.applied().values().flat_map(|a| a.slots.iter().copied()).collect();
    assert_eq!(live.len(), VIPS * BACKENDS);
    let active = lb.maps.backends().unwrap().iter().filter(|b| b.flags & lb_common::BACKEND_FLAG_ACTIVE != 0).count();
    assert_eq!(active, VIPS * BACKENDS, "exactly the live slots are active in the map");
}

#[test]
fn a_vip_losing_a_serving_backend_is_written_before_the_rest_of_a_pass() {
    require_root!();
    let vips = STEP_VIPS + 10;
    let mut lb = Balancer::with_config(&config(vips, 1));
    // A reload that changes every VIP's set, and, at the same time, one backend of the last
    // VIP goes down.
    let reloaded = parse_config(&config(vips, 2));
    let last = format!("v{}", vips - 1);
    let down = (last.clone(), format!("172.16.{}.5", (vips - 1) % 200));
    let states = BackendStates { down: [down.clone()].into_iter().collect(), ..Default::default() };
    let desired = DesiredState::with_states(&reloaded, &FACTS, &states);
    let mut pass = Pass::new();
    // A whole step's budget, yet the step takes the VIP losing a backend alone: it is not
    // held back by the Maglev builds and writes of the reload's VIPs.
    let step = lb.reconciler.apply_step(&desired, &mut pass, &mut lb.maps, STEP_VIPS).expect("step");
    assert_eq!(step.changes.updated, vec![last.clone()], "the VIP losing a backend goes first, alone");
    assert_eq!(step.remaining, vips - 1);
    let applied = lb.applied(&last);
    let weight = applied.vip.backends.iter().find(|b| b.identity == down.1).map(|b| b.weight);
    assert_eq!(weight, Some(0), "the down backend takes no new flows");
    // The rest follows in steps of at most STEP_VIPS, every VIP reached.
    let step = lb.reconciler.apply_step(&desired, &mut pass, &mut lb.maps, STEP_VIPS).expect("step");
    assert_eq!(step.changes.updated.len(), STEP_VIPS);
    assert_eq!(step.remaining, vips - 1 - STEP_VIPS);
    let step = lb.reconciler.apply_step(&desired, &mut pass, &mut lb.maps, STEP_VIPS).expect("step");
    assert_eq!(step.remaining, 0);
    for v in 0..vips {
        let octet = forwarded_to(&lb, v, 50000);
        assert!((2..18).contains(&octet) && !(v == vips - 1 && octet == 5), "v{v} → .{octet}");
    }
}

/// News (a health failure) while a step waits for the tables built ahead of it: the step
/// writes nothing and its VIPs go back to the queue; the VIP the news affects is written next,
/// alone; the rest of the pass follows, every VIP written once.
#[test]
fn news_during_a_steps_wait_for_its_tables_puts_the_affected_vip_first() {
    require_root!();
    let vips = 2 * STEP_VIPS + 10;
    let mut lb = Balancer::with_config(&config(vips, 1));
    let reloaded = parse_config(&config(vips, 2));
    let desired = DesiredState::new(&reloaded, &FACTS);
    let waits = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = std::rc::Rc::clone(&waits);
    // The first wait is cut short by news; later ones wait for the builds (`finish` joins).
    let mut pass = Pass::interruptible(Box::new(move |_built| {
        counted.set(counted.get() + 1);
        counted.get() == 1
    }));

    // The first step builds its own tables (nothing was built ahead): no wait.
    let step = lb.reconciler.apply_step(&desired, &mut pass, &mut lb.maps, STEP_VIPS).expect("step");
    assert_eq!((step.changes.updated.len(), waits.get()), (STEP_VIPS, 0));
    let mut written: BTreeSet<String> = step.changes.updated.into_iter().collect();
    // The second waits for the tables built during the first; news comes: nothing written.
    let step = lb.reconciler.apply_step(&desired, &mut pass, &mut lb.maps, STEP_VIPS).expect("step");
    assert_eq!(waits.get(), 1);
    assert!(step.changes.updated.is_empty(), "an interrupted step writes no VIP: {:?}", step.changes.updated);
    assert_eq!(step.remaining, vips - STEP_VIPS, "its VIPs are queued again");

    // The news: a backend of the last VIP (not yet written by the pass) is down.
    let last = format!("v{}", vips - 1);
    let down = (last.clone(), format!("172.16.{}.5", (vips - 1) % 200));
    let states = BackendStates { down: [down.clone()].into_iter().collect(), ..Default::default() };
    let desired = DesiredState::with_states(&reloaded, &FACTS, &states);
    pass.restart();
    let step = lb.reconciler.apply_step(&desired, &mut pass, &mut lb.maps, STEP_VIPS).expect("step");
    assert_eq!(step.changes.updated, vec![last.clone()], "the VIP the news affects goes next, alone");
    let weight = lb.applied(&last).vip.backends.iter().find(|b| b.identity == down.1).map(|b| b.weight);
    assert_eq!(weight, Some(0), "the down backend takes no new flows");

    written.insert(last);
    let mut steps = 0;
    loop {
        let step = lb.reconciler.apply_step(&desired, &mut pass, &mut lb.maps, STEP_VIPS).expect("step");
        for name in step.changes.updated {
            assert!(written.insert(name.clone()), "{name} written twice");
        }
        steps += 1;
        if step.remaining == 0 {
            break;
        }
        assert!(steps < 10, "the pass does not end: {} remaining", step.remaining);
    }
    assert_eq!(written.len(), vips, "every VIP written once");
    assert!(waits.get() > 1, "later steps wait for the tables built ahead");
    for v in 0..vips {
        let octet = forwarded_to(&lb, v, 50000);
        assert!((2..18).contains(&octet) && !(v == vips - 1 && octet == 5), "v{v} → .{octet}");
    }
}

#[test]
fn batch_reads_agree_with_slot_reads() {
    require_root!();
    let lb = Balancer::with_config(&config(4, 1));
    for sport in 30000..30200 {
        forwarded_to(&lb, usize::from(sport % 4), sport);
    }
    let counters = lb.maps.counters().unwrap();
    let all = counters.backends(MAX_BACKENDS).unwrap();
    assert_eq!(all.len(), MAX_BACKENDS as usize);
    // A read of the slots in use (what status and metrics do) agrees with the whole read.
    let in_use = lb.reconciler.applied().values().flat_map(|a| a.slots.iter()).max().unwrap() + 1;
    assert_eq!(counters.backends(in_use).unwrap(), all[..in_use as usize]);
    assert!(counters.backends(MAX_BACKENDS + 5).unwrap().len() == MAX_BACKENDS as usize, "clamped to the map");
    let mut new_flows = 0;
    for applied in lb.reconciler.applied().values() {
        for &slot in &applied.slots {
            assert_eq!(all[slot as usize], lb.maps.backend_counters(slot).unwrap(), "slot {slot}");
            new_flows += all[slot as usize].new_flows;
        }
    }
    assert_eq!(new_flows, 200, "every SYN was counted once");
    assert_eq!(counters.stats().unwrap(), lb.maps.stats().unwrap());
    let backends = lb.maps.backends().unwrap();
    for slot in [0, 1, 63, 64, MAX_BACKENDS - 1] {
        assert_eq!(backends[slot as usize], lb.maps.backend(slot).unwrap(), "slot {slot}");
    }
}

#[test]
fn the_limits_fill_the_maps() {
    require_root!();
    // The VIP map, index and table array hold MAX_VIPS; a config at the limit is written.
    let lb = Balancer::with_config(&config_small(MAX_VIPS as usize));
    assert_eq!(lb.reconciler.applied().len(), MAX_VIPS as usize);
    assert_eq!(lb.maps.vips().unwrap().len(), MAX_VIPS as usize);
}

/// `vips` VIPs of one backend each, distinct addresses.
fn config_small(vips: usize) -> String {
    let mut yaml = String::from("vips:\n");
    for v in 0..vips {
        yaml.push_str(&format!(
            "  - name: v{v}\n    address: 10.{}.{}.{}\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    maglev_table_size: 7\n    backends:\n      - {{ address: 172.16.0.1, mac: \"02:00:00:00:00:01\" }}\n",
            100 + v / 65536,
            (v / 256) % 256,
            v % 256
        ));
    }
    yaml
}
