//! The drop log (`bpf_log`): the balancer tail-calls `xlb_log` on a drop while the agent keeps
//! it in the program array; `xlb_log` writes aya-log records (reason and packet, rate-limited
//! per CPU in the program) into a 128 KiB ring buffer, which [`DropLogger`] drains into
//! `tracing` under the target `xlb::bpf`.

use std::os::fd::AsFd as _;

use aya::{
    maps::{Map, MapData, MapError, ProgramArray},
    programs::{ProgramError, ProgramFd, Xdp},
};
use lb_common::{Stat, maps, programs};

use super::{DataplaneError, Loaded, map_err};

/// Puts `xlb_log` into the balancer's program array (on) or takes it out (off). Off, a drop
/// costs one failed tail call.
pub struct DropLogSwitch {
    progs: ProgramArray<MapData>,
    log: ProgramFd,
}

impl std::fmt::Debug for DropLogSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropLogSwitch")
    }
}

impl DropLogSwitch {
    pub fn set(&mut self, on: bool) -> Result<(), DataplaneError> {
        if on {
            return self.progs.set(lb_common::PROG_INDEX_LOG, &self.log, 0).map_err(map_err(maps::PROGS));
        }
        match self.progs.clear_index(&lb_common::PROG_INDEX_LOG) {
            // An empty slot is off already (the kernel says ENOENT).
            Err(MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(map_err(maps::PROGS)(e)),
        }
    }
}

/// Drains the drop log's ring buffer; register its fd for readability and call `flush`.
pub type DropLogger = aya_log::EbpfLogger<TracingLog>;

impl Loaded {
    /// Turns the drop log on or off without reloading (see [`DropLogSwitch`]).
    pub fn set_drop_log(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.drop_log_switch()?.set(on)
    }

    /// A handle of its own on this load's program array and drop-log program, for whoever
    /// applies reloads (the program itself moves to the thread that watches the links).
    pub fn drop_log_switch(&self) -> Result<DropLogSwitch, DataplaneError> {
        let name = programs::LOG;
        let program = |source| DataplaneError::Program { name, source: Box::new(source) };
        let log: &Xdp = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::Missing { kind: "program", name })?
            .try_into()
            .map_err(program)?;
        let log = log.fd().map_err(program)?.try_clone().map_err(|e| program(ProgramError::IOError(e)))?;
        let map = self.ebpf.map(maps::PROGS).ok_or(DataplaneError::Missing { kind: "map", name: maps::PROGS })?;
        let Map::ProgramArray(data) = map else {
            return Err(map_err(maps::PROGS)(MapError::InvalidMapType { map_type: 0 }));
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| map_err(maps::PROGS)(MapError::IoError(e)))?;
        let data = MapData::from_fd(fd).map_err(map_err(maps::PROGS))?;
        let progs = ProgramArray::try_from(Map::ProgramArray(data)).map_err(map_err(maps::PROGS))?;
        Ok(DropLogSwitch { progs, log })
    }

    /// Takes the drop log's ring buffer out of this load (once).
    pub fn drop_logger(&mut self) -> Result<DropLogger, DataplaneError> {
        self.drop_logger_with(TracingLog)
    }

    /// [`Loaded::drop_logger`] into another `log::Log` (the tests collect the records).
    pub fn drop_logger_with<T: log::Log>(&mut self, logger: T) -> Result<aya_log::EbpfLogger<T>, DataplaneError> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).map_err(DataplaneError::DropLog)
    }
}

/// The `log` facade aya-log formats into, forwarded to `tracing` (target `xlb::bpf`) with the
/// drop reason's counter name in place of its number.
#[derive(Debug, Clone, Copy)]
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = name_reason(&record.args().to_string());
        tracing::warn!(target: "xlb::bpf", "{message}");
    }

    fn flush(&self) {}
}

/// `drop reason=7 …` → `drop reason=drop_no_backend …`.
pub fn name_reason(message: &str) -> String {
    let Some(rest) = message.strip_prefix("drop reason=") else { return message.to_owned() };
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    match rest[..digits].parse::<usize>().ok().and_then(|n| Stat::ALL.get(n)) {
        Some(stat) => format!("drop reason={}{}", stat.name(), &rest[digits..]),
        None => message.to_owned(),
    }
}
