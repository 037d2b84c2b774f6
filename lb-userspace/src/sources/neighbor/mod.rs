//! Neighbour (ARP / NDP) resolution over rtnetlink, on plain libc.
//!
//! dsr-l2 backends need their own MAC and dsr-ipip needs the next hop's MAC. Instead of taking
//! them from the YAML, the agent can learn them from the kernel's neighbour table: [`dump`] reads
//! the table (an RTM_GETNEIGH dump), [`solicit`] makes the kernel resolve an address, and
//! [`Resolver`] does both once a second for a set of targets and publishes their MACs on a
//! `watch` channel that changes only when a MAC is learned, changes or is lost.
//!
//! XDP-forwarded traffic never passes through the kernel's neighbour code, so nothing would
//! re-verify an entry once it went stale: the resolver solicits stale targets too, which makes
//! the kernel probe them (unicast, after `delay_first_probe_time`) and either confirm the MAC,
//! learn a new one or fail the entry. That costs one datagram and one probe per target per
//! `base_reachable_time` (30 s by default).

mod solicit;
mod table;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::AbortHandle, time::MissedTickBehavior};

pub use solicit::solicit;
pub use table::{Neighbor, dump, is_usable};

use crate::sources::netlink::ifindex;

/// MACs of the targets that have one, by target address.
pub type MacMap = BTreeMap<IpAddr, [u8; 6]>;

/// How often the resolver reads the table, and the least time between two solicitations of one
/// target.
const PERIOD: Duration = Duration::from_secs(1);
/// A pass that solicited a target without an entry is followed by another this soon (without
/// soliciting again), so that a neighbour answering within it is published without waiting for
/// the next period: on a LAN the answer takes well under a millisecond.
const FOLLOW_UP: Duration = Duration::from_millis(100);
/// A target unresolved for longer than this is logged as a warning (once per episode).
const UNRESOLVED_WARN: Duration = Duration::from_secs(5);

/// Addresses to resolve, each with the interface it is on-link on.
pub type Targets = BTreeMap<IpAddr, String>;

/// Keeps the MACs of a set of target addresses, each on its interface, current.
///
/// One background task reads the neighbour table every second (the first time at once, and again
/// at once after [`Resolver::replace`], and 100 ms after soliciting a target that had no entry),
/// publishes the MAC of every target that has a usable
/// entry on its interface, and solicits targets without one (and targets whose entry is stale,
/// so that the kernel re-verifies it) at most once a second each. The table dump and the
/// solicitations are a handful of short syscalls; they run on tokio's blocking pool
/// (`spawn_blocking`) anyway so that a slow dump of a very large table never holds up a runtime
/// worker.
///
/// Targets must be on-link on their interface (dsr-l2 backends, the dsr-ipip gateway): the kernel
/// resolves the next hop towards an address, and the table is keyed by that next hop.
///
/// Dropping the resolver stops the task; receivers keep the last map and see the channel close.
#[derive(Debug)]
pub struct Resolver {
    targets: watch::Sender<Targets>,
    task: AbortHandle,
}

impl Resolver {
    /// Starts resolving `targets`. Must be called within a tokio runtime. The receiver starts
    /// with an empty map and is woken only when the map changes.
    pub fn start(targets: Targets) -> (Resolver, watch::Receiver<MacMap>) {
        let (macs_tx, macs_rx) = watch::channel(MacMap::new());
        let (targets_tx, targets_rx) = watch::channel(targets.clone());
        let mut tracker = Tracker { targets: BTreeMap::new(), macs: macs_tx, last_error: None };
        tracker.set_targets(targets, Instant::now());
        let task = tokio::spawn(run(tracker, targets_rx)).abort_handle();
        (Resolver { targets: targets_tx, task }, macs_rx)
    }

    /// Resolves `targets` from now on (a reload). Removed targets leave the published map at the
    /// next pass, which runs at once; targets kept keep their MAC without a gap.
    pub fn replace(&mut self, targets: Targets) {
        self.targets.send_if_modified(|current| {
            if *current == targets {
                return false;
            }
            *current = targets;
            true
        });
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(mut tracker: Tracker, mut targets: watch::Receiver<Targets>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut follow_up = false;
    loop {
        let now = tokio::select! {
            at = tick.tick() => at,
            () = tokio::time::sleep(FOLLOW_UP), if follow_up => tokio::time::Instant::now(),
            changed = targets.changed() => {
                if changed.is_err() {
                    return; // the Resolver is gone
                }
                let now = tokio::time::Instant::now();
                tracker.set_targets(targets.borrow_and_update().clone(), now.into_std());
                // The next regular pass is a full period after this one: no target is
                // solicited twice within a period.
                tick.reset();
                now
            }
        };
        (tracker, follow_up) = match tokio::task::spawn_blocking(move || {
            let solicited_unresolved = tracker.pass(now.into_std());
            (tracker, solicited_unresolved)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(error = %e, "neighbour resolver failed; MACs are no longer updated");
                }
                return; // otherwise the runtime is shutting down
            }
        };
    }
}

/// The resolver's state, moved into the blocking pool for each pass.
#[derive(Debug)]
struct Tracker {
    targets: BTreeMap<IpAddr, Target>,
    macs: watch::Sender<MacMap>,
    /// The last error reading the table, logged once until it changes or clears.
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Target {
    /// The interface it is on-link on.
    iface: String,
    /// Since when the target has had no usable entry (`None` while it has one).
    unresolved_since: Option<Instant>,
    /// Whether the warning about this unresolved episode was logged.
    warned: bool,
    last_solicit: Option<Instant>,
    /// The last solicitation error, logged once until it changes or clears.
    solicit_error: Option<String>,
}

impl Tracker {
    fn set_targets(&mut self, targets: Targets, now: Instant) {
        // A target that moved to another interface starts over.
        self.targets.retain(|addr, target| targets.get(addr) == Some(&target.iface));
        for (addr, iface) in targets {
            self.targets.entry(addr).or_insert_with(|| Target {
                iface,
                unresolved_since: Some(now),
                ..Target::default()
            });
        }
    }

