//! The XDP data plane as the agent sees it: the embedded objects, typed map wrappers, attach.

use aya::{
    Ebpf, EbpfError,
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
    util::nr_cpus,
};
use lb_common::{MAX_VIPS, Stat, VipCounters, VipKey, VipMeta, maps, programs};

use crate::reconcile::VipMaps;

/// The balancer object (lb-ebpf's `xlb-balancer` binary), built by build.rs.
pub static BALANCER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-balancer"));
/// An XDP program that only returns XDP_PASS: the harness floor benchmarks subtract.
pub static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-floor"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object failed (are you root, with bpffs and BTF available?): {0}")]
    Load(#[from] EbpfError),
    #[error(
        "the XDP object has no {kind} named `{name}`; the agent and lb-ebpf were built from different sources"
    )]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("XDP program `{name}`: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("this xlb was built with AYA_BUILD_SKIP and holds no XDP object; rebuild without it")]
    NotBuilt,
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error(
        "attaching XDP to `{iface}` failed natively ({native}) and in generic mode ({generic}); check that the interface exists and has no other XDP program"
    )]
    Attach {
        iface: String,
        native: Box<ProgramError>,
        generic: Box<ProgramError>,
    },
    #[error("`{0}` is not a usable interface name")]
    InterfaceName(String),
}

/// Typed handles on the balancer's maps.
pub struct Maps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    vip_counters: PerCpuArray<MapData, VipCounters>,
    stats: PerCpuArray<MapData, u64>,
    cpus: usize,
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, DataplaneError> {
            let map = ebpf
                .take_map(name)
                .ok_or(DataplaneError::Missing { kind: "map", name })?;
            T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
        }
        Ok(Self {
            vips: take(ebpf, maps::VIPS)?,
            vip_counters: take(ebpf, maps::VIP_COUNTERS)?,
            stats: take(ebpf, maps::STATS)?,
            cpus: nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?.get() as usize,
        })
    }

    /// Global counters, summed over CPUs, in `Stat` order.
    pub fn stats(&self) -> Result<Vec<(Stat, u64)>, DataplaneError> {
        Stat::ALL
            .iter()
            .map(|&stat| {
                let values =
                    self.stats
                        .get(&(stat as u32), 0)
                        .map_err(|source| DataplaneError::Map {
                            name: maps::STATS,
                            source,
                        })?;
                Ok((stat, values.iter().sum()))
            })
            .collect()
    }

    /// One VIP's counters, summed over CPUs.
    pub fn vip_counters(&self, id: u32) -> Result<VipCounters, DataplaneError> {
        let values = self
            .vip_counters
            .get(&id, 0)
            .map_err(|source| DataplaneError::Map {
                name: maps::VIP_COUNTERS,
                source,
            })?;
        Ok(values
            .iter()
            .fold(VipCounters::default(), |sum, c| VipCounters {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            }))
    }

    /// The VIP map's contents, sorted by key.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, DataplaneError> {
        let mut all = self
            .vips
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DataplaneError::Map {
                name: maps::VIPS,
                source,
            })?;
        all.sort_by_key(|(k, _)| *k);
        Ok(all)
    }
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps")
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

impl VipMaps for Maps {
    type Error = MapError;

    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), MapError> {
        self.vips.insert(key, meta, 0)
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapError> {
        self.vips.remove(key)
    }

    fn reset_vip_counters(&mut self, id: u32) -> Result<(), MapError> {
        debug_assert!(id < MAX_VIPS);
        let zeros = PerCpuValues::try_from(vec![VipCounters::default(); self.cpus])?;
        self.vip_counters.set(id, zeros, 0)
    }
}

/// How the program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

/// A loaded XDP object: one program plus (for the balancer) its maps.
#[derive(Debug)]
pub struct Loaded {
    ebpf: Ebpf,
    program: &'static str,
}

impl Loaded {
    /// Loads the balancer object and verifies its program; returns it with its maps.
    pub fn balancer() -> Result<(Self, Maps), DataplaneError> {
        let mut loaded = Self::load(BALANCER_OBJECT, programs::BALANCER)?;
        let maps = Maps::take(&mut loaded.ebpf)?;
        Ok((loaded, maps))
    }

    /// Loads the empty floor program.
    pub fn floor() -> Result<Self, DataplaneError> {
        Self::load(FLOOR_OBJECT, programs::FLOOR)
    }

    fn load(object: &[u8], program: &'static str) -> Result<Self, DataplaneError> {
        let mut loaded = Self {
            ebpf: Ebpf::load(object)?,
            program,
        };
        loaded
            .xdp_mut()?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: program,
                source,
            })?;
        Ok(loaded)
    }

    pub fn xdp(&self) -> Result<&Xdp, DataplaneError> {
        let name = self.program;
        let prog = self.ebpf.program(name).ok_or(DataplaneError::Missing {
            kind: "program",
            name,
        })?;
        prog.try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    fn xdp_mut(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let name = self.program;
        let prog = self.ebpf.program_mut(name).ok_or(DataplaneError::Missing {
            kind: "program",
            name,
        })?;
        prog.try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    /// Attaches natively, falling back to generic (skb) mode. The link lives as long as `self`
    /// unless detached.
    pub fn attach(&mut self, iface: &str) -> Result<(XdpLinkId, AttachMode), DataplaneError> {
        let c_iface = std::ffi::CString::new(iface)
            .map_err(|_| DataplaneError::InterfaceName(iface.to_owned()))?;
        let xdp = self.xdp_mut()?;
        match xdp.attach(c_iface.as_c_str(), XdpMode::Driver) {
            Ok(link) => Ok((link, AttachMode::Native)),
            Err(native) => match xdp.attach(c_iface.as_c_str(), XdpMode::Skb) {
                Ok(link) => Ok((link, AttachMode::Generic)),
                Err(generic) => Err(DataplaneError::Attach {
                    iface: iface.to_owned(),
                    native: Box::new(native),
                    generic: Box::new(generic),
                }),
            },
        }
    }

    pub fn detach(&mut self, link: XdpLinkId) -> Result<(), DataplaneError> {
        let name = self.program;
        self.xdp_mut()?
            .detach(link)
            .map_err(|source| DataplaneError::Program { name, source })
    }
}
