//! The SYN-cookie maps: the automatic mode's meters (the reconciler writes their thresholds,
//! housekeeping reads whether cookies are on), and the cookies' key, set once and kept across
//! restarts so that cookies in flight stay valid. (The cookie flows' sequence state is the NAT
//! sweep's: see `readers`.)

use std::{io::Read as _, os::fd::OwnedFd};

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError},
};
use lb_common::{MAX_VIPS, SynCookieMeter, SynCookieSecret, maps};

use super::{DataplaneError, map_err, read_array, take, take_shared};

/// The reconciler's handles.
pub struct SynCookieMaps {
    meters: Array<MapData, SynCookieMeter>,
    /// The same array, for reading it whole in one batch.
    reader: SynCookieMeters,
    secret: Array<MapData, SynCookieSecret>,
}

impl std::fmt::Debug for SynCookieMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynCookieMaps").finish_non_exhaustive()
    }
}

impl SynCookieMaps {
    /// `None` for builds of the object from before SYN cookies (the bench loads them). A key
    /// left by a previous agent in the pinned map is kept; a zero key is replaced by a random one.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Option<Self>, DataplaneError> {
        if [maps::SYN_COOKIES, maps::SYN_COOKIE_SECRET].iter().any(|name| ebpf.map(name).is_none()) {
            return Ok(None);
        }
        let (meters, meters_fd) = take_shared(ebpf, maps::SYN_COOKIES)?;
        let mut secret: Array<MapData, SynCookieSecret> = take(ebpf, maps::SYN_COOKIE_SECRET)?;
        let name = maps::SYN_COOKIE_SECRET;
        if !secret.get(&0, 0).map_err(map_err(name))?.is_set() {
            let random = random_secret().map_err(|e| map_err(name)(MapError::IoError(e)))?;
            secret.set(0, &random, 0).map_err(map_err(name))?;
        }
        Ok(Some(Self { meters, reader: SynCookieMeters(meters_fd), secret }))
    }

    /// Starts VIP `id`'s meter afresh with `meter` (its threshold; zero: no automatic mode).
    pub fn set_meter(&mut self, id: u32, meter: &SynCookieMeter) -> Result<(), DataplaneError> {
        self.meters.set(id, meter, 0).map_err(map_err(maps::SYN_COOKIES))
    }

    /// Every VIP id whose meter has a threshold (what the reconciler or a previous agent wrote).
    pub fn meters(&self) -> Result<Vec<(u32, SynCookieMeter)>, DataplaneError> {
        self.reader.in_use()
    }

    /// A handle on the meters for another thread.
    pub fn meter_reader(&self) -> Result<SynCookieMeters, DataplaneError> {
        let fd = self.reader.0.try_clone().map_err(|e| map_err(maps::SYN_COOKIES)(MapError::IoError(e)))?;
        Ok(SynCookieMeters(fd))
    }

    /// The cookies' key (tests set a known one to rebuild the cookies they expect).
    pub fn set_secret(&mut self, secret: &SynCookieSecret) -> Result<(), DataplaneError> {
        self.secret.set(0, secret, 0).map_err(map_err(maps::SYN_COOKIE_SECRET))
    }

    pub fn secret(&self) -> Result<SynCookieSecret, DataplaneError> {
        self.secret.get(&0, 0).map_err(map_err(maps::SYN_COOKIE_SECRET))
    }
}

/// 128 random bits from the kernel.
fn random_secret() -> std::io::Result<SynCookieSecret> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let (k0, k1) = bytes.split_at(8);
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or_default());
    Ok(SynCookieSecret { k0: word(k0), k1: word(k1) })
}

/// The automatic mode's meters, read by the housekeeping thread.
#[derive(Debug)]
pub struct SynCookieMeters(OwnedFd);

impl SynCookieMeters {
    /// Every VIP id whose meter has a threshold, with the meter (one batched read).
    fn in_use(&self) -> Result<Vec<(u32, SynCookieMeter)>, DataplaneError> {
        let values: Vec<SynCookieMeter> = read_array(&self.0, MAX_VIPS, maps::SYN_COOKIES)?;
        Ok(values.into_iter().enumerate().filter(|(_, m)| m.threshold != 0).map(|(id, m)| (id as u32, m)).collect())
    }

    /// The VIP ids whose meters say cookies are on at coarse-clock time `now`.
    pub fn active(&self, now: u64) -> Result<Vec<u32>, DataplaneError> {
        Ok(self.in_use()?.into_iter().filter(|(_, m)| m.active(now)).map(|(id, _)| id).collect())
    }
}
