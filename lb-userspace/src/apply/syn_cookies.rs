//! Writes the automatic mode's thresholds (`DesiredState::syn_cookie_rates`) into the meters by
//! VIP id. A meter is written whole only when its threshold changes (which restarts it); the
//! data plane reads it only for VIPs whose meta has the automatic flag, and treats a zero
//! threshold as off, so the order against the meta's write does not matter.

use std::collections::BTreeMap;

use lb_common::{SynCookieMeter, VipKey};

use super::dataplane::{DataplaneError, Maps};

/// The thresholds the meters hold, by VIP id.
#[derive(Debug, Default)]
pub struct SynCookieSync {
    thresholds: BTreeMap<u32, u32>,
}

impl SynCookieSync {
    /// What a previous agent left in pinned maps.
    pub fn adopt(maps: &Maps) -> Result<Self, DataplaneError> {
        let Some(cookies) = &maps.syn_cookies else { return Ok(Self::default()) };
        Ok(Self { thresholds: cookies.meters()?.into_iter().map(|(id, meter)| (id, meter.threshold)).collect() })
    }

    /// Brings the meters to `rates` (new flows per second by VIP) for the VIPs written so far
    /// (`applied`: key and id of each).
    pub fn sync<'a>(
        &mut self,
        rates: &BTreeMap<VipKey, u32>,
        applied: impl Iterator<Item = (&'a VipKey, u32)>,
        maps: &mut Maps,
    ) -> Result<(), DataplaneError> {
        let Some(cookies) = maps.syn_cookies.as_mut() else { return Ok(()) };
        let mut wanted = BTreeMap::new();
        for (key, id) in applied {
            if let Some(&rate) = rates.get(key) {
                wanted.insert(id, SynCookieMeter::per_second(rate));
            }
        }
        for (id, meter) in &wanted {
            if self.thresholds.get(id) != Some(&meter.threshold) {
                cookies.set_meter(*id, meter)?;
                self.thresholds.insert(*id, meter.threshold);
            }
        }
        let gone: Vec<u32> = self.thresholds.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in gone {
            cookies.set_meter(id, &SynCookieMeter::default())?;
            self.thresholds.remove(&id);
        }
        Ok(())
    }
}