    /// Reads the table, publishes, solicits. Says whether it solicited a target that had no
    /// usable entry (one whose answer is worth looking for soon).
    fn pass(&mut self, now: Instant) -> bool {
        let observed = self.indexes().and_then(|indexes| Ok((indexes, dump()?)));
        let entries = match observed {
            Ok((indexes, neighbors)) => {
                if let Some(error) = self.last_error.take() {
                    tracing::info!(%error, "neighbour table readable again");
                }
                usable_entries(&neighbors, &indexes)
            }
            Err(e) => {
                // Keep publishing the last MACs: a transient error must not take backends away.
                let error = e.to_string();
                if self.last_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, "cannot read the neighbour table; keeping the last known MACs");
                    self.last_error = Some(error);
                }
                return false;
            }
        };
        self.publish(entries.iter().map(|(addr, (mac, _))| (*addr, *mac)).collect());
        let mut solicited_unresolved = false;
        for (addr, target) in &mut self.targets {
            let iface = target.iface.as_str();
            let (resolved, stale) = match entries.get(addr) {
                Some((_, state)) => {
                    if target.warned
                        && let Some(since) = target.unresolved_since
                    {
                        let after = now.saturating_duration_since(since);
                        tracing::info!(iface, %addr, ?after, "neighbour resolved");
                    }
                    target.unresolved_since = None;
                    target.warned = false;
                    (true, state & libc::NUD_STALE != 0)
                }
                None => {
                    let since = *target.unresolved_since.get_or_insert(now);
                    if !target.warned && now.saturating_duration_since(since) > UNRESOLVED_WARN {
                        tracing::warn!(iface, %addr, after = ?UNRESOLVED_WARN, "neighbour unresolved: no ARP/NDP answer yet; still soliciting");
                        target.warned = true;
                    }
                    (false, false)
                }
            };
            if (resolved && !stale)
                || target.last_solicit.is_some_and(|last| now.saturating_duration_since(last) < PERIOD)
            {
                continue;
            }
            target.last_solicit = Some(now);
            match solicit(iface, *addr) {
                Ok(()) => {
                    target.solicit_error = None;
                    solicited_unresolved |= !resolved;
                }
                Err(e) => {
                    let error = e.to_string();
                    if target.solicit_error.as_ref() != Some(&error) {
                        tracing::warn!(iface, %addr, %error, "cannot solicit neighbour");
                        target.solicit_error = Some(error);
                    }
                }
            }
        }
        solicited_unresolved
    }

    /// Each target's interface index (an interface that is gone fails the whole pass: the last
    /// MACs stay published).
    fn indexes(&self) -> io::Result<BTreeMap<IpAddr, u32>> {
        let mut by_name: BTreeMap<&str, u32> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (addr, target) in &self.targets {
            let iface = target.iface.as_str();
            let index = match by_name.get(iface) {
                Some(index) => *index,
                None => {
                    let index = ifindex(iface)?;
                    by_name.insert(iface, index);
                    index
                }
            };
            out.insert(*addr, index);
        }
        Ok(out)
    }

    /// Publishes `macs` if it differs from the current map, logging what changed.
    fn publish(&self, macs: MacMap) {
        let iface = |addr: &IpAddr| self.targets.get(addr).map_or("", |t| t.iface.as_str());
        self.macs.send_if_modified(|current| {
            if *current == macs {
                return false;
            }
            for (addr, mac) in &macs {
                match current.get(addr) {
                    None => tracing::info!(iface = iface(addr), %addr, mac = %format_mac(mac), "neighbour MAC learned"),
                    Some(old) if old != mac => {
                        tracing::info!(iface = iface(addr), %addr, old = %format_mac(old), mac = %format_mac(mac), "neighbour MAC changed");
                    }
                    Some(_) => {}
                }
            }
            for (addr, old) in current.iter() {
                if !macs.contains_key(addr) && self.targets.contains_key(addr) {
                    tracing::info!(iface = iface(addr), %addr, old = %format_mac(old), "neighbour MAC lost; soliciting");
                }
            }
            *current = macs;
            true
        });
    }
}

/// MAC and state of each target (address → the index of its interface) with a usable entry on
/// its interface. All-zero MACs (some NOARP devices) are not usable for forwarding.
fn usable_entries(neighbors: &[Neighbor], targets: &BTreeMap<IpAddr, u32>) -> BTreeMap<IpAddr, ([u8; 6], u16)> {
    neighbors
        .iter()
        .filter(|n| targets.get(&n.addr) == Some(&n.ifindex) && is_usable(n.state))
        .filter_map(|n| n.mac.filter(|mac| *mac != [0; 6]).map(|mac| (n.addr, (mac, n.state))))
        .collect()
}

fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
