//! Loading an object's programs side by side: the kernel verifies privileged loads in parallel,
//! and verification is most of an agent's start. The balancer and its NAT program took 1.2 s
//! and 0.8 s to verify one after the other (7 584 and 14 846 instructions); side by side on two
//! CPUs the pair costs the longer one.

use aya::{
    Ebpf,
    programs::{Program, Xdp},
};

use super::DataplaneError;

/// Loads (verifies) the XDP programs among `names` that the object has, each on a thread of its
/// own. A program the object lacks is left to the caller, which knows whether it needs it; a
/// thread that cannot be started loads its program on this one.
pub(super) fn load_xdp_programs(ebpf: &mut Ebpf, names: &[&'static str]) -> Result<(), DataplaneError> {
    let wanted: Vec<(&'static str, &mut Program)> = ebpf
        .programs_mut()
        .filter_map(|(name, program)| names.iter().find(|n| **n == name).map(|n| (*n, program)))
        .collect();
    std::thread::scope(|scope| {
        let mut inline = Vec::new();
        let mut threads = Vec::new();
        for (name, program) in wanted {
            let load = move || load_xdp(name, program);
            match std::thread::Builder::new().name("xlb-verify".into()).spawn_scoped(scope, load) {
                Ok(thread) => threads.push((name, thread)),
                Err(e) => {
                    tracing::debug!(program = name, error = %e, "no thread to verify on: loading in turn");
                    inline.push(name);
                }
            }
        }
        // A spawn that failed dropped its closure, and with it the borrow of its program: those
        // are loaded after the scope, through `ebpf` again.
        let mut result = Ok(());
        for (name, thread) in threads {
            let loaded = thread.join().unwrap_or_else(|_| {
                let panicked = std::io::Error::other("the thread loading it panicked");
                Err(DataplaneError::Program { name, source: Box::new(aya::programs::ProgramError::IOError(panicked)) })
            });
            if result.is_ok() {
                result = loaded;
            }
        }
        result.map(|()| inline)
    })
    .and_then(|inline| {
        for name in inline {
            let program = ebpf.program_mut(name).ok_or(DataplaneError::Missing { kind: "program", name })?;
            load_xdp(name, program)?;
        }
        Ok(())
    })
}

fn load_xdp(name: &'static str, program: &mut Program) -> Result<(), DataplaneError> {
    let failed = |source| DataplaneError::Program { name, source: Box::new(source) };
    let xdp: &mut Xdp = program.try_into().map_err(failed)?;
    xdp.load().map_err(failed)
}
