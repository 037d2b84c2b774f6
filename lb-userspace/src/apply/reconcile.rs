//! The one writer of the data plane's maps: desired state in, minimal map writes out.
//!
//! It remembers what it last wrote, so a reload touches only what changed: a VIP keeps its id
//! (counter slot, table slot) and each of its backends keeps its slot for as long as it is
//! configured, so established flows stay where they are. Maglev tables are rebuilt only when a
//! VIP's backend set, weights or table size change, and swapped in whole.
//!
//! Write order keeps every packet's view consistent: backends before the table that names
//! them, the table before the VIP that uses it, and retirement of backends (generation bump,
//! so their flows re-hash) after the new table is in.

use std::collections::BTreeMap;

use lb_common::{
    BACKEND_FLAG_ACTIVE, Backend, BackendCounters, Iface, MAX_BACKENDS, MAX_IFACES, MAX_VIPS, NatPool, NodeConfig,
    VipAddrKey, VipAddrPolicy, VipKey, VipMeta,
};

use crate::{
    apply::dataplane::{DataplaneError, Maps},
    apply::pass::Pass,
    apply::table_builds::{self, Built, table_changes},
    config::{backend_identities, endpoint, ip_from_words},
    state::desired::{DesiredBackend, DesiredState, DesiredVip},
    state::maglev::{self, MaglevError},
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("more than {MAX_VIPS} VIPs; remove some from the configuration")]
    TooManyVips,
    #[error("more than {MAX_BACKENDS} backends over all VIPs; remove some from the configuration")]
    TooManyBackends,
    #[error("VIP {endpoint}: {source}")]
    Maglev { endpoint: String, source: MaglevError },
    #[error("VIP {endpoint}: writing the data plane failed: {source}")]
    Write { endpoint: String, source: Box<DataplaneError> },
    #[error("writing the node settings failed: {0}")]
    Node(Box<DataplaneError>),
}

/// A VIP as written to the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedVip {
    pub meta: VipMeta,
    pub vip: DesiredVip,
    /// Backend slot of `vip.backends[i]`.
    pub slots: Vec<u32>,
    /// Generation of each of `slots` (fixed while the slot serves this backend): a
    /// connection-table entry of the slot with another one is stale.
    pub generations: Vec<u32>,
    /// What backends removed from this VIP had counted (the VIP's totals keep it).
    pub retired: BackendCounters,
}

/// VIPs one step writes at most: bounds how long a step holds back a health change (a step's
/// Maglev builds, map writes and its one RCU wait), while a full reload still pays that wait
/// only once per this many VIPs.
pub const STEP_VIPS: usize = 256;

/// What one step did, and how many differing VIPs it left for the next.
#[derive(Debug, Default)]
pub struct Step {
    pub changes: Changes,
    pub remaining: usize,
}

/// Tables to swap in one batch (VIP id → backend slots, empty to clear) and the slots to retire
/// once they are in.
#[derive(Debug, Default)]
struct TableBatch {
    tables: BTreeMap<u32, Vec<u32>>,
    retire: Vec<u32>,
}

impl TableBatch {
    /// Puts VIP `id`'s table, built over `slots`, into the batch; returns its size (0 when no
    /// backend has weight, which the data plane treats as "no backend").
    fn put(&mut self, id: u32, vip: &DesiredVip, table: Option<&Built>, slots: &[u32]) -> Result<u32, ReconcileError> {
        let built;
        let table = match table {
            Some(Ok(table)) => table,
            Some(Err(source)) => {
                return Err(ReconcileError::Maglev { endpoint: vip.endpoint.clone(), source: source.clone() });
            }
            None => {
                built = build_table(vip)?;
                &built
            }
        };
        let global: Vec<u32> = table.slots.iter().map(|&i| slots[i as usize]).collect();
        let size = if global.is_empty() { 0 } else { vip.table_size };
        self.tables.insert(id, global);
        Ok(size)
    }
}

