//! The resolver's view: the targets, what the kernel's table holds for them, which are managed,
//! and what to publish, solicit and warn about.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use rtnetlink::{
    Handle,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
};
use tokio::sync::watch;

use super::{MacMap, ManageError, Neighbor, PERIOD, Targets, is_usable, manage, release, solicit};
use crate::sources::netlink::ifindex;

/// A target unresolved for longer than this is logged as a warning (once per episode).
const UNRESOLVED_WARN: Duration = Duration::from_secs(5);

/// Whether the kernel keeps a target resolved by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Managed {
    /// To be asked for (again: the entry was removed).
    Pending,
    /// The kernel keeps it.
    Yes,
    /// An entry the operator set (permanent, noarp): used as it is.
    Static,
    /// Not available (old kernel) or refused: solicited instead.
    No,
}

#[derive(Debug)]
pub(super) struct Target {
    /// The interface it is on-link on.
    pub(super) iface: String,
    /// The interface's index, read when the target is set and at each full read of the table
    /// (an interface recreated gets a new one).
    index: Option<u32>,
    pub(super) managed: Managed,
    /// Since when the target has had no usable entry (`None` while it has one).
    unresolved_since: Option<Instant>,
    /// Whether the warning about this unresolved episode was logged.
    warned: bool,
    last_solicit: Option<Instant>,
    /// The last error about this target, logged once until it changes or clears.
    error: Option<String>,
}

#[derive(Debug)]
pub(super) struct Tracker {
    pub(super) targets: BTreeMap<IpAddr, Target>,
    /// What the table holds for target addresses, on any interface.
    pub(super) entries: BTreeMap<(u32, IpAddr), Neighbor>,
    /// Entries of targets that left, to remove if they are xlb's managed ones.
    pub(super) dropped: Vec<Neighbor>,
    macs: watch::Sender<MacMap>,
    /// Whether managed entries are asked for (cleared for good when the kernel refuses them).
    managed: bool,
    reread: bool,
    /// The last general error, logged once until it changes or clears.
    last_error: Option<String>,
}

impl Tracker {
    pub(super) fn new(macs: watch::Sender<MacMap>, managed: bool) -> Tracker {
        Tracker {
            targets: BTreeMap::new(),
            entries: BTreeMap::new(),
            dropped: Vec::new(),
            macs,
            managed,
            reread: false,
            last_error: None,
        }
    }

    pub(super) fn set_targets(&mut self, targets: Targets, now: Instant) {
        // A target that moved to another interface starts over.
        let before = std::mem::take(&mut self.targets);
        for (addr, target) in before {
            if targets.get(&addr) == Some(&target.iface) {
                self.targets.insert(addr, target);
            }
        }
        let gone: Vec<(u32, IpAddr)> = self
            .entries
            .keys()
            .filter(|(index, addr)| !self.targets.get(addr).is_some_and(|t| t.index == Some(*index)))
            .copied()
            .collect();
        for key in gone {
            if let Some(entry) = self.entries.remove(&key)
                && entry.managed
                && entry.ours
            {
                self.dropped.push(entry);
            }
        }
        for (addr, iface) in targets {
            self.targets.entry(addr).or_insert_with(|| Target {
                index: ifindex(&iface).ok(),
                iface,
                managed: Managed::Pending,
                unresolved_since: Some(now),
                warned: false,
                last_solicit: None,
                error: None,
            });
        }
        // New targets' entries may predate the subscription's view of them.
        self.reread = true;
    }

    pub(super) fn reread_wanted(&self) -> bool {
        self.reread
    }

    /// Replaces the view with a full read of the table.
    pub(super) fn set_entries(&mut self, entries: Vec<Neighbor>) {
        self.reread = false;
        if let Some(error) = self.last_error.take() {
            tracing::info!(%error, "neighbour table readable again");
        }
        self.entries = entries
            .into_iter()
            .filter(|n| self.targets.contains_key(&n.addr))
            .map(|n| ((n.ifindex, n.addr), n))
            .collect();
        for (addr, target) in &mut self.targets {
            target.index = ifindex(&target.iface).ok();
            let entry = target.index.and_then(|index| self.entries.get(&(index, *addr)));
            target.managed = match (target.managed, entry) {
                (Managed::No, _) => Managed::No,
                (_, Some(n)) if n.is_static() => Managed::Static,
                (_, Some(n)) if n.managed => Managed::Yes,
                // Removed or replaced behind xlb's back (`ip neigh flush`, an operator's entry
                // deleted): ask again.
                _ => Managed::Pending,
            };
        }
    }

