//! The traffic tool (lb-ebpf's `xlb-traffic`): a generator that sends millions of frames a
//! second out of an interface through BPF_PROG_TEST_RUN's live-frames mode, each frame's headers
//! written from a template, and a sink that counts what reaches an interface and drops it.
//!
//! Both run in the network namespace of the thread that calls them (the generator's interface
//! index and the sink's interface are that namespace's).

use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use lb_common::{GEN_TEMPLATE_BYTES, GenTemplate, maps, programs};
use xlb::apply::dataplane::TRAFFIC_OBJECT;

/// Frames per batch the kernel builds before transmitting them.
const BATCH: u32 = 64;

fn load(program: &'static str) -> anyhow::Result<Ebpf> {
    if TRAFFIC_OBJECT.is_empty() {
        bail!("xlb was built with AYA_BUILD_SKIP: no traffic object");
    }
    let mut ebpf = EbpfLoader::new().load(TRAFFIC_OBJECT).context("loading the traffic object")?;
    let xdp: &mut Xdp = ebpf
        .program_mut(program)
        .with_context(|| format!("no program {program}"))?
        .try_into()
        .context("not an XDP program")?;
    xdp.load().with_context(|| format!("loading {program}"))?;
    Ok(ebpf)
}

/// The live-frames generator.
#[derive(Debug)]
pub struct Generator {
    ebpf: Ebpf,
    frame: Vec<u8>,
}

impl Generator {
    pub fn load() -> anyhow::Result<Generator> {
        Ok(Generator { ebpf: load(programs::GEN)?, frame: Vec::new() })
    }

    /// Frames from now on are `template` over `frame_len` bytes (the rest zero).
    pub fn set(&mut self, template: &GenTemplate, frame_len: usize) -> anyhow::Result<()> {
        if frame_len < GEN_TEMPLATE_BYTES {
            bail!("frames must be at least {GEN_TEMPLATE_BYTES} bytes, not {frame_len}");
        }
        let mut config: Array<_, GenTemplate> =
            Array::try_from(self.ebpf.map_mut(maps::GEN).context("no generator map")?)?;
        config.set(0, template, 0)?;
        self.frame = vec![0; frame_len];
        self.frame[..GEN_TEMPLATE_BYTES].copy_from_slice(&template.bytes);
        Ok(())
    }

    /// Sends `frames` frames out of interface `ifindex` (of the calling thread's namespace);
    /// returns how long the kernel took. Frames the device cannot take are dropped there.
    pub fn send(&self, ifindex: u32, frames: u32) -> anyhow::Result<std::time::Duration> {
        if self.frame.is_empty() {
            bail!("set a template first");
        }
        let xdp: &Xdp = self.ebpf.program(programs::GEN).context("no generator")?.try_into()?;
        // struct xdp_md: data, data_end (must be the frame's size), data_meta, ingress_ifindex.
        let ctx: Vec<u8> =
            [0, self.frame.len() as u32, 0, ifindex, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(&self.frame),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN in live-frames mode")?;
        Ok(result.duration)
    }

    /// Frames generated so far (all CPUs).
    pub fn generated(&self) -> anyhow::Result<u64> {
        let counts: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::GEN_COUNT).context("no generator counter")?)?;
        let values: PerCpuValues<u64> = counts.get(&0, 0)?;
        Ok(values.iter().sum())
    }
}

/// A counting drop attached to an interface; detached when dropped.
#[derive(Debug)]
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Attaches (natively) to `iface` of the calling thread's namespace.
    pub fn attach(iface: &str) -> anyhow::Result<Sink> {
        let mut ebpf = load(programs::SINK)?;
        let xdp: &mut Xdp = ebpf.program_mut(programs::SINK).context("no sink")?.try_into()?;
        let name = std::ffi::CString::new(iface).context("interface name")?;
        xdp.attach(name.as_c_str(), XdpMode::Driver).with_context(|| format!("attaching the sink to {iface}"))?;
        Ok(Sink { ebpf })
    }

    /// Frames and bytes counted so far.
    pub fn count(&self) -> anyhow::Result<(u64, u64)> {
        let counts: PerCpuArray<_, [u64; 2]> =
            PerCpuArray::try_from(self.ebpf.map(maps::SINK).context("no sink counter")?)?;
        let values: PerCpuValues<[u64; 2]> = counts.get(&0, 0)?;
        Ok(values.iter().fold((0, 0), |(p, b), v| (p + v[0], b + v[1])))
    }
}

/// Who a template's frames go from and to.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// A UDP/IPv4 template between `at`, for frames of `frame_len` bytes (UDP checksum zero: valid
/// for IPv4, and nothing on the path checks it).
pub fn udp_v4(at: Endpoints, frame_len: usize, mode: u32, flows: u32) -> GenTemplate {
    let mut t = ipv4(&at, 17, (frame_len - 14) as u16, mode, flows);
    let l4 = &mut t.bytes[34..42];
    l4[0..2].copy_from_slice(&at.sport.to_be_bytes());
    l4[2..4].copy_from_slice(&at.dport.to_be_bytes());
    l4[4..6].copy_from_slice(&((frame_len - 34) as u16).to_be_bytes());
    t
}

/// A TCP SYN/IPv4 template between `at`: a 40-byte datagram, the frame padded to whatever
/// length the generator is given (as Ethernet pads short frames). Its TCP checksum is that of
/// the template's own ports and addresses: frames whose source the generator varies arrive
/// with a wrong one, which the load balancer does not check and the backends' kernels drop (a
/// flood's SYNs never reach a listener).
pub fn tcp_syn_v4(at: Endpoints, mode: u32) -> GenTemplate {
    let mut t = ipv4(&at, 6, 40, mode, 1);
    let tcp = &mut t.bytes[34..54];
    tcp[0..2].copy_from_slice(&at.sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&at.dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    // Data offset 5 words, SYN, window 64240.
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut sum = ones_sum(&at.saddr.octets()) + ones_sum(&at.daddr.octets()) + 6 + 20;
    sum += ones_sum(tcp);
    tcp[16..18].copy_from_slice(&fold(sum).to_be_bytes());
    t
}

/// The Ethernet and IPv4 headers of a template (checksummed); the caller writes the L4 header.
fn ipv4(at: &Endpoints, proto: u8, ip_len: u16, mode: u32, flows: u32) -> GenTemplate {
    let mut t = GenTemplate::zeroed();
    let b = &mut t.bytes;
    b[0..6].copy_from_slice(&at.dst_mac);
    b[6..12].copy_from_slice(&at.src_mac);
    b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut b[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&at.saddr.octets());
    ip[16..20].copy_from_slice(&at.daddr.octets());
    let checksum = fold(ones_sum(ip));
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    t.mode = mode;
    t.flow_mask = flows.next_power_of_two().saturating_sub(1);
    t.ip_version = 4;
    t
}

/// The sum of `bytes` as big-endian 16-bit words (an odd length is padded with zero).
fn ones_sum(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]))).sum()
}

/// The Internet checksum of a ones'-complement sum.
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    !(((sum & 0xffff) + (sum >> 16)) as u16)
}
