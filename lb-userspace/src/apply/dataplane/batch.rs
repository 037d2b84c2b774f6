//! The kernel's batch map operations, which aya does not wrap: `BPF_MAP_UPDATE_BATCH` and
//! `BPF_MAP_LOOKUP_BATCH`, one syscall for many elements.
//!
//! Why they matter here: every update of an array-of-maps element from user space waits for an
//! RCU grace period (~12 ms on this project's machines) before it returns, so swapping 1 000
//! Maglev tables one by one took 13 s. A batch update waits once for the whole batch. Batch
//! lookups read every per-CPU counter slot in one call instead of one syscall per slot.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd};

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid, zero-initialised-then-filled bpf_attr that lives across the call;
    // the pointers it carries (set by the callers below) point at buffers of the sizes the
    // kernel is told, which outlive the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, std::ptr::from_mut(attr), size_of::<bpf_attr>() as u32)
    };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain-data union of integers; all zeroes is its documented empty value.
    unsafe { std::mem::zeroed() }
}

/// Writes `keys[i] → values[i]` for every i in one syscall (one RCU wait for a map of maps).
/// `values` is the raw bytes of the values, `value_size` each. On error some prefix of the
/// elements may have been written; the error says how many.
pub(crate) fn update<K: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[u8],
    value_size: usize,
) -> Result<(), BatchError> {
    if keys.is_empty() {
        return Ok(());
    }
    assert_eq!(values.len(), keys.len() * value_size, "one value per key");
    let mut attr = zeroed_attr();
    let count = u32::try_from(keys.len()).map_err(|_| BatchError::TooMany(keys.len()))?;
    attr.batch.map_fd = map.as_raw_fd() as u32;
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.as_ptr() as u64;
    attr.batch.count = count;
    bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|source| {
        // SAFETY: the kernel wrote back how many elements it processed into the same member.
        let done = unsafe { attr.batch.count } as usize;
        BatchError::Update { done, of: keys.len(), source }
    })
}

/// Reads `count` consecutive elements of an array map (keys `0..count`) into `values`
/// (`value_size` bytes each; for a per-CPU map that is the per-CPU stride times the CPU count).
pub(crate) fn lookup_array(
    map: BorrowedFd<'_>,
    count: u32,
    values: &mut [u8],
    value_size: usize,
) -> Result<(), BatchError> {
    assert_eq!(values.len(), count as usize * value_size, "room for every value");
    let mut keys = vec![0u32; count as usize];
    let mut done = 0u32;
    let mut next_batch = 0u32;
    while done < count {
        let mut attr = zeroed_attr();
        // The buffers named hold `count - done` more keys and values from `done` on.
        attr.batch.map_fd = map.as_raw_fd() as u32;
        attr.batch.in_batch = if done == 0 { 0 } else { std::ptr::from_ref(&next_batch) as u64 };
        attr.batch.out_batch = std::ptr::from_mut(&mut next_batch) as u64;
        attr.batch.keys = keys[done as usize..].as_mut_ptr() as u64;
        attr.batch.values = values[done as usize * value_size..].as_mut_ptr() as u64;
        attr.batch.count = count - done;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote back how many elements it copied.
        let got = unsafe { attr.batch.count };
        match result {
            Ok(()) => {}
            // The end of the map: what was copied is all there is.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                done += got;
                break;
            }
            Err(source) => return Err(BatchError::Lookup { source }),
        }
        if got == 0 {
            break;
        }
        done += got;
    }
    if done != count {
        return Err(BatchError::Short { got: done, want: count });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{0} elements do not fit one batch")]
    TooMany(usize),
    #[error("batch update stopped after {done} of {of} elements: {source}")]
    Update { done: usize, of: usize, source: std::io::Error },
    #[error("batch lookup failed: {source}")]
    Lookup { source: std::io::Error },
    #[error("batch lookup returned {got} of {want} elements")]
    Short { got: u32, want: u32 },
}