    /// One notification: an entry of a target changed or went, or some notifications were lost.
    pub(super) fn notified(&mut self, message: NetlinkMessage<RouteNetlinkMessage>) {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => {
                if let Some(n) = Neighbor::from_message(&m)
                    && let Some(target) = self.targets.get_mut(&n.addr)
                {
                    if n.is_static() {
                        target.managed = Managed::Static;
                    } else if n.managed {
                        target.managed = Managed::Yes;
                    } else if target.managed != Managed::No {
                        target.managed = Managed::Pending;
                    }
                    self.entries.insert((n.ifindex, n.addr), n);
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(m)) => {
                if let Some(n) = Neighbor::from_message(&m)
                    && self.entries.remove(&(n.ifindex, n.addr)).is_some()
                    && let Some(target) = self.targets.get_mut(&n.addr)
                    && target.managed != Managed::No
                {
                    target.managed = Managed::Pending;
                }
            }
            NetlinkPayload::Overrun(_) => {
                tracing::debug!("neighbour notifications were lost; reading the table again");
                self.reread = true;
            }
            _ => {}
        }
    }

    /// Asks the kernel to manage every target that should be and is not yet.
    pub(super) async fn manage(&mut self, handle: &Handle) {
        if !self.managed {
            return;
        }
        for (addr, target) in &mut self.targets {
            if target.managed != Managed::Pending {
                continue;
            }
            let index = match target.index {
                Some(index) => index,
                None => match ifindex(&target.iface) {
                    Ok(index) => *target.index.insert(index),
                    Err(e) => {
                        note(&mut target.error, &target.iface, *addr, e.to_string());
                        continue;
                    }
                },
            };
            match manage(handle, index, *addr).await {
                Ok(()) => {
                    target.managed = Managed::Yes;
                    target.error = None;
                }
                Err(ManageError::Unsupported(e)) => {
                    tracing::warn!(error = %e, "the kernel keeps no managed neighbour entries; soliciting targets instead");
                    self.managed = false;
                    for target in self.targets.values_mut() {
                        target.managed = Managed::No;
                    }
                    return;
                }
                Err(ManageError::Failed(e)) => note(&mut target.error, &target.iface, *addr, e.to_string()),
            }
        }
    }

    /// Removes xlb's managed entries of targets that left.
    pub(super) async fn release_dropped(&mut self, handle: &Handle) {
        for entry in std::mem::take(&mut self.dropped) {
            if let Err(e) = release(handle, entry.ifindex, entry.addr).await {
                tracing::warn!(addr = %entry.addr, error = %e, "cannot remove the managed neighbour entry of a dropped target");
            }
        }
    }

    /// MAC and state of each target with a usable entry on its interface. All-zero MACs (some
    /// NOARP devices) are not usable for forwarding.
    pub(super) fn usable(&self) -> BTreeMap<IpAddr, ([u8; 6], u16)> {
        self.targets
            .iter()
            .filter_map(|(addr, target)| {
                let n = self.entries.get(&(target.index?, *addr))?;
                let mac = n.mac.filter(|mac| *mac != [0; 6])?;
                is_usable(n.state).then_some((*addr, (mac, n.state)))
            })
            .collect()
    }

    /// Publishes the usable MACs if they differ from the current map, logging what changed;
    /// returns the usable entries (for `solicit_and_warn`, in the same pass).
    pub(super) fn publish(&self) -> BTreeMap<IpAddr, ([u8; 6], u16)> {
        let usable = self.usable();
        let macs: MacMap = usable.iter().map(|(addr, (mac, _))| (*addr, *mac)).collect();
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
                    tracing::info!(iface = iface(addr), %addr, old = %format_mac(old), "neighbour MAC lost; resolving");
                }
            }
            *current = macs;
            true
        });
        usable
    }

    /// Solicits targets without a usable entry (and, when the kernel does not manage them, stale
    /// ones, so that it re-verifies them), each at most once a `PERIOD`; warns about targets
    /// unresolved for long. `usable`: what `publish` found in this pass.
    pub(super) fn solicit_and_warn(&mut self, usable: &BTreeMap<IpAddr, ([u8; 6], u16)>, now: Instant) {
        for (addr, target) in &mut self.targets {
            let iface = target.iface.as_str();
            let (resolved, stale) = match usable.get(addr) {
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
            let reverify = stale && matches!(target.managed, Managed::No | Managed::Pending);
            if (resolved && !reverify)
                || target.managed == Managed::Static
                || target.last_solicit.is_some_and(|last| now.saturating_duration_since(last) < PERIOD)
            {
                continue;
            }
            target.last_solicit = Some(now);
            match solicit(iface, *addr) {
                Ok(()) => target.error = None,
                Err(e) => note(&mut target.error, iface, *addr, e.to_string()),
            }
        }
    }

    /// Logs a general error once until it changes.
    pub(super) fn note_error(&mut self, error: String) {
        if self.last_error.as_ref() != Some(&error) {
            tracing::warn!(%error, "neighbour resolution");
            self.last_error = Some(error);
        }
    }
}

/// Logs an error about one target once until it changes or clears.
fn note(last: &mut Option<String>, iface: &str, addr: IpAddr, error: String) {
    if last.as_ref() != Some(&error) {
        tracing::warn!(iface, %addr, %error, "neighbour resolution");
        *last = Some(error);
    }
}

pub(super) fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