/// A VIP written up to its table, waiting for the batch.
#[derive(Debug)]
struct Staged {
    key: VipKey,
    vip: DesiredVip,
    meta: VipMeta,
    slots: Vec<u32>,
    /// Slots claimed for it in this step.
    fresh: Vec<u32>,
    /// Indexes into the old record's backends that it dropped.
    gone: Vec<usize>,
}

/// What one reconcile pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: usize,
    /// VIPs whose Maglev table was rebuilt and swapped.
    pub tables_rebuilt: usize,
}

#[derive(Debug)]
pub struct Reconciler {
    node: Option<NodeConfig>,
    vips: BTreeMap<VipKey, AppliedVip>,
    addrs: BTreeMap<VipAddrKey, VipAddrPolicy>,
    /// Pre-filter buckets and their bits.
    filter: BTreeMap<u32, u32>,
    /// NAT pools by id.
    pools: BTreeMap<u32, NatPool>,
    /// `maps::IFACES` from index 1, as written; `None` until the first pass, which writes every
    /// slot (a pinned map may hold a previous agent's interfaces).
    ifaces: Option<Vec<Iface>>,
    /// Slots no VIP uses any more that are still to be marked retired in the map. A slot leaves
    /// its VIP's record when it is queued here, so a failed pass retries it next time and never
    /// retires it twice (by then it may belong to another backend).
    to_retire: Vec<u32>,
    free_slots: Vec<u32>,
    /// Generation of every backend slot; bumped when a slot is retired or handed out again.
    generations: Vec<u32>,
    sources: super::sources::SourceSync,
    syn_cookies: super::syn_cookies::SynCookieSync,
}

impl Default for Reconciler {
    fn default() -> Self {
        Self {
            node: None,
            vips: BTreeMap::new(),
            addrs: BTreeMap::new(),
            filter: BTreeMap::new(),
            pools: BTreeMap::new(),
            ifaces: None,
            to_retire: Vec::new(),
            // Pop from the end: lowest slots first.
            free_slots: (0..MAX_BACKENDS).rev().collect(),
            generations: vec![0; MAX_BACKENDS as usize],
            sources: super::sources::SourceSync::default(),
            syn_cookies: super::syn_cookies::SynCookieSync::default(),
        }
    }
}

impl Changes {
    /// After the last step: the desired VIPs no step had to write.
    pub fn count_unchanged(&mut self, desired: &DesiredState) {
        self.unchanged = desired.vips.len().saturating_sub(self.added.len() + self.updated.len());
    }

