//! The drop log (`bpf_log`): the balancer tail-calls `xlb_log` on a drop while the agent keeps
//! it in the program array; `xlb_log` writes aya-log records (reason and packet, rate-limited
//! per CPU in the program) into a 128 KiB ring buffer, which [`DropLogger`] drains into
//! `tracing` under the target `xlb::bpf`.

use aya::{
    maps::ProgramArray,
    programs::{ProgramError, Xdp},
};
use lb_common::{Stat, maps, programs};

use super::{DataplaneError, Loaded, map_err};

/// Drains the drop log's ring buffer; register its fd for readability and call `flush`.
pub type DropLogger = aya_log::EbpfLogger<TracingLog>;

impl Loaded {
    /// Loads the drop-log program (once per load, beside the NAT program; logging starts off).
    pub(super) fn load_drop_log(&mut self) -> Result<(), DataplaneError> {
        let name = programs::LOG;
        let program = |source| DataplaneError::Program { name, source: Box::new(source) };
        let log: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing { kind: "program", name })?
            .try_into()
            .map_err(program)?;
        log.load().map_err(program)
    }

    /// Turns the drop log on or off without reloading: puts `xlb_log` into the balancer's
    /// program array or takes it out. Off, a drop costs one failed tail call.
    pub fn set_drop_log(&mut self, on: bool) -> Result<(), DataplaneError> {
        let name = programs::LOG;
        let program = |source| DataplaneError::Program { name, source: Box::new(source) };
        let fd = if on {
            let log: &Xdp = self
                .ebpf
                .program(name)
                .ok_or(DataplaneError::Missing { kind: "program", name })?
                .try_into()
                .map_err(program)?;
            Some(log.fd().map_err(program)?.try_clone().map_err(|e| program(ProgramError::IOError(e)))?)
        } else {
            None
        };
        let map = self.ebpf.map_mut(maps::PROGS).ok_or(DataplaneError::Missing { kind: "map", name: maps::PROGS })?;
        let mut progs = ProgramArray::try_from(map).map_err(map_err(maps::PROGS))?;
        match fd {
            Some(fd) => progs.set(lb_common::PROG_INDEX_LOG, &fd, 0).map_err(map_err(maps::PROGS)),
            None => match progs.clear_index(&lb_common::PROG_INDEX_LOG) {
                // (Clearing an empty slot is not an error here.)
                Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
                Err(e) => Err(map_err(maps::PROGS)(e)),
            },
        }
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
