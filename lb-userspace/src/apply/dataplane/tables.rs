//! The VIPs' Maglev tables: one array map per VIP in an array of maps, written whole and
//! swapped in with one batch update per reconcile step.

use aya::maps::{MapData, MapError};
use lb_common::{MAGLEV_GROUP, MAGLEV_NO_BACKEND, MAGLEV_TABLE_FLAGS, MaglevGroup, maps};

use super::{DataplaneError, Maps, batch, map_err};

impl Maps {
    /// A VIP's Maglev table as the data plane reads it: the backend slot of every table entry
    /// (an emptied table reads as no entries).
    pub fn table(&self, vip_id: u32) -> Result<Vec<u32>, DataplaneError> {
        let inner = self.maglev.get(&vip_id, 0).map_err(map_err(maps::MAGLEV))?;
        let mut slots = Vec::with_capacity((inner.len() * MAGLEV_GROUP) as usize);
        for i in 0..inner.len() {
            slots.extend(inner.get(&i, 0).map_err(map_err(maps::MAGLEV))?);
        }
        // The last element's unused lanes.
        while slots.last() == Some(&MAGLEV_NO_BACKEND) {
            slots.pop();
        }
        Ok(slots)
    }

    /// Writes each VIP's complete table into a new inner map, then points the VIPs' entries at
    /// them with one batch update: each entry swaps atomically (packets see either the old
    /// table or the new one), and the kernel's RCU wait is paid once for the batch instead of
    /// once per VIP.
    /// An empty `slots` empties the VIP's table (one element naming no backend).
    pub(crate) fn set_tables(&mut self, tables: &[(u32, &[u32])]) -> Result<(), DataplaneError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let inner: Vec<MapData> = tables
            .iter()
            .map(|(_, slots)| new_table(slots))
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::MAGLEV))?;
        let keys: Vec<u32> = tables.iter().map(|(id, _)| *id).collect();
        let fds: Vec<u8> =
            inner.iter().flat_map(|table| (table.fd().as_fd().as_raw_fd() as u32).to_ne_bytes()).collect();
        batch::update(self.maglev_fd.as_fd(), &keys, &fds, size_of::<u32>())
            .map_err(|e| map_err(maps::MAGLEV)(MapError::IoError(std::io::Error::other(e.to_string()))))
    }
}

/// A Maglev table as a new mmapable array map holding `slots` (backend slot numbers, each below
/// `MAX_BACKENDS`), packed `MAGLEV_GROUP` to an element.
fn new_table(slots: &[u32]) -> Result<MapData, MapError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let groups = slots.len().div_ceil(MAGLEV_GROUP as usize).max(1);
    let def = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        size_of::<MaglevGroup>() as u32,
        groups as u32,
        MAGLEV_TABLE_FLAGS,
    );
    let data = MapData::create(def, "xlb_maglev_table", None)?;
    // An 8-byte value: elements sit back to back, which is what the mmap below relies on.
    const _: () = assert!(size_of::<MaglevGroup>() == 8);
    let mut packed = vec![MAGLEV_NO_BACKEND; groups * MAGLEV_GROUP as usize];
    packed[..slots.len()].copy_from_slice(slots);
    let len = packed.len() * size_of::<u32>();
    // SAFETY: maps the array's value area (the kernel rounds it up to whole pages; we touch
    // only the first `len` bytes, exactly the elements) from a live map fd, shared and writable
    // as BPF_F_MMAPABLE allows; unmapped before the fd can go away.
    unsafe {
        let area = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            data.fd().as_fd().as_raw_fd(),
            0,
        );
        if area == libc::MAP_FAILED {
            return Err(MapError::IoError(std::io::Error::last_os_error()));
        }
        std::ptr::copy_nonoverlapping(packed.as_ptr(), area.cast::<u32>(), packed.len());
        libc::munmap(area, len);
    }
    Ok(data)
}
