//! Sizes of the balancer's tables, fixed at load, and which kind of connection table an object
//! has.

use aya::EbpfLoader;
use lb_common::maps;

/// Sizes of the balancer's tables, fixed when it is loaded (`node.flow_table_size`,
/// `node.nat_table_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes {
    pub flows: u32,
    pub nat: u32,
}

impl TableSizes {
    pub fn of(node: &crate::config::Node) -> Self {
        Self { flows: node.flow_table_size, nat: node.nat_table_size }
    }

    /// Sizes the balancer's tables in `loader`; `flow_sets` is `flow_sets(self.flows)`, which
    /// the loader borrows for the program's global. `FlowTable::Lru`: an older build's
    /// connection table (the bench loads such builds to compare), sized by entries.
    pub(super) fn apply<'a>(&self, loader: &mut EbpfLoader<'a>, flow_sets: &'a u32, table: FlowTable) {
        match table {
            FlowTable::Sets => {
                loader.map_max_entries(maps::FLOWS, *flow_sets);
                loader.override_global(maps::FLOW_SETS, flow_sets, true);
            }
            FlowTable::Lru => {
                loader.map_max_entries(maps::FLOWS, self.flows);
            }
        }
        loader.map_max_entries(maps::NAT_FLOWS, self.nat);
        loader.map_max_entries(maps::NAT_REVERSE, self.nat);
        // Cookie flows' sequence state: one per NAT flow at most.
        loader.map_max_entries(maps::NAT_SEQ, self.nat);
    }
}

impl Default for TableSizes {
    fn default() -> Self {
        Self { flows: lb_common::FLOW_TABLE_SIZE, nat: lb_common::NAT_TABLE_SIZE }
    }
}

/// The kind of connection table a build of the balancer object has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlowTable {
    /// This build's set array (`FlowSet`).
    Sets,
    /// Older builds' LRU hash map.
    Lru,
}

impl FlowTable {
    pub(super) fn of(object: &[u8]) -> Self {
        let array = aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;
        match aya_obj::Object::parse(object).ok().and_then(|o| o.maps.get(maps::FLOWS).map(|m| m.map_type())) {
            Some(kind) if kind != array => FlowTable::Lru,
            _ => FlowTable::Sets,
        }
    }
}
