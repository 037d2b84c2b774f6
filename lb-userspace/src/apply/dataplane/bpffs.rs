//! bpffs, where the data plane's maps and links are pinned.

use std::path::Path;

use super::DataplaneError;

/// The conventional bpffs mount point.
const BPFFS: &str = "/sys/fs/bpf";

/// Makes `dir` (mounting bpffs first if it is under /sys/fs/bpf and nothing is mounted there) and
/// checks that it is on bpffs, where pins outlive the agent.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    mount_bpffs_if_missing(dir)?;
    std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Pin { path: dir.to_owned(), source })?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::Pin {
            path: dir.to_owned(),
            source: std::io::Error::other(
                "not on a bpf filesystem, so pins would not outlive the agent (`ip netns exec` remounts /sys: run the agent in the namespace without it, or mount bpffs there)",
            ),
        });
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf when `dir` is under it and nothing is mounted there yet (as
/// systemd would at boot; minimal hosts and containers often lack it).
fn mount_bpffs_if_missing(dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new(BPFFS);
    if !dir.starts_with(root) || !root.is_dir() || is_bpffs(root) {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (source, target, fstype) = (c("bpf"), c(BPFFS), c("bpf"));
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call and no data.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(DataplaneError::Pin { path: root.to_owned(), source: std::io::Error::last_os_error() });
    }
    // Pins live as long as this mount does: in a private mount namespace (`ip netns exec`
    // makes one) that is only as long as the agent's process tree.
    tracing::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// Whether `path` is on a bpf filesystem (where pins live).
fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into a zeroed plain-data struct and reads a NUL-terminated path.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statfs(c_path.as_ptr(), &mut fs) }) == 0 && fs.f_type as libc::c_long == BPF_FS_MAGIC
}
