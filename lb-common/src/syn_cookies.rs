//! SYN cookies for NAT VIPs: the XDP program answers a client's SYN with a SYN-ACK whose sequence
//! number is a keyed MAC of the connection (a cookie), and claims a pool port only for a client
//! whose ACK returns a valid cookie. It then opens the connection to the backend itself and
//! shifts sequence numbers between the two for the life of the flow.
//!
//! The cookie is xlb's own (SipHash-2-4 under a key the agent keeps pinned), not the kernel's
//! `bpf_tcp_raw_gen_syncookie_*`: those encode the client's MSS but only say "valid" on the ACK,
//! and a load balancer that opens the backend connection itself needs that MSS back.
//!
//! Layout of a cookie (32 bits): the MAC's top 29 bits, the period's parity (bit 2) and the index
//! of the client's MSS in [`SYN_COOKIE_MSS_V4`] / [`SYN_COOKIE_MSS_V6`] (bits 0–1). The MAC covers
//! both addresses and ports, the client's initial sequence number, the period and the MSS index:
//! forging an ACK means guessing 29 bits per try. A cookie is accepted in its own period and the
//! next (`2^SYN_COOKIE_PERIOD_SHIFT` ns each, about 69 s).

use crate::{FAMILY_V4, FlowKey};

/// The MSS values a cookie can carry for IPv4 (as Linux's SYN cookies): the largest one not above
/// the client's MSS is used, 536 when the SYN has none.
pub const SYN_COOKIE_MSS_V4: [u16; 4] = [536, 1300, 1440, 1460];
/// For IPv6: 1280, 1480, 1500 and 9000-byte paths.
pub const SYN_COOKIE_MSS_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// A cookie's period: the coarse clock (ns) shifted by this (about 69 s).
pub const SYN_COOKIE_PERIOD_SHIFT: u32 = 36;
/// The automatic mode's meter counts SYNs in windows of `2^SYN_COOKIE_WINDOW_SHIFT` ns (134 ms).
pub const SYN_COOKIE_WINDOW_SHIFT: u32 = 27;
/// Once over its threshold, a VIP answers SYNs with cookies for this many windows (about 10 s)
/// after the last window over it.
pub const SYN_COOKIE_HOLD_WINDOWS: u64 = 75;
/// Windows per second (rounded down) as the agent turns a rate into a per-window threshold:
/// `1e9 / 2^27` = 7.45.
pub const SYN_COOKIE_WINDOW_NS: u64 = 1 << SYN_COOKIE_WINDOW_SHIFT;

/// `VipMeta::flags`: answer every SYN of this (NAT, TCP) VIP with a cookie.
pub const VIP_FLAG_SYN_COOKIES: u32 = 4;
/// `VipMeta::flags`: answer SYNs with cookies while the VIP's meter (`maps::SYN_COOKIES`) says
/// new flows arrive faster than its threshold.
pub const VIP_FLAG_SYN_COOKIES_AUTO: u32 = 8;

/// The key of the cookies' MAC (`maps::SYN_COOKIE_SECRET`, one entry): random, written by the
/// agent when it finds the pinned entry zero, kept across restarts so that cookies in flight stay
/// valid. All zero: no cookies are sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SynCookieSecret {
    pub k0: u64,
    pub k1: u64,
}

impl SynCookieSecret {
    pub const fn is_set(&self) -> bool {
        self.k0 != 0 || self.k1 != 0
    }
}

/// The automatic mode's state of one VIP (`maps::SYN_COOKIES`, by VIP id). The agent writes it
/// whole when the VIP's threshold changes (which restarts the meter); the data plane then counts
/// SYNs per window in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SynCookieMeter {
    /// SYNs per window above which cookies go on (the configured rate per second, scaled to a
    /// window; at least 1).
    pub threshold: u32,
    /// SYNs counted in `window`.
    pub count: u32,
    /// The window being counted (coarse clock >> `SYN_COOKIE_WINDOW_SHIFT`).
    pub window: u64,
    /// Cookies are on while the current window is at most this (0: never yet).
    pub active_until: u64,
}

impl SynCookieMeter {
    /// A fresh meter for a threshold of `per_second` new flows per second.
    pub const fn per_second(per_second: u32) -> Self {
        let per_window = (per_second as u64 * SYN_COOKIE_WINDOW_NS / 1_000_000_000) as u32;
        Self { threshold: if per_window == 0 { 1 } else { per_window }, count: 0, window: 0, active_until: 0 }
    }

    /// Whether cookies are on at coarse-clock time `now`.
    pub const fn active(&self, now: u64) -> bool {
        self.active_until != 0 && now >> SYN_COOKIE_WINDOW_SHIFT <= self.active_until
    }
}

