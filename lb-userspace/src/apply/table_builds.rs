//! Maglev tables for the reconciler's steps: built on every CPU, and for the next step while this
//! one writes its backends and waits on its table swap (the kernel's RCU grace period), so a pass
//! that rebuilds thousands of tables pays the builds and the waits side by side.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use tokio::sync::watch;

use lb_common::VipKey;

use crate::state::{
    desired::DesiredVip,
    maglev::{self, MaglevError, Member},
};

pub type Built = Result<maglev::Table, MaglevError>;

/// What a VIP's table is built from: its size and its backends' identities and weights, in
/// configuration order (the table indexes into them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInput {
    size: u32,
    members: Vec<(String, u32)>,
}

impl TableInput {
    pub fn of(vip: &DesiredVip) -> Self {
        Self { size: vip.table_size, members: members(vip).map(|(id, w)| (id.to_owned(), w)).collect() }
    }

    /// Whether `vip`'s table would be built from this very input.
    fn matches(&self, vip: &DesiredVip) -> bool {
        self.size == vip.table_size && self.members.iter().map(|(id, w)| (id.as_str(), *w)).eq(members(vip))
    }

    fn build(&self) -> Built {
        build_from(self.members.iter().map(|(id, w)| (id.as_str(), *w)), self.size)
    }
}

/// What of a VIP's backends its table depends on: identities and (effective) weights, in
/// configuration order.
fn members(vip: &DesiredVip) -> impl Iterator<Item = (&str, u32)> {
    vip.backends.iter().map(|b| (b.identity.as_str(), b.weight))
}

fn build_from<'a>(members: impl Iterator<Item = (&'a str, u32)>, size: u32) -> Built {
    let members: Vec<Member<'_>> = members.map(|(identity, weight)| Member { identity, weight }).collect();
    maglev::build(&members, size)
}

/// The VIP's table, as indexes into `vip.backends` (empty when no backend has weight).
pub fn build_one(vip: &DesiredVip) -> Built {
    build_from(members(vip), vip.table_size)
}

/// Whether going from `old` to `new` changes the VIP's Maglev table: its size, or its backends
/// and their (effective) weights.
pub fn table_changes(old: &DesiredVip, new: &DesiredVip) -> bool {
    old.table_size != new.table_size || !members(old).eq(members(new))
}

/// Tables built for VIPs, with what each was built from.
type Batch = Vec<(VipKey, TableInput, Built)>;

/// The tables of `vips`, by key: taken from `ready` where it was built from the same input,
/// the rest built now on every CPU.
pub fn build_tables(vips: &[(&VipKey, &DesiredVip)], ready: Batch) -> BTreeMap<VipKey, Built> {
    let mut ready: BTreeMap<VipKey, (TableInput, Built)> =
        ready.into_iter().map(|(key, input, built)| (key, (input, built))).collect();
    let mut tables = BTreeMap::new();
    let mut missing = Vec::new();
    for &(key, vip) in vips {
        match ready.remove(key) {
            Some((input, built)) if input.matches(vip) => {
                tables.insert(*key, built);
            }
            _ => missing.push((*key, TableInput::of(vip))),
        }
    }
    tables.extend(build_all(missing, &AtomicBool::new(false)).into_iter().map(|(key, _, built)| (key, built)));
    tables
}

/// Builds on every CPU (the builds are independent and a reload may rebuild thousands); with
/// `cancel` set, each thread stops at its next table (what it built is returned).
fn build_all(inputs: Vec<(VipKey, TableInput)>, cancel: &AtomicBool) -> Batch {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).min(inputs.len().max(1));
    let build = |part: Vec<(VipKey, TableInput)>| -> Batch {
        part.into_iter()
            .take_while(|_| !cancel.load(Ordering::Relaxed))
            .map(|(key, input)| {
                let built = input.build();
                (key, input, built)
            })
            .collect()
    };
    if threads <= 1 {
        return build(inputs);
    }
    let chunk = inputs.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut inputs = inputs.into_iter();
    loop {
        let part: Vec<_> = inputs.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = parts.into_iter().map(|part| scope.spawn(move || build(part))).collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    })
}

/// Tables being built ahead of the step that will swap them in, on a thread of its own.
/// Dropped unfinished (desired state moved on), it stops at its next table.
#[derive(Debug)]
pub struct AheadBuild {
    keys: BTreeSet<VipKey>,
    worker: Option<JoinHandle<Batch>>,
    done: BuildDone,
    cancel: Arc<AtomicBool>,
}

/// Resolves once a build ahead has finished (or its thread died).
#[derive(Debug, Clone)]
pub struct BuildDone(watch::Receiver<bool>);

impl BuildDone {
    pub async fn finished(&mut self) {
        // An error means the builder's thread is gone: nothing more to wait for.
        let _ = self.0.wait_for(|done| *done).await;
    }
}

