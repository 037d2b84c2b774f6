//! The control plane at scale, end to end: one xlb node with 1 000 VIPs (a /32 each, all
//! announced over BGP to BIRD with hold time 3 s), a reload that changes every VIP's backends,
//! and a backend whose server dies during that reload (see support/scale.rs for the topology).
//!
//! While the reload runs:
//! - BIRD's session to the node stays Established (polled every 100 ms; its "since" time
//!   unchanged; no NOTIFICATION on the wire),
//! - the router's kernel keeps a route to every VIP (polled every 50 ms),
//! - the dead backend stops getting new flows within fall × interval + 100 ms of its death
//!   (seen as SYNs arriving in its namespace, kernel time stamps), while the client's traffic
//!   keeps flowing to the others.

use std::time::Duration;

use xlb_tests::{
    require_root,
    scale::{BGP_PROTOCOL, Scale, Spec},
};

/// Agent start and reload are each bounded by this (today's agent needs ~15 s for 1 000 VIPs).
const PATIENCE: Duration = Duration::from_secs(40);

/// Slack on the health bound besides the agent's own probe jitter: the kill is stamped just
/// before the listener closes and SYNs carry kernel receive stamps, so the measurement itself
/// is off by microseconds; 5 ms covers clock reads and scheduling of the stamping thread.
const STAMP_SLACK: Duration = Duration::from_millis(5);

#[test]
fn a_full_reload_of_1000_vips_keeps_bgp_and_routes_and_drops_a_dead_backend_in_time() {
    require_root!();
    let mut scale = Scale::build(Spec::new(1000));
    // Polled as a monitoring system would, not in a tight loop: only outcomes are asserted.
    scale.poll_every = Duration::from_millis(200);
    let spawned = scale.start_agent();
    let started =
        scale.wait_started(spawned, PATIENCE).unwrap_or_else(|e| panic!("agent start: {e}\n{}", scale.agent_log()));
    eprintln!("{} VIPs applied {:?} after `xlb run`", scale.spec().vips, started.took);
    scale.bird.wait_established(BGP_PROTOCOL, Duration::from_secs(20));
    let routed = scale.wait_routes(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("every VIP routed on the router {routed:?} later");

    // Someone watches `xlb status` meanwhile, as operators and monitoring do (besides the
    // 200 ms polls that wait for the reload).
    let monitors = scale.monitors(Some(Duration::from_secs(1)));
    let full = scale.full_reload_with_kill(PATIENCE);
    let seen = monitors.finish(&scale);
    let spec = scale.spec().clone();
    let bound = spec.health_bound() + spec.probe_jitter() + STAMP_SLACK;
    let h = &full.health;
    eprintln!(
        "reload: {:?}\nvictim down in status: {:?}\nlast new flow to the dead backend {:?} after its death \
         ({} new flows after it; {:.0}/s before; longest silence after it {:?}); bound {bound:?}\n\
         client: {} answers, {} refused, {} failed, longest silence {:?}\n\
         status: {} polls, slowest {:?}\n\
         BGP: {} messages from the node ({} from BIRD) in {:?}, longest gap {:?} at +{:?}; BIRD polls {} (not Established at {:?}), \
         since {:?} → {:?}, NOTIFICATIONs {}\nroutes: {} polls, fewest {} of {}",
        full.reload,
        full.victim_down,
        h.last_new_flow,
        h.new_flows_after_kill,
        h.rate_before,
        h.silence_after,
        full.load.answers.len(),
        full.load.refused.len(),
        full.load.failed.len(),
        full.load.longest_silence(),
        seen.status_latencies.len(),
        seen.status_worst(),
        seen.messages,
        seen.peer_messages,
        seen.window,
        seen.keepalive_gap,
        seen.keepalive_gap_at,
        seen.bird_polls,
        seen.not_established.iter().take(5).collect::<Vec<_>>(),
        seen.since_before,
        seen.since_after,
        seen.notifications,
        seen.route_polls,
        seen.min_routes,
        spec.vips,
    );

    let mut problems = Vec::new();
    if let Err(e) = &full.reload {
        problems.push(format!("the full reload was not applied: {e}"));
    }
    if !seen.established_throughout() {
        problems.push(format!(
            "BIRD's session did not stay Established: not Established at {:?}; since {:?} → {:?}; \
             {} NOTIFICATIONs; longest gap between the node's BGP messages {:?}",
            seen.not_established.first(),
            seen.since_before,
            seen.since_after,
            seen.notifications,
            seen.keepalive_gap
        ));
    }
    if let Some((at, have)) = seen.routes_short.first() {
        problems.push(format!(
            "the router's kernel lost VIP routes: {have} of {} at +{at:?} ({} of {} polls short, fewest {})",
            spec.vips,
            seen.routes_short.len(),
            seen.route_polls,
            seen.min_routes
        ));
    }
    // The figure holds only while traffic reaches the node: a session or route lost would also
    // stop new flows to the victim.
    if let Err(e) = h.valid() {
        problems.push(format!(
            "no health measurement: {e} (its last new flow came {:?} after its death; status showed it down after {:?})",
            h.last_new_flow, full.victim_down
        ));
    } else if h.last_new_flow > bound {
        problems.push(format!(
            "the dead backend got new flows for {:?} after its server died ({} of them); bound: fall {} × \
             interval {:?} + 100 ms, + {:?} probe jitter + {STAMP_SLACK:?}",
            h.last_new_flow,
            h.new_flows_after_kill,
            spec.fall,
            spec.check_interval,
            spec.probe_jitter()
        ));
    }
    assert!(problems.is_empty(), "{}\nagent log (tail):\n{}", problems.join("\n"), tail(&scale.agent_log(), 30));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].iter().map(|l| l.chars().take(300).collect::<String>() + "\n").collect()
}
