//! Whether a pinned XDP link still attaches its program to an interface.
//!
//! A link-based attachment ends in three ways an operator may take: the pin is removed (`rm`
//! or `xlb detach`: with no other holder the kernel frees the link), the link is detached in
//! place (`bpftool link detach`: the pin stays, the link is defunct and reports interface
//! index 0), or the interface goes (deleted or recreated: defunct too). `ip link set dev X xdp
//! off` does not detach it: the kernel refuses to override a link (EBUSY).

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

/// What a pinned link says about its attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No pin at the path.
    Missing,
    /// The link exists but is attached nowhere (detached in place, or its interface is gone).
    Defunct,
    /// Attached to the interface of this index.
    Attached { ifindex: u32 },
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_XDP: u32 = 6;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    /// Explicit, so it is zero: the kernel refuses attributes with stray bytes past the last
    /// field it knows.
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `repr(C)` value of the size passed; the kernel reads
    // (and for info, writes through the pointer it holds) no more than that.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// Opens the bpf object pinned at `path`; `None` if there is no pin.
fn open_pin(path: &Path) -> io::Result<Option<OwnedFd>> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the pin path"))?;
    let mut attr = ObjGetAttr { pathname: c_path.as_ptr() as u64, ..Default::default() };
    match bpf(BPF_OBJ_GET, &mut attr) {
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("BPF_OBJ_GET: {e}"))),
    }
}

/// The state of the XDP link pinned at `path`.
pub fn link_state(path: &Path) -> io::Result<LinkState> {
    use std::os::fd::AsRawFd as _;
    let Some(fd) = open_pin(path)? else { return Ok(LinkState::Missing) };
    // bpf_link_info: type, id, prog_id, then a union (8-aligned) whose XDP member starts with
    // the interface index.
    let mut info = [0u32; 32];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .map_err(|e| io::Error::new(e.kind(), format!("BPF_OBJ_GET_INFO_BY_FD: {e}")))?;
    if info[0] != BPF_LINK_TYPE_XDP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not an XDP link (type {})", path.display(), info[0]),
        ));
    }
    Ok(match info[4] {
        0 => LinkState::Defunct,
        ifindex => LinkState::Attached { ifindex },
    })
}

/// Detaches the link pinned at `path` in place, as `bpftool link detach` does: the pin stays,
/// the program leaves the interface. Returns whether there was a pin.
pub fn detach_in_place(path: &Path) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    let Some(fd) = open_pin(path)? else { return Ok(false) };
    bpf(BPF_LINK_DETACH, &mut LinkDetachAttr { link_fd: fd.as_raw_fd() as u32 })?;
    Ok(true)
}

/// The index of interface `name`, `None` if there is none. Looking it up takes a socket: out
/// of descriptors, that is an error, not a missing interface.
pub fn ifindex(name: &str) -> io::Result<Option<u32>> {
    let Ok(c_name) = std::ffi::CString::new(name) else { return Ok(None) };
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index != 0 {
        return Ok(Some(index));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO) => Ok(None),
        _ => Err(error),
    }
}