impl AheadBuild {
    /// Starts building the tables of `vips`; `None` when there is nothing to build or no thread
    /// to build it on (the step then builds them itself).
    pub fn start(vips: &[(&VipKey, &DesiredVip)]) -> Option<Self> {
        if vips.is_empty() {
            return None;
        }
        let inputs: Vec<(VipKey, TableInput)> = vips.iter().map(|(key, vip)| (**key, TableInput::of(vip))).collect();
        let keys = inputs.iter().map(|(key, _)| *key).collect();
        let (done_tx, done_rx) = watch::channel(false);
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        let worker = std::thread::Builder::new()
            .name("xlb-maglev".into())
            .spawn(move || {
                let batch = build_all(inputs, &stop);
                let _ = done_tx.send(true);
                batch
            })
            .ok()?;
        Some(Self { keys, worker: Some(worker), done: BuildDone(done_rx), cancel })
    }

    /// Whether a step that rebuilds `vips` needs any of these tables.
    pub fn builds_any(&self, vips: &[(&VipKey, &DesiredVip)]) -> bool {
        vips.iter().any(|(key, _)| self.keys.contains(key))
    }

    /// What waits for the builds to finish without taking them.
    pub fn done(&self) -> BuildDone {
        self.done.clone()
    }

    /// The builds, waited for. A worker that died yields none: the step builds them again.
    pub fn finish(mut self) -> Batch {
        self.worker.take().map(|worker| worker.join().unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for AheadBuild {
    fn drop(&mut self) {
        // Unfinished and no longer wanted: its thread stops at the next table.
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::DesiredBackend;

    fn vip(size: u32, backends: &[(&str, u32)]) -> DesiredVip {
        DesiredVip {
            name: "v".into(),
            endpoint: "192.0.2.1:80/tcp".into(),
            ports: (80, 80),
            flags: 0,
            backend_flags: 0,
            table_size: size,
            backends: backends
                .iter()
                .map(|(identity, weight)| DesiredBackend {
                    identity: (*identity).into(),
                    addr: [0; 4],
                    family: 4,
                    mac: [0; 6],
                    weight: *weight,
                    configured_weight: *weight,
                    file_weight: None,
                    up: true,
                    drained: false,
                    mac_known: true,
                    port: 0,
                    egress: 0,
                })
                .collect(),
            min_healthy: 0,
            panic_threshold: 0,
            panic: false,
            pool: 0,
        }
    }

    fn key(n: u32) -> VipKey {
        VipKey::v4(n, 80, 6)
    }

    #[test]
    fn tables_built_ahead_are_used_only_while_their_input_holds() {
        let (a, b) = (key(1), key(2));
        let before = [vip(251, &[("10.0.0.1", 1), ("10.0.0.2", 1)]), vip(251, &[("10.0.0.3", 1), ("10.0.0.4", 1)])];
        let ahead = AheadBuild::start(&[(&a, &before[0]), (&b, &before[1])]).expect("a builder thread");
        // b's backends change (a weight) before the step that swaps them in.
        let now = [before[0].clone(), vip(251, &[("10.0.0.3", 1), ("10.0.0.4", 3)])];
        assert!(ahead.builds_any(&[(&a, &now[0])]));
        let mut ready = ahead.finish();
        // Mark what was built ahead, to see which of it is used.
        let marked = |n: u32| Ok(maglev::Table { slots: vec![n] });
        for (k, _, built) in &mut ready {
            *built = marked(k.addr[0]);
        }
        let tables = build_tables(&[(&a, &now[0]), (&b, &now[1])], ready);
        assert_eq!(tables[&a], marked(1), "a's backends held: its table built ahead is used");
        assert_eq!(tables[&b], build_one(&now[1]), "b's table follows its new weights");
        assert_ne!(tables[&b], build_one(&before[1]));
    }

    #[test]
    fn a_cancelled_build_stops_before_its_next_table() {
        let inputs: Vec<(VipKey, TableInput)> =
            (0..64).map(|i| (key(i), TableInput::of(&vip(65537, &[("10.0.0.1", 1), ("10.0.0.2", 1)])))).collect();
        assert!(build_all(inputs.clone(), &AtomicBool::new(true)).is_empty());
        assert_eq!(build_all(inputs, &AtomicBool::new(false)).len(), 64);
    }

    #[test]
    fn parallel_builds_equal_one_by_one_builds_and_errors_stay_with_their_vip() {
        let keys: Vec<VipKey> = (0..9).map(key).collect();
        let vips: Vec<DesiredVip> =
            (0..9)
                .map(|i| {
                    if i == 4 {
                        vip(250, &[("10.0.0.1", 1)])
                    } else {
                        vip(251, &[("10.0.0.1", 1), ("10.0.1.1", i + 1)])
                    }
                })
                .collect();
        let pairs: Vec<(&VipKey, &DesiredVip)> = keys.iter().zip(&vips).collect();
        let tables = build_tables(&pairs, Vec::new());
        for (key, vip) in &pairs {
            assert_eq!(tables[*key], build_one(vip));
        }
        assert_eq!(tables[&keys[4]], Err(MaglevError::NotPrime(250)));
    }
}
