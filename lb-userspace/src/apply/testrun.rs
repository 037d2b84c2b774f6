//! Running a loaded XDP program under BPF_PROG_TEST_RUN: for packet tests and benchmarks.
//!
//! With `repeat > 1` the kernel re-runs the program on the same buffer, so a program that
//! rewrites the packet sees its own output from the second iteration on. [`repeat`] is for paths
//! that leave the packet unchanged; [`run_loop`] feeds a fresh packet to every run.

use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};

/// Room for the program to grow the packet (encapsulation) in the output buffer.
const OUTPUT_HEADROOM: usize = 256;

/// XDP verdicts, as the program returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Unknown(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => Self::Unknown(other),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    Run(#[from] ProgramError),
    #[error("run {run}: expected {expected:?}, the program returned {got:?}")]
    UnexpectedAction { run: usize, expected: XdpAction, got: XdpAction },
    #[error("no packets to run")]
    Empty,
}

/// One run's verdict and the packet as the program left it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub action: XdpAction,
    pub packet: Vec<u8>,
    pub duration_ns: u64,
}

/// Runs `packet` through `prog` once.
pub fn run(prog: &Xdp, packet: &[u8]) -> Result<Outcome, TestRunError> {
    run_on(prog, packet, 0)
}

/// `run` as if the frame came in on interface `ingress_ifindex` (of the caller's network
/// namespace; 0: the kernel's default, the loopback device).
pub fn run_on(prog: &Xdp, packet: &[u8], ingress_ifindex: u32) -> Result<Outcome, TestRunError> {
    let mut out = vec![0u8; packet.len() + OUTPUT_HEADROOM];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> =
        [0, packet.len() as u32, 0, ingress_ifindex, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
    let result = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: (ingress_ifindex != 0).then_some(ctx.as_slice()),
        repeat: 1,
        ..Default::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(Outcome { action: result.return_value.into(), packet: out, duration_ns: result.duration.as_nanos() as u64 })
}

/// Kernel-measured ns per run with `repeat` iterations on the same buffer, checking the verdict.
pub fn repeat(prog: &Xdp, packet: &[u8], repeat: u32, expected: XdpAction) -> Result<f64, TestRunError> {
    let result = prog.test_run(TestRunOptions { data_in: Some(packet), repeat, ..Default::default() })?;
    let got = XdpAction::from(result.return_value);
    if got != expected {
        return Err(TestRunError::UnexpectedAction { run: 0, expected, got });
    }
    Ok(result.duration.as_nanos() as f64)
}

/// Mean kernel-measured ns over separate `repeat = 1` runs, one fresh packet each; every run
/// must return `expected`.
pub fn run_loop<P: AsRef<[u8]>>(
    prog: &Xdp,
    packets: impl IntoIterator<Item = P>,
    expected: XdpAction,
) -> Result<f64, TestRunError> {
    let (mut total, mut runs) = (0u64, 0usize);
    for packet in packets {
        let result =
            prog.test_run(TestRunOptions { data_in: Some(packet.as_ref()), repeat: 1, ..Default::default() })?;
        let got = XdpAction::from(result.return_value);
        if got != expected {
            return Err(TestRunError::UnexpectedAction { run: runs, expected, got });
        }
        total += result.duration.as_nanos() as u64;
        runs += 1;
    }
    if runs == 0 {
        return Err(TestRunError::Empty);
    }
    Ok(total as f64 / runs as f64)
}
