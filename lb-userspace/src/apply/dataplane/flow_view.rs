//! The connection table (`FlowSet`s in a mmapable array) mapped read-only into the agent, so that
//! counting its entries reads memory instead of making a syscall per set.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{MapData, MapError};
use lb_common::{FLOW_WAYS, FlowSet};

pub(super) struct FlowView {
    area: *const u8,
    len: usize,
    sets: u32,
}

// SAFETY: the mapping is read-only and owned by this value alone; reading it from another thread
// is as sound as from this one.
unsafe impl Send for FlowView {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for FlowView {}

/// Array maps keep values at an 8-byte stride.
const STRIDE: usize = size_of::<FlowSet>().next_multiple_of(8);

impl FlowView {
    pub(super) fn map(data: &MapData, sets: u32) -> Result<Self, MapError> {
        let len = STRIDE * sets as usize;
        // SAFETY: maps the array's value area (the kernel lays values from offset 0, page
        // aligned, `STRIDE` apart) of a live BPF_F_MMAPABLE map, read-only and shared; the
        // mapping keeps the map alive and is unmapped on drop.
        let area = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, data.fd().as_fd().as_raw_fd(), 0)
        };
        if area == libc::MAP_FAILED {
            return Err(MapError::IoError(std::io::Error::last_os_error()));
        }
        Ok(Self { area: area.cast::<u8>().cast_const(), len, sets })
    }

    /// Entries in use: those whose last-use time is set.
    pub(super) fn occupied(&self) -> usize {
        let used = std::mem::offset_of!(FlowSet, used);
        (0..self.sets as usize)
            .map(|set| {
                (0..FLOW_WAYS)
                    .filter(|way| {
                        // SAFETY: inside the mapping (`set < sets`, `used` lies within a value);
                        // aligned (values are 8-byte aligned, `used` at a multiple of 4). The
                        // data plane writes these words concurrently: a volatile read of a whole
                        // u32 sees either value.
                        unsafe { self.area.add(set * STRIDE + used + way * 4).cast::<u32>().read_volatile() != 0 }
                    })
                    .count()
            })
            .sum()
    }

    /// Set `index` as it is now, unless it holds no entry (`None`: only its last-use words were
    /// read, one cache line, so an empty set costs little).
    pub(super) fn set(&self, index: u32) -> Option<FlowSet> {
        if index >= self.sets {
            return None;
        }
        let base = index as usize * STRIDE;
        let used = std::mem::offset_of!(FlowSet, used);
        // SAFETY: inside the mapping (`index < sets`), aligned as in `occupied`; the data plane
        // writes concurrently, and a volatile read of each word sees either value.
        let any = (0..FLOW_WAYS)
            .any(|way| unsafe { self.area.add(base + used + way * 4).cast::<u32>().read_volatile() != 0 });
        // SAFETY: a whole `FlowSet` lies at `base` (values are `STRIDE` apart, 8-byte aligned,
        // `FlowSet` needs 4); plain data, any bit pattern valid. Entries written meanwhile may be
        // torn: readers check each entry (`flow_check`) as the data plane does.
        any.then(|| unsafe { self.area.add(base).cast::<FlowSet>().read_volatile() })
    }

    /// Sets in the table.
    pub(super) fn sets(&self) -> u32 {
        self.sets
    }

    /// The table's size in entries.
    pub(super) fn size(&self) -> usize {
        self.sets as usize * FLOW_WAYS
    }
}

impl Drop for FlowView {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the area `map` mapped, which nothing borrows past `self`.
        unsafe { libc::munmap(self.area.cast_mut().cast(), self.len) };
    }
}

/// How full the connection table is: entries in use (flows recorded and not yet replaced by
/// newer ones, idle or not) of `size`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowTableUsage {
    pub entries: u64,
    pub size: u64,
}

/// Counts the connection table's entries in use (see [`super::Maps::flow_table_counter`]).
#[derive(Clone)]
pub struct FlowTableCounter(pub(super) std::sync::Arc<FlowView>);

impl FlowTableCounter {
    /// The table's size in entries (known without a scan).
    pub fn size(&self) -> u64 {
        self.0.size() as u64
    }

    pub fn count(&self) -> FlowTableUsage {
        FlowTableUsage { entries: self.0.occupied() as u64, size: self.0.size() as u64 }
    }

    /// Sets in the table (`read_set` takes `0..sets()`).
    pub fn sets(&self) -> u32 {
        self.0.sets()
    }

    /// Set `index` as it is now; `None` when it holds no entry (or is past the end).
    pub fn read_set(&self, index: u32) -> Option<lb_common::FlowSet> {
        self.0.set(index)
    }
}

impl std::fmt::Debug for FlowTableCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTableCounter").field("size", &self.0.size()).finish()
    }
}
