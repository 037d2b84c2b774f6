//! The BPF map memory a process holds, Maglev inner maps included.

use super::*;

/// BPF map memory of a process: the maps it holds descriptors of, and the maps those hold
/// (array- or hash-of-maps: Maglev tables), by the kernel's `memlock` figure.
#[derive(Debug, Clone, Copy, Default)]
pub struct BpfMemory {
    pub maps: usize,
    pub bytes: u64,
    pub inner_maps: usize,
    pub inner_bytes: u64,
}

impl BpfMemory {
    pub fn total(&self) -> u64 {
        self.bytes + self.inner_bytes
    }
}

const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
const BPF_MAP_TYPE_HASH_OF_MAPS: u32 = 13;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;

/// `field:\tvalue` lines of an fdinfo file.
fn fdinfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().parse().ok())
}

/// The `bpf(2)` attribute union, large enough for the commands used here.
#[repr(C, align(8))]
#[derive(Default)]
struct BpfAttr([u64; 8]);

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), std::mem::size_of::<BpfAttr>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// A descriptor of map `id` in this process.
fn map_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = BpfAttr::default();
    attr.0[0] = u64::from(id);
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn own_fdinfo(fd: &OwnedFd) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// The inner map ids held by a map-of-maps (`fd`, keys of `key_size` bytes).
fn inner_map_ids(fd: &OwnedFd, key_size: usize) -> std::io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut first = true;
    for _ in 0..10_000_000 {
        let mut attr = BpfAttr::default();
        attr.0[0] = fd.as_raw_fd() as u64;
        attr.0[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr.0[2] = next.as_mut_ptr() as u64;
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        first = false;
        key.copy_from_slice(&next);
        let mut value = 0u32;
        let mut attr = BpfAttr::default();
        attr.0[0] = fd.as_raw_fd() as u64;
        attr.0[1] = key.as_ptr() as u64;
        attr.0[2] = std::ptr::from_mut(&mut value) as u64;
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => ids.push(value),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ids)
}

/// See [`BpfMemory`].
pub fn bpf_memory(pid: u32) -> Result<BpfMemory, String> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut maps: BTreeMap<u64, (u64, u32, u64)> = BTreeMap::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let (Some(id), Some(memlock)) = (fdinfo(&text, "map_id"), fdinfo(&text, "memlock")) else { continue };
        let kind = fdinfo(&text, "map_type").unwrap_or_default() as u32;
        maps.insert(id, (memlock, kind, fdinfo(&text, "key_size").unwrap_or(4)));
    }
    let mut memory =
        BpfMemory { maps: maps.len(), bytes: maps.values().map(|(m, _, _)| m).sum(), ..Default::default() };
    let mut inner_seen = BTreeSet::new();
    for (id, (_, kind, key_size)) in &maps {
        if *kind != BPF_MAP_TYPE_ARRAY_OF_MAPS && *kind != BPF_MAP_TYPE_HASH_OF_MAPS {
            continue;
        }
        let outer = map_fd_by_id(*id as u32).map_err(|e| format!("map {id}: {e}"))?;
        for inner in inner_map_ids(&outer, *key_size as usize).map_err(|e| format!("map {id}: {e}"))? {
            if maps.contains_key(&u64::from(inner)) || !inner_seen.insert(inner) {
                continue;
            }
            let Ok(fd) = map_fd_by_id(inner) else { continue };
            memory.inner_maps += 1;
            memory.inner_bytes += fdinfo(&own_fdinfo(&fd), "memlock").unwrap_or_default();
        }
    }
    Ok(memory)
}