    /// Adds one step's changes to a pass's.
    pub fn absorb(&mut self, step: Changes) {
        self.added.extend(step.added);
        self.removed.extend(step.removed);
        self.updated.extend(step.updated);
        self.tables_rebuilt += step.tables_rebuilt;
    }
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes over maps a previous agent filled (pinned, and still serving): VIP ids, backend
    /// slots and their generations are kept exactly, so the connection table's entries stay
    /// valid. What the maps do not record (VIP names, weights) is left unknown; the first
    /// `apply` fills it in, rebuilding each table — Maglev is deterministic, so an unchanged
    /// configuration yields the very same tables. Counters of backends removed before the
    /// restart are no longer part of their VIP's totals.
    pub fn adopt(maps: &Maps) -> Result<Self, DataplaneError> {
        let mut this =
            Self { node: Some(maps.node()?), addrs: maps.vip_addrs()?.into_iter().collect(), ..Self::default() };
        this.filter = maps.filter_buckets()?.into_iter().collect();
        this.pools = maps.nat_pools()?.into_iter().collect();
        this.sources = super::sources::SourceSync::adopt(maps)?;
        this.syn_cookies = super::syn_cookies::SynCookieSync::adopt(maps)?;
        let mut by_vip: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        this.free_slots.clear();
        let backends = maps.backends()?;
        for slot in (0..MAX_BACKENDS).rev() {
            let backend = backends[slot as usize];
            this.generations[slot as usize] = backend.generation;
            if backend.flags & BACKEND_FLAG_ACTIVE != 0 {
                by_vip.entry(backend.vip_id).or_default().push((slot, backend));
            } else {
                this.free_slots.push(slot);
            }
        }
        for (key, meta) in maps.vips()? {
            let mut members = by_vip.remove(&meta.id).unwrap_or_default();
            members.sort_by_key(|(slot, _)| *slot);
            let backend_flags = members.first().map_or(0, |(_, b)| b.flags & !BACKEND_FLAG_ACTIVE);
            // Named as the config names them, from what the slots hold (a port of its own is
            // the only thing that tells two entries of one address apart).
            let identities = backend_identities(
                members
                    .iter()
                    .map(|(_, b)| (ip_from_words(b.addr, b.family), (b.port != 0).then(|| u16::from_be(b.port)))),
            );
            let backends = members
                .iter()
                .zip(identities)
                .map(|((_, b), identity)| DesiredBackend {
                    identity,
                    addr: b.addr,
                    family: b.family,
                    mac: b.mac,
                    // Unknown: differs from every configured weight, so the first pass rebuilds.
                    weight: u32::MAX,
                    configured_weight: u32::MAX,
                    file_weight: None,
                    up: true,
                    drained: false,
                    mac_known: true,
                    port: b.port,
                    egress: b.egress,
                })
                .collect();
            let vip = DesiredVip {
                name: String::new(),
                endpoint: endpoint(&key, meta.port_first, meta.port_last),
                ports: (meta.port_first, meta.port_last),
                flags: meta.flags,
                backend_flags,
                table_size: meta.table_size,
                backends,
                min_healthy: 0,
                panic_threshold: 0,
                panic: false,
                pool: meta.pool,
            };
            let slots = members.iter().map(|(slot, _)| *slot).collect();
            let generations = members.iter().map(|(_, b)| b.generation).collect();
            this.vips.insert(key, AppliedVip { meta, vip, slots, generations, retired: BackendCounters::default() });
        }
        // Live slots of a VIP that is gone (the previous agent died between writes): retire them.
        this.to_retire.extend(by_vip.into_values().flatten().map(|(slot, _)| slot));
        Ok(this)
    }

    /// What is in the maps now, by key.
    pub fn applied(&self) -> &BTreeMap<VipKey, AppliedVip> {
        &self.vips
    }

    /// The node settings last written.
    pub fn node(&self) -> Option<NodeConfig> {
        self.node
    }

    /// The address policies last written.
    pub fn addrs(&self) -> &BTreeMap<VipAddrKey, VipAddrPolicy> {
        &self.addrs
    }

    /// Brings the maps to `desired`, in steps of at most `STEP_VIPS` VIPs. On error the maps
    /// hold a mix of old and new entries and `applied()` says exactly which; the next call
    /// converges.
    pub fn apply(&mut self, desired: &DesiredState, maps: &mut Maps) -> Result<Changes, ReconcileError> {
        let mut changes = Changes::default();
        let mut pass = Pass::new();
        loop {
            let step = self.apply_step(desired, &mut pass, maps, STEP_VIPS)?;
            changes.absorb(step.changes);
            if step.remaining == 0 {
                break;
            }
        }
        changes.count_unchanged(desired);
        Ok(changes)
    }

