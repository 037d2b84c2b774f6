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
    dataplane::{DataplaneError, Maps},
    desired::{DesiredBackend, DesiredState, DesiredVip, endpoint, ip_from_words},
    maglev::{self, MaglevError, Member},
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
    /// What backends removed from this VIP had counted (the VIP's totals keep it).
    pub retired: BackendCounters,
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
        }
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
        let mut by_vip: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        this.free_slots.clear();
        for slot in (0..MAX_BACKENDS).rev() {
            let backend = maps.backend(slot)?;
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
            let backends = members
                .iter()
                .map(|(_, b)| DesiredBackend {
                    identity: ip_from_words(b.addr, b.family).to_string(),
                    addr: b.addr,
                    family: b.family,
                    mac: b.mac,
                    // Unknown: differs from every configured weight, so the first pass rebuilds.
                    weight: u32::MAX,
                    configured_weight: u32::MAX,
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
                pool: meta.pool,
            };
            let slots = members.iter().map(|(slot, _)| *slot).collect();
            this.vips.insert(key, AppliedVip { meta, vip, slots, retired: BackendCounters::default() });
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

    /// Brings the maps to `desired`. On error the maps hold a mix of old and new entries and
    /// `applied()` says exactly which; the next call converges.
    pub fn apply(&mut self, desired: &DesiredState, maps: &mut Maps) -> Result<Changes, ReconcileError> {
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

        // What an earlier, failed pass left to retire.
        self.retire_queued(maps)
            .map_err(|e| ReconcileError::Write { endpoint: "retired backends".into(), source: Box::new(e) })?;

        let stale: Vec<VipKey> = self.vips.keys().filter(|k| !desired.vips.contains_key(k)).copied().collect();
        for key in stale {
            let applied = &self.vips[&key];
            let endpoint = applied.vip.endpoint.clone();
            let write = |source| ReconcileError::Write { endpoint: endpoint.clone(), source: Box::new(source) };
            maps.remove_vip(&key).map_err(write)?;
            maps.clear_table(applied.meta.id).map_err(write)?;
            let applied = self.vips.remove(&key).expect("present");
            self.to_retire.extend(&applied.slots);
            changes.removed.push(applied.vip.name);
            self.retire_queued(maps).map_err(write)?;
        }

        for (key, vip) in &desired.vips {
            match self.vips.get(key) {
                Some(applied) if applied.vip == *vip => changes.unchanged += 1,
                Some(_) => {
                    let rebuilt = self.update_vip(key, vip, maps)?;
                    changes.tables_rebuilt += usize::from(rebuilt);
                    changes.updated.push(vip.name.clone());
                }
                None => {
                    self.add_vip(key, vip, maps)?;
                    changes.tables_rebuilt += 1;
                    changes.added.push(vip.name.clone());
                }
            }
        }

        Ok(changes)
    }

    fn add_vip(&mut self, key: &VipKey, vip: &DesiredVip, maps: &mut Maps) -> Result<(), ReconcileError> {
        self.returning_slots_on_error(|this, fresh| this.try_add_vip(key, vip, maps, fresh))
    }

    /// Runs a VIP write that takes slots from the pool into `fresh`; if it fails, the slots it
    /// took and did not hand to a VIP record go back through retirement.
    fn returning_slots_on_error<T>(
        &mut self,
        write: impl FnOnce(&mut Self, &mut Vec<u32>) -> Result<T, ReconcileError>,
    ) -> Result<T, ReconcileError> {
        let mut fresh = Vec::new();
        let result = write(self, &mut fresh);
        if result.is_err() {
            self.to_retire.extend(fresh);
        }
        result
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

    fn try_add_vip(
        &mut self,
        key: &VipKey,
        vip: &DesiredVip,
        maps: &mut Maps,
        fresh: &mut Vec<u32>,
    ) -> Result<(), ReconcileError> {
        let write = |source| ReconcileError::Write { endpoint: vip.endpoint.clone(), source: Box::new(source) };
        let id = self.free_vip_id().ok_or(ReconcileError::TooManyVips)?;
        let mut slots = Vec::with_capacity(vip.backends.len());
        for backend in &vip.backends {
            slots.push(self.take_slot(id, vip, backend, maps, fresh)?);
        }
        let table_size = self.write_table(id, vip, &slots, maps)?;
        let meta = VipMeta {
            id,
            flags: vip.flags,
            table_size,
            port_first: vip.ports.0,
            port_last: vip.ports.1,
            pool: vip.pool,
        };
        maps.set_vip(key, &meta).map_err(write)?;
        self.vips.insert(*key, AppliedVip { meta, vip: vip.clone(), slots, retired: BackendCounters::default() });
        Ok(())
    }

    /// Returns whether the Maglev table was rebuilt.
    fn update_vip(&mut self, key: &VipKey, vip: &DesiredVip, maps: &mut Maps) -> Result<bool, ReconcileError> {
        self.returning_slots_on_error(|this, fresh| this.try_update_vip(key, vip, maps, fresh))
    }

    fn try_update_vip(
        &mut self,
        key: &VipKey,
        vip: &DesiredVip,
        maps: &mut Maps,
        fresh: &mut Vec<u32>,
    ) -> Result<bool, ReconcileError> {
        let write = |source| ReconcileError::Write { endpoint: vip.endpoint.clone(), source: Box::new(source) };
        let old = self.vips.get(key).expect("present").clone();
        // Keep the slot of every backend that stays (by identity); new ones get fresh slots.
        let mut slots = Vec::with_capacity(vip.backends.len());
        for backend in &vip.backends {
            match old.vip.backends.iter().position(|b| b.identity == backend.identity) {
                Some(i) => {
                    let slot = old.slots[i];
                    let was = &old.vip.backends[i];
                    if was.mac != backend.mac || was.port != backend.port || old.vip.backend_flags != vip.backend_flags
                    {
                        self.write_backend(slot, old.meta.id, backend, vip.backend_flags, maps).map_err(write)?;
                    }
                    slots.push(slot);
                }
                None => slots.push(self.take_slot(old.meta.id, vip, backend, maps, fresh)?),
            }
        }
        let rebuild = table_changes(&old.vip, vip);
        let mut meta = VipMeta {
            id: old.meta.id,
            flags: vip.flags,
            table_size: old.meta.table_size,
            port_first: vip.ports.0,
            port_last: vip.ports.1,
            pool: vip.pool,
        };
        if rebuild {
            // Index = hash % table_size must stay inside whichever table a packet sees: a growing
            // table goes in before the VIP's size grows, a shrinking one after it shrinks.
            let new_size = if vip.backends.iter().any(|b| b.weight > 0) { vip.table_size } else { 0 };
            if new_size < old.meta.table_size {
                meta.table_size = new_size;
                maps.set_vip(key, &meta).map_err(write)?;
                // The map now says the smaller size. If the table write below fails, the record
                // must say so too, and must differ from every desired state (no table size is
                // 0), so the next pass redoes the update even if the config went back.
                if let Some(applied) = self.vips.get_mut(key) {
                    applied.meta.table_size = new_size;
                    applied.vip.table_size = 0;
                }
            }
            self.write_table(old.meta.id, vip, &slots, maps)?;
            meta.table_size = new_size;
        }
        if meta != old.meta {
            maps.set_vip(key, &meta).map_err(write)?;
        }
        let mut retired = old.retired;
        let mut gone = Vec::new();
        for (i, backend) in old.vip.backends.iter().enumerate() {
            if !vip.backends.iter().any(|b| b.identity == backend.identity) {
                // Keep what it counted in the VIP's totals before the slot goes.
                retired = retired.plus(&maps.backend_counters(old.slots[i]).map_err(write)?);
                gone.push(old.slots[i]);
            }
        }
        self.vips.insert(*key, AppliedVip { meta, vip: vip.clone(), slots, retired });
        // From here the new slots belong to the VIP's record.
        fresh.clear();
        self.to_retire.extend(gone);
        self.retire_queued(maps).map_err(write)?;
        Ok(rebuild)
    }

    /// Builds the VIP's Maglev table over backend slots and swaps it in; returns its size
    /// (0 when no backend has weight, which the data plane treats as "no backend").
    fn write_table(&self, id: u32, vip: &DesiredVip, slots: &[u32], maps: &mut Maps) -> Result<u32, ReconcileError> {
        let table = build_table(vip)?;
        let write = |source| ReconcileError::Write { endpoint: vip.endpoint.clone(), source: Box::new(source) };
        if table.slots.is_empty() {
            maps.clear_table(id).map_err(write)?;
            return Ok(0);
        }
        let global: Vec<u32> = table.slots.iter().map(|&i| slots[i as usize]).collect();
        maps.set_table(id, &global).map_err(write)?;
        Ok(vip.table_size)
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

    fn free_vip_id(&self) -> Option<u32> {
        let mut used: Vec<u32> = self.vips.values().map(|a| a.meta.id).collect();
        used.sort_unstable();
        // Lowest id not in use.
        let id = used.iter().enumerate().find(|(i, id)| **id != *i as u32).map_or(used.len() as u32, |(i, _)| i as u32);
        (id < MAX_VIPS).then_some(id)
    }
}

/// Whether going from `old` to `new` changes the VIP's Maglev table: its size, or its backends
/// and their (effective) weights.
pub(crate) fn table_changes(old: &DesiredVip, new: &DesiredVip) -> bool {
    old.table_size != new.table_size
        || !old
            .backends
            .iter()
            .map(|b| (&b.identity, b.weight))
            .eq(new.backends.iter().map(|b| (&b.identity, b.weight)))
}

/// The VIP's Maglev table, as indexes into `vip.backends` (empty when no backend has weight).
pub(crate) fn build_table(vip: &DesiredVip) -> Result<maglev::Table, ReconcileError> {
    let members: Vec<Member<'_>> =
        vip.backends.iter().map(|b| Member { identity: &b.identity, weight: b.weight }).collect();
    maglev::build(&members, vip.table_size)
        .map_err(|source| ReconcileError::Maglev { endpoint: vip.endpoint.clone(), source })
}