/// Sequence-number state of one cookie flow (`maps::NAT_SEQ`, keyed by the flow's reverse key):
/// the handshake with the backend, then the shift between the two sides' sequence numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatSeq {
    /// The client's initial sequence number (host order): the SYN sent to the backend uses it,
    /// so the client's sequence numbers pass unchanged.
    pub client_isn: u32,
    /// The cookie: the initial sequence number the client was given (host order).
    pub cookie: u32,
    /// Added to the backend's sequence numbers toward the client, taken from its
    /// acknowledgments toward the backend: `cookie - backend's initial sequence number`.
    pub delta: u32,
    /// `NAT_SEQ_*`.
    pub state: u32,
    /// The client's MSS (from the cookie) and window (from its ACK), for the SYN to the backend.
    pub mss: u16,
    pub window: u16,
    pub pad: u32,
}

/// The SYN to the backend is out; its SYN-ACK has not come.
pub const NAT_SEQ_SYN_SENT: u32 = 0;
/// The backend answered: `delta` is known.
pub const NAT_SEQ_ESTABLISHED: u32 = 1;

/// The cookie a SYN from `flow` (client → VIP) with initial sequence number `isn` (host order) and
/// MSS index `mss_index` gets in period `period`.
#[inline(always)]
pub fn syn_cookie(secret: &SynCookieSecret, flow: &FlowKey, isn: u32, period: u64, mss_index: u32) -> u32 {
    let mac = cookie_mac(secret, flow, isn, period, mss_index);
    (mac & !7) | (((period & 1) as u32) << 2) | (mss_index & 3)
}

/// The MSS index a valid `cookie` carries for an ACK of `flow` whose SYN had initial sequence
/// number `isn`, at period `now_period`; `None` if it is not one this secret made in this period
/// or the one before.
#[inline(always)]
pub fn syn_cookie_check(
    secret: &SynCookieSecret,
    flow: &FlowKey,
    isn: u32,
    cookie: u32,
    now_period: u64,
) -> Option<u32> {
    let parity = u64::from((cookie >> 2) & 1);
    let period = if parity == now_period & 1 { now_period } else { now_period.wrapping_sub(1) };
    let mss_index = cookie & 3;
    (syn_cookie(secret, flow, isn, period, mss_index) == cookie).then_some(mss_index)
}

/// The index of the largest cookie MSS not above `mss` (0 if none is, or the SYN gave none).
#[inline(always)]
pub fn syn_cookie_mss_index(mss: u16, family: u8) -> u32 {
    let table = syn_cookie_mss_table(family);
    let mut index = 0;
    let mut i = 1;
    while i < table.len() {
        if table[i] <= mss {
            index = i as u32;
        }
        i += 1;
    }
    index
}

/// The MSS a cookie's index stands for.
#[inline(always)]
pub fn syn_cookie_mss(mss_index: u32, family: u8) -> u16 {
    syn_cookie_mss_table(family)[(mss_index & 3) as usize]
}

#[inline(always)]
const fn syn_cookie_mss_table(family: u8) -> &'static [u16; 4] {
    if family == FAMILY_V4 { &SYN_COOKIE_MSS_V4 } else { &SYN_COOKIE_MSS_V6 }
}

/// SipHash-2-4 of the connection's addresses, ports, initial sequence number, period and MSS
/// index (six 64-bit words), truncated to 32 bits.
#[inline(always)]
fn cookie_mac(secret: &SynCookieSecret, flow: &FlowKey, isn: u32, period: u64, mss_index: u32) -> u32 {
    let word = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    let ports = u32::from(flow.sport) | (u32::from(flow.dport) << 16);
    let words = [
        word(flow.saddr[0], flow.saddr[1]),
        word(flow.saddr[2], flow.saddr[3]),
        word(flow.daddr[0], flow.daddr[1]),
        word(flow.daddr[2], flow.daddr[3]),
        word(ports, isn),
        period ^ (u64::from(mss_index) << 62) ^ (u64::from(flow.family) << 54),
    ];
    let hash = siphash24(secret.k0, secret.k1, &words);
    (hash ^ (hash >> 32)) as u32
}

/// SipHash-2-4 (Aumasson and Bernstein) of the little-endian bytes of `words`.
#[inline(always)]
pub fn siphash24(k0: u64, k1: u64, words: &[u64; 6]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < words.len() {
        let m = words[i];
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
        i += 1;
    }
    // The last block: the message length in bytes in the top byte.
    let last = ((words.len() as u64 * 8) & 0xff) << 56;
    v[3] ^= last;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}
