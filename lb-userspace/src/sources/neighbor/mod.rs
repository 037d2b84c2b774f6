//! Neighbour (ARP / NDP) resolution through rtnetlink, driven by the kernel's notifications.
//!
//! dsr-l2 backends need their own MAC and dsr-ipip needs the next hop's MAC. Instead of taking
//! them from the YAML, the agent learns them from the kernel's neighbour table. [`Resolver`]
//! asks the kernel to keep each target resolved by itself (a *managed* entry, NTF_EXT_MANAGED,
//! Linux 5.16+: resolved at once, re-verified before it goes stale, never garbage-collected), and
//! follows the table through RTM_NEWNEIGH / RTM_DELNEIGH notifications, so a MAC that changes
//! reaches the maps as soon as the kernel learns it, without polling.
//!
//! XDP-forwarded traffic never passes through the kernel's neighbour code, so without managed
//! entries nothing would re-verify an entry once it went stale. On a kernel without them the
//! resolver falls back to soliciting: one UDP datagram towards the target makes the kernel
//! resolve it (stale targets too, which makes the kernel probe them). Unresolved targets are
//! solicited in both modes, at most once a second, so a backend that appears is found at once.
//! A slow re-read of the table (every 30 s, and after the kernel says notifications were lost)
//! keeps the view right whatever happens to notifications.

mod solicit;
mod table;
#[cfg(test)]
mod tests;
mod tracker;

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use futures_util::StreamExt as _;
use rtnetlink::MulticastGroup;
use tokio::{sync::watch, task::AbortHandle, time::MissedTickBehavior};

pub use solicit::solicit;
pub use table::{ManageError, Neighbor, PROTOCOL, dump, is_usable, manage, release};

use crate::sources::netlink;
use tracker::Tracker;

/// MACs of the targets that have one, by target address.
pub type MacMap = BTreeMap<IpAddr, [u8; 6]>;

/// Addresses to resolve, each with the interface it is on-link on.
pub type Targets = BTreeMap<IpAddr, String>;

/// How often unresolved targets are solicited and warnings looked at.
const PERIOD: Duration = Duration::from_secs(1);

/// How the resolver works; the defaults are the product's, the others are for tests.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Ask for managed entries (falls back to soliciting where the kernel refuses them).
    pub managed: bool,
    /// How often the whole table is read again besides the notifications.
    pub reread: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { managed: true, reread: Duration::from_secs(30) }
    }
}

/// Keeps the MACs of a set of target addresses, each on its interface, current, and publishes
/// them on a `watch` channel that changes only when a MAC is learned, changes or is lost.
///
/// Targets must be on-link on their interface (dsr-l2 backends, the dsr-ipip gateway): the kernel
/// resolves the next hop towards an address, and the table is keyed by that next hop. Entries
/// set by the operator (permanent, noarp) are used as they are and never touched. Managed entries
/// xlb made (marked with protocol [`PROTOCOL`]) are removed when their target leaves the
/// configuration, and left in place when the agent stops, so a restarted agent finds them
/// resolved.
///
/// Dropping the resolver stops its task; receivers keep the last map and see the channel close.
#[derive(Debug)]
pub struct Resolver {
    targets: watch::Sender<Targets>,
    task: AbortHandle,
}

impl Resolver {
    /// Starts resolving `targets`. Must be called within a tokio runtime. The receiver starts
    /// with an empty map and is woken only when the map changes.
    pub fn start(targets: Targets) -> (Resolver, watch::Receiver<MacMap>) {
        Resolver::start_with(targets, Options::default())
    }

    pub fn start_with(targets: Targets, options: Options) -> (Resolver, watch::Receiver<MacMap>) {
        let (macs_tx, macs_rx) = watch::channel(MacMap::new());
        let (targets_tx, targets_rx) = watch::channel(targets.clone());
        let mut tracker = Tracker::new(macs_tx, options.managed);
        tracker.set_targets(targets, std::time::Instant::now());
        let task = tokio::spawn(run(tracker, targets_rx, options)).abort_handle();
        (Resolver { targets: targets_tx, task }, macs_rx)
    }

    /// Resolves `targets` from now on (a reload). Removed targets leave the published map at
    /// once; targets kept keep their MAC without a gap.
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

async fn run(mut tracker: Tracker, mut targets: watch::Receiver<Targets>, options: Options) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Soliciting and warnings run on the tick and after a change of targets, not per notification.
    let mut periodic = true;
    'connect: loop {
        let (handle, mut notifications) = match netlink::subscribe(&[MulticastGroup::Neigh]) {
            Ok(connection) => connection,
            Err(e) => {
                tracker.note_error(format!("cannot open a netlink socket for the neighbour table: {e}"));
                tokio::time::sleep(PERIOD).await;
                continue;
            }
        };
        let mut reread_at = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= reread_at || tracker.reread_wanted() {
                reread_at = now + options.reread;
                match dump(&handle).await {
                    Ok(entries) => tracker.set_entries(entries),
                    Err(e) => tracker.note_error(format!("{e}; keeping the last known MACs")),
                }
            }
            tracker.manage(&handle).await;
            let usable = tracker.publish();
            if std::mem::take(&mut periodic) {
                tracker.solicit_and_warn(&usable, now.into_std());
            }
            tokio::select! {
                _ = tick.tick() => periodic = true,
                () = tokio::time::sleep_until(reread_at) => {}
                notification = notifications.next() => match notification {
                    Some((message, _)) => tracker.notified(message),
                    None => {
                        tracker.note_error("the netlink connection closed; reopening it".to_owned());
                        continue 'connect;
                    }
                },
                changed = targets.changed() => {
                    let changed: Result<(), watch::error::RecvError> = changed;
                    if changed.is_err() {
                        return; // the Resolver is gone
                    }
                    let now = std::time::Instant::now();
                    tracker.set_targets(targets.borrow_and_update().clone(), now);
                    tracker.release_dropped(&handle).await;
                    periodic = true;
                }
            }
        }
    }
}
