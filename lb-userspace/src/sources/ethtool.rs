//! What an interface's driver says about itself, through the ethtool ioctl: its name, and how
//! many frames XDP sent out of it (XDP_TX, redirects) the driver failed to transmit.
//!
//! Why it matters: on a veth, a frame XDP sends goes to the peer only while the peer runs an XDP
//! program of its own; otherwise the driver drops it, and xlb's own counters (which count what
//! the program decided) would say "forwarded". The driver counts those drops in its ethtool
//! statistics (`xdp_tx_errors`, `xdp_xmit_errors` per queue).

use super::link::interface_ioctl;

const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// Statistics read at most: drivers have tens to a few thousand (one set per queue).
const MAX_STATS: u32 = 1 << 16;

/// Room for `count` statistics and then some: the kernel writes as many as the driver has when
/// it answers (not as many as asked), and queues may have been added since `count` was read.
fn room(count: u32) -> usize {
    count as usize * 2 + 64
}

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The driver's name (`veth`, `mlx5_core`, …) and how many statistics it keeps.
pub fn driver(iface: &str) -> std::io::Result<(String, u32)> {
    // SAFETY: DrvInfo is plain data; all zeroes is a valid value.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: ETHTOOL_GDRVINFO writes exactly one `struct ethtool_drvinfo` into `info`.
    unsafe { ethtool(iface, std::ptr::from_mut(&mut info).cast())? };
    let name = info.driver.split(|&b| b == 0).next().unwrap_or_default();
    Ok((String::from_utf8_lossy(name).into_owned(), info.n_stats))
}

/// Frames XDP sent out of `iface` that its driver dropped: the sum of its statistics named
/// `…xdp_tx_errors` and `…xdp_xmit_errors`. `None` when the driver keeps no such statistics
/// (or answers no ethtool request, as `lo`).
pub fn xdp_transmit_errors(iface: &str) -> std::io::Result<Option<u64>> {
    let count = match driver(iface) {
        Ok((_, count)) => count,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return Ok(None),
        Err(e) => return Err(e),
    };
    // The kernel writes as many as the driver has, whatever we ask: a driver claiming more than
    // any real one is not read at all.
    if count == 0 || count > MAX_STATS {
        return Ok(None);
    }
    let names = stat_names(iface, count)?;
    let wanted: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, name)| name.ends_with("xdp_tx_errors") || name.ends_with("xdp_xmit_errors"))
        .map(|(i, _)| i)
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let values = stat_values(iface, count)?;
    Ok(Some(wanted.iter().filter_map(|&i| values.get(i)).sum()))
}

fn stat_names(iface: &str, count: u32) -> std::io::Result<Vec<String>> {
    // `struct ethtool_gstrings`: cmd, string_set, len, then len × 32 bytes; u32 words keep the
    // header aligned.
    let header = 3;
    let mut buf = vec![0u32; header + room(count) * ETH_GSTRING_LEN / 4];
    buf[0] = ETHTOOL_GSTRINGS;
    buf[1] = ETH_SS_STATS;
    buf[2] = count;
    // SAFETY: the buffer holds the header and `room(count)` strings: twice what the driver
    // reported a moment ago, room for queues added since (the kernel writes its current count).
    unsafe { ethtool(iface, buf.as_mut_ptr().cast())? };
    let written = buf[2] as usize;
    if written > room(count) {
        return Err(std::io::Error::other(format!("`{iface}`: the driver grew to {written} statistics mid-read")));
    }
    let bytes: Vec<u8> = buf[header..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .take(written)
        .map(|raw| String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap_or_default()).into_owned())
        .collect())
}

fn stat_values(iface: &str, count: u32) -> std::io::Result<Vec<u64>> {
    // `struct ethtool_stats`: cmd, n_stats (one u64 word), then n_stats u64 values.
    let mut buf = vec![0u64; 1 + room(count)];
    // The header's two u32 words (cmd, n_stats) in memory order.
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    header[4..].copy_from_slice(&count.to_ne_bytes());
    buf[0] = u64::from_ne_bytes(header);
    // SAFETY: the buffer holds the header and `room(count)` values: twice what the driver
    // reported a moment ago, room for queues added since (the kernel writes its current count).
    unsafe { ethtool(iface, buf.as_mut_ptr().cast())? };
    let written = u32::from_ne_bytes(buf[0].to_ne_bytes()[4..].try_into().unwrap_or_default()) as usize;
    if written > room(count) {
        return Err(std::io::Error::other(format!("`{iface}`: the driver grew to {written} statistics mid-read")));
    }
    Ok(buf[1..=written].to_vec())
}

/// Runs the ethtool ioctl on `iface` with `data` as the request.
///
/// # Safety
/// `data` must point at a request buffer of the layout and size the command in its first word
/// makes the kernel read and write.
unsafe fn ethtool(iface: &str, data: *mut libc::c_char) -> std::io::Result<()> {
    // SAFETY: SIOCETHTOOL reads the name and the request `data` points at, which the caller
    // sized for its command.
    unsafe { interface_ioctl(iface, libc::SIOCETHTOOL, |req| req.ifr_ifru.ifru_data = data) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_without_ethtool_has_no_xdp_transmit_statistics() {
        // `lo` answers no ethtool request; veths do (tests/netns_agent.rs reads a real one).
        assert_eq!(xdp_transmit_errors("lo").expect("lo"), None);
        assert_eq!(driver("no-such-if0").unwrap_err().raw_os_error(), Some(libc::ENODEV));
        assert_eq!(driver("").unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    }
}
