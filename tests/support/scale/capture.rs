//! Packet sockets in a namespace: BGP messages and SYNs with kernel timestamps.

use super::*;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// An IPv4 TCP packet a capture kept.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The kernel's receive time stamp.
    pub at: SystemTime,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// TCP payload bytes.
    pub payload: usize,
    /// The type of the first BGP message the payload starts with (3: NOTIFICATION), if it does.
    pub bgp_type: Option<u8>,
}

/// A packet socket on one interface of a namespace, keeping the IPv4 TCP packets `keep` wants,
/// with the kernel's receive time stamps. Stopped on drop.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

/// `SIOCGSTAMPNS`: the receive time of the last packet read from a socket.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;
/// Bound on what one capture keeps.
const CAPTURE_MAX: usize = 1_000_000;

impl Capture {
    pub fn start(ns: &Netns, dev: &str, keep: fn(&Seen) -> bool) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, kept) = (Arc::clone(&stop), Arc::clone(&seen));
        let dev = dev.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.run(move || {
            let fd = packet_socket(&dev).unwrap_or_else(|e| panic!("packet socket on {dev}: {e}"));
            let _ = ready_tx.send(());
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: `buf` is valid for writes of its length; fd is an open socket.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue };
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: SIOCGSTAMPNS writes one timespec into `ts`.
                let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) };
                let at = if rc == 0 {
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
                } else {
                    SystemTime::now()
                };
                if let Some(p) = parse_tcp(&buf[..n], at)
                    && keep(&p)
                {
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() < CAPTURE_MAX {
                        kept.push(p);
                    }
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("capture started");
        Capture { stop, seen, thread: Some(thread) }
    }

    /// What it kept so far.
    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn finish(mut self) -> Vec<Seen> {
        self.stop_thread();
        self.snapshot()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// An AF_PACKET socket on `dev` (in the calling thread's namespace) for frames both ways (only
/// ETH_P_ALL sockets see outgoing ones), reads time out every 50 ms, receive time stamps on.
fn packet_socket(dev: &str) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the fd is owned right after.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(dev).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is valid; the fields set below make it a bind address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    let buf: libc::c_int = 4 << 20;
    let one: libc::c_int = 1;
    // SAFETY: each option gets a value of the type it expects, with its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const buf).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        // Stamps every packet on receipt (SIOCGSTAMPNS reads the last one's).
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // The first SIOCGSTAMPNS turns the socket's stamp keeping on (it answers ENOENT).
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: SIOCGSTAMPNS writes one timespec.
    unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) };
    Ok(fd)
}

/// An Ethernet frame holding IPv4 TCP.
fn parse_tcp(frame: &[u8], at: SystemTime) -> Option<Seen> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 6 || ip.len() < ihl + 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let tcp = &ip[ihl..];
    let doff = usize::from(tcp[12] >> 4) * 4;
    let payload = total.saturating_sub(ihl + doff);
    let data = tcp.get(doff..doff + payload).unwrap_or_default();
    let bgp_type = (data.len() >= 19 && data[..16].iter().all(|b| *b == 0xff)).then(|| data[18]);
    Some(Seen {
        at,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        flags: tcp[13],
        payload,
        bgp_type,
    })
}