    /// One step of `pass` toward `desired`: node settings, addresses, pools and interfaces;
    /// every VIP that is gone; then at most `budget` of the VIPs that differ — those losing a
    /// serving backend first, so a health failure is never queued behind a big reload. Their
    /// Maglev tables are built in parallel (most of them while the step before waited) and
    /// swapped in one batch (one RCU wait for the step), while the next step's are built.
    pub fn apply_step(
        &mut self,
        desired: &DesiredState,
        pass: &mut Pass,
        maps: &mut Maps,
        budget: usize,
    ) -> Result<Step, ReconcileError> {
        let mut changes = Changes::default();
        if self.node != Some(desired.node) {
            maps.set_node(&desired.node).map_err(|e| ReconcileError::Node(Box::new(e)))?;
            self.node = Some(desired.node);
        }

        // Addresses and pools first: a new VIP's pre-filter bucket and pool are in place before
        // its VIP entry appears.
        self.sync_addrs(desired, maps)?;
        self.sync_pools(&desired.pools, maps)?;
        self.sync_ifaces(&desired.ifaces, maps)?;

        // What an earlier, failed step left to retire.
        self.retire_queued(maps)
            .map_err(|e| ReconcileError::Write { endpoint: "retired backends".into(), source: Box::new(e) })?;

        let mut batch = TableBatch::default();
        let stale: Vec<VipKey> = self.vips.keys().filter(|k| !desired.vips.contains_key(k)).copied().collect();
        for key in stale {
            let applied = &self.vips[&key];
            let endpoint = applied.vip.endpoint.clone();
            maps.remove_vip(&key).map_err(|source| ReconcileError::Write { endpoint, source: Box::new(source) })?;
            let applied = self.vips.remove(&key).expect("present");
            // Its table is emptied with the batch; its slots retire after it.
            batch.tables.insert(applied.meta.id, Vec::new());
            batch.retire.extend(&applied.slots);
            changes.removed.push(applied.vip.name);
        }

        let applied = &self.vips;
        let (pending, remaining, tables) = pass.next_step(&|key| applied.get(key).map(|a| &a.vip), desired, budget);

        // Backends first, tables into the batch; VIP entries wait for the batch.
        let mut free_ids = self.free_vip_ids();
        let mut staged = Vec::with_capacity(pending.len());
        let mut first_error = None;
        for (key, vip) in pending {
            let table = tables.get(key);
            let result = match self.vips.contains_key(key) {
                true => self.stage_update(key, vip, table, maps, &mut batch),
                false => self.stage_add(key, vip, table, &mut free_ids, maps, &mut batch),
            };
            match result {
                Ok(stage) => staged.push(stage),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }

        // One swap for every table of the step.
        let slots: Vec<(u32, &[u32])> = batch.tables.iter().map(|(id, slots)| (*id, slots.as_slice())).collect();
        if let Err(e) = maps.set_tables(&slots) {
            // No VIP entry was written for a new table: undo the step's claims; updated VIPs are
            // marked so the next step redoes them.
            for stage in staged {
                self.to_retire.extend(stage.fresh);
                if let Some(applied) = self.vips.get_mut(&stage.key) {
                    applied.vip.table_size = 0;
                }
            }
            self.to_retire.extend(batch.retire);
            return Err(ReconcileError::Write { endpoint: "Maglev tables".into(), source: Box::new(e) });
        }
        self.to_retire.extend(batch.retire);

        for stage in staged {
            match self.commit(stage, maps) {
                Ok((name, added, rebuilt)) => {
                    changes.tables_rebuilt += usize::from(rebuilt);
                    if added { changes.added.push(name) } else { changes.updated.push(name) }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.retire_queued(maps)
            .map_err(|e| ReconcileError::Write { endpoint: "retired backends".into(), source: Box::new(e) })?;
        // Source policies of the VIPs written so far (ids are known once a VIP is).
        self.sources
            .sync(&desired.sources, self.vips.iter().map(|(key, a)| (key, a.meta.id, a.slots.as_slice())), maps)
            .map_err(|e| ReconcileError::Write { endpoint: "source policy".into(), source: Box::new(e) })?;
        self.syn_cookies
            .sync(&desired.syn_cookie_rates, self.vips.iter().map(|(key, a)| (key, a.meta.id)), maps)
            .map_err(|e| ReconcileError::Write { endpoint: "SYN cookie meters".into(), source: Box::new(e) })?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(Step { changes, remaining }),
        }
    }

    /// Claims an id and backend slots for a new VIP and puts its table into the batch.
    fn stage_add(
        &mut self,
        key: &VipKey,
        vip: &DesiredVip,
        table: Option<&Built>,
        free_ids: &mut Vec<u32>,
        maps: &mut Maps,
        batch: &mut TableBatch,
    ) -> Result<Staged, ReconcileError> {
        let id = free_ids.pop().ok_or(ReconcileError::TooManyVips)?;
        let mut fresh = Vec::with_capacity(vip.backends.len());
        let claimed = (|| {
            let mut slots = Vec::with_capacity(vip.backends.len());
            for backend in &vip.backends {
                slots.push(self.take_slot(id, vip, backend, maps, &mut fresh)?);
            }
            let table_size = batch.put(id, vip, table, &slots)?;
            Ok::<_, ReconcileError>((slots, table_size))
        })();
        match claimed {
            Ok((slots, table_size)) => {
                let meta = VipMeta {
                    id,
                    flags: vip.flags,
                    table_size,
                    port_first: vip.ports.0,
                    port_last: vip.ports.1,
                    pool: vip.pool,
                };
                Ok(Staged { key: *key, vip: vip.clone(), meta, slots, fresh, gone: Vec::new() })
            }
            Err(e) => {
                free_ids.push(id);
                self.to_retire.extend(fresh);
                Err(e)
            }
        }
    }

    /// Rewrites a VIP's changed backends, claims slots for its new ones and, when its table
    /// changes, puts the new table into the batch. A table that shrinks has the VIP's size
    /// lowered first: index = hash % table_size must stay inside whichever table a packet sees.
    fn stage_update(
        &mut self,
        key: &VipKey,
        vip: &DesiredVip,
        table: Option<&Built>,
        maps: &mut Maps,
        batch: &mut TableBatch,
    ) -> Result<Staged, ReconcileError> {
        let write = |source| ReconcileError::Write { endpoint: vip.endpoint.clone(), source: Box::new(source) };
        let old = self.vips.get(key).expect("present").clone();
        let mut fresh = Vec::new();
        let staged = (|| {
            // Keep the slot of every backend that stays; new ones get fresh slots.
            let kept = kept_backends(&old.vip, vip);
            let mut slots = Vec::with_capacity(vip.backends.len());
            for (backend, kept) in vip.backends.iter().zip(&kept) {
                match *kept {
                    Some(i) => {
                        let slot = old.slots[i];
                        let was = &old.vip.backends[i];
                        if was.mac != backend.mac
                            || was.port != backend.port
                            || old.vip.backend_flags != vip.backend_flags
                        {
                            self.write_backend(slot, old.meta.id, backend, vip.backend_flags, maps).map_err(write)?;
                        }
                        slots.push(slot);
                    }
                    None => slots.push(self.take_slot(old.meta.id, vip, backend, maps, &mut fresh)?),
                }
            }
            let mut meta = VipMeta {
                id: old.meta.id,
                flags: vip.flags,
                table_size: old.meta.table_size,
                port_first: vip.ports.0,
                port_last: vip.ports.1,
                pool: vip.pool,
            };
            if table_changes(&old.vip, vip) {
                let new_size = batch.put(old.meta.id, vip, table, &slots)?;
                if new_size < old.meta.table_size {
                    let shrunk = VipMeta { table_size: new_size, ..old.meta };
                    maps.set_vip(key, &shrunk).map_err(write)?;
                    // The map now says the smaller size. If the swap fails, the record must say
                    // so too, and must differ from every desired state (no table size is 0), so
                    // the next step redoes the update even if the config went back.
                    if let Some(applied) = self.vips.get_mut(key) {
                        applied.meta.table_size = new_size;
                        applied.vip.table_size = 0;
                    }
                }
                meta.table_size = new_size;
            }
            let gone: Vec<usize> = (0..old.vip.backends.len()).filter(|i| !kept.contains(&Some(*i))).collect();
            Ok::<_, ReconcileError>((slots, meta, gone))
        })();
        match staged {
            Ok((slots, meta, gone)) => Ok(Staged { key: *key, vip: vip.clone(), meta, slots, fresh, gone }),
            Err(e) => {
                self.to_retire.extend(fresh);
                Err(e)
            }
        }
    }

    /// After the batch: the VIP entry (new, or with a size that grew or other settings), the
    /// record, and retirement of the backends it dropped (their flows re-hash).
    fn commit(&mut self, stage: Staged, maps: &mut Maps) -> Result<(String, bool, bool), ReconcileError> {
        let write = |source| ReconcileError::Write { endpoint: stage.vip.endpoint.clone(), source: Box::new(source) };
        let old = self.vips.get(&stage.key).cloned();
        if old.as_ref().is_none_or(|o| o.meta != stage.meta)
            && let Err(e) = maps.set_vip(&stage.key, &stage.meta)
        {
            match self.vips.get_mut(&stage.key) {
                Some(applied) => applied.vip.table_size = 0,
                None => self.to_retire.extend(&stage.fresh),
            }
            return Err(write(e));
        }
        let rebuilt = old.as_ref().is_none_or(|o| table_changes(&o.vip, &stage.vip));
        let mut retired = old.as_ref().map_or_else(BackendCounters::default, |o| o.retired);
        if let Some(old) = &old {
            for &i in &stage.gone {
                // Keep what it counted in the VIP's totals before the slot goes.
                retired = retired.plus(&maps.backend_counters(old.slots[i]).unwrap_or_default());
                self.to_retire.push(old.slots[i]);
            }
        }
        let name = stage.vip.name.clone();
        let generations =
            stage.slots.iter().map(|&slot| self.generations.get(slot as usize).copied().unwrap_or(0)).collect();
        self.vips.insert(
            stage.key,
            AppliedVip { meta: stage.meta, vip: stage.vip, slots: stage.slots, generations, retired },
        );
        Ok((name, old.is_none(), rebuilt))
    }

    /// Takes a slot for a new backend of `vip` and writes it live.
    fn take_slot(
        &mut self,
        vip_id: u32,
        vip: &DesiredVip,
        backend: &DesiredBackend,
        maps: &mut Maps,
        fresh: &mut Vec<u32>,
    ) -> Result<u32, ReconcileError> {
        let slot = self.free_slots.pop().ok_or(ReconcileError::TooManyBackends)?;
        fresh.push(slot);
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        maps.reset_backend_counters(slot)
            .and_then(|()| self.write_backend(slot, vip_id, backend, vip.backend_flags, maps))
            .map_err(|source| ReconcileError::Write { endpoint: vip.endpoint.clone(), source: Box::new(source) })?;
        Ok(slot)
    }

    /// Writes a live backend slot; it carries its VIP's mode, so an established flow is sent
    /// from its connection-table entry alone.
    fn write_backend(
        &self,
        slot: u32,
        vip_id: u32,
        backend: &DesiredBackend,
        flags: u8,
        maps: &mut Maps,
    ) -> Result<(), DataplaneError> {
        maps.set_backend(
            slot,
            &Backend {
                addr: backend.addr,
                mac: backend.mac,
                family: backend.family,
                flags: BACKEND_FLAG_ACTIVE | flags,
                generation: self.generations[slot as usize],
                vip_id,
                port: backend.port,
                egress: backend.egress,
            },
        )
    }

    /// Marks queued slots unused; flows still pointing at them see the generation change and
    /// re-hash. A slot returns to the free list only once the map says it is retired.
    fn retire_queued(&mut self, maps: &mut Maps) -> Result<(), DataplaneError> {
        while let Some(&slot) = self.to_retire.last() {
            let generation = self.generations[slot as usize].wrapping_add(1);
            maps.set_backend(slot, &Backend { generation, ..Default::default() })?;
            self.generations[slot as usize] = generation;
            self.to_retire.pop();
            self.free_slots.push(slot);
        }
        Ok(())
    }

    fn sync_addrs(&mut self, state: &DesiredState, maps: &mut Maps) -> Result<(), ReconcileError> {
        let desired = &state.addrs;
        let write = |source| ReconcileError::Write { endpoint: "address policy".into(), source: Box::new(source) };
        let stale: Vec<VipAddrKey> = self.addrs.keys().filter(|k| !desired.contains_key(k)).copied().collect();
        for key in stale {
            maps.remove_addr(&key).map_err(write)?;
            self.addrs.remove(&key);
        }
        for (key, policy) in desired {
            if self.addrs.get(key) != Some(policy) {
                maps.set_addr(key, policy).map_err(write)?;
                self.addrs.insert(*key, *policy);
            }
        }
        // The pre-filter follows the VIP, pool and DNAT backend addresses.
        for (&bucket, &bits) in &state.filter {
            if self.filter.get(&bucket) != Some(&bits) {
                maps.set_filter(bucket, bits).map_err(write)?;
                self.filter.insert(bucket, bits);
            }
        }
        let stale: Vec<u32> = self.filter.keys().filter(|b| !state.filter.contains_key(b)).copied().collect();
        for bucket in stale {
            maps.set_filter(bucket, 0).map_err(write)?;
            self.filter.remove(&bucket);
        }
        Ok(())
    }

    fn sync_pools(&mut self, desired: &BTreeMap<u32, NatPool>, maps: &mut Maps) -> Result<(), ReconcileError> {
        let write = |source| ReconcileError::Write { endpoint: "NAT pools".into(), source: Box::new(source) };
        for (&id, pool) in desired {
            if self.pools.get(&id) != Some(pool) {
                maps.set_nat_pool(id, pool).map_err(write)?;
                self.pools.insert(id, *pool);
            }
        }
        // A pool no VIP can name any more is emptied (its flows keep their sources).
        let stale: Vec<u32> = self.pools.keys().filter(|id| !desired.contains_key(id)).copied().collect();
        for id in stale {
            maps.set_nat_pool(id, &NatPool::default()).map_err(write)?;
            self.pools.remove(&id);
        }
        Ok(())
    }

    /// The interfaces (before any backend names one): entries written where they differ, the
    /// rest cleared.
    fn sync_ifaces(&mut self, desired: &[Iface], maps: &mut Maps) -> Result<(), ReconcileError> {
        let write = |source| ReconcileError::Write { endpoint: "interfaces".into(), source: Box::new(source) };
        let slots = MAX_IFACES as usize - 1;
        for i in 0..slots {
            let want = desired.get(i).copied().unwrap_or_default();
            if self.ifaces.as_ref().is_none_or(|written| written.get(i).copied().unwrap_or_default() != want) {
                maps.set_iface(i as u32 + 1, &want).map_err(write)?;
            }
        }
        self.ifaces = Some(desired.to_vec());
        Ok(())
    }

    /// VIP ids not in use, lowest last (popped first).
    fn free_vip_ids(&self) -> Vec<u32> {
        let used: std::collections::BTreeSet<u32> = self.vips.values().map(|a| a.meta.id).collect();
        (0..MAX_VIPS).rev().filter(|id| !used.contains(id)).collect()
    }
}

/// The VIP's Maglev table, as indexes into `vip.backends` (empty when no backend has weight).
pub(crate) fn build_table(vip: &DesiredVip) -> Result<maglev::Table, ReconcileError> {
    table_builds::build_one(vip).map_err(|source| ReconcileError::Maglev { endpoint: vip.endpoint.clone(), source })
}

/// For each backend of `new`, the index of the backend of `old` it continues: the one of the
/// same identity, else one of the same address and port whose identity changed (an address
/// listed a second time renames its first entry `address:port`), so that its slot — and the
/// flows recorded against it — stay.
pub(crate) fn kept_backends(old: &DesiredVip, new: &DesiredVip) -> Vec<Option<usize>> {
    let mut taken = vec![false; old.backends.len()];
    let mut kept: Vec<Option<usize>> = new
        .backends
        .iter()
        .map(|b| {
            let i = old.backends.iter().position(|o| o.identity == b.identity)?;
            taken[i] = true;
            Some(i)
        })
        .collect();
    for (b, kept) in new.backends.iter().zip(kept.iter_mut()).filter(|(_, k)| k.is_none()) {
        let same_endpoint = |(i, o): &(usize, &DesiredBackend)| {
            !taken[*i] && o.addr == b.addr && o.family == b.family && o.port == b.port
        };
        if let Some((i, _)) = old.backends.iter().enumerate().find(same_endpoint) {
            taken[i] = true;
            *kept = Some(i);
        }
    }
    kept
}
