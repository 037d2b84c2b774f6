//! Hitless restart: the agent pins its program (through a bpf link) and maps, so a SIGKILLed
//! agent leaves the data plane forwarding, and a new agent adopts the pinned connection table.
//! Long TCP streams run through the VIP the whole time; the restarted agent brings a fourth
//! backend, which moves about a quarter of the Maglev table — without the adopted connection
//! table those streams would land on a backend that knows nothing of them and break.

use std::time::Duration;

use xlb_tests::{
    netns::xlb_bin,
    require_root,
    topology::{Topology, backend_mac, backend_v4},
};

const VIP: &str = "10.210.100.1";
const PORT: u16 = 9000;
const STREAMS: usize = 24;

fn config(backends: usize) -> String {
    let mut yaml = format!(
        "vips:\n  - name: streams\n    address: {VIP}\n    port: {PORT}\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n"
    );
    for i in 0..backends {
        yaml.push_str(&format!("      - {{ address: \"{}\", mac: \"{}\" }}\n", backend_v4(i), backend_mac(i)));
    }
    yaml
}

fn xdp_attached(topo: &Topology) -> bool {
    String::from_utf8(topo.node().ip(&["link", "show", "eth0"]).stdout).unwrap().contains("xdp")
}

#[test]
fn sigkilled_agent_keeps_forwarding_and_a_new_one_adopts_every_flow() {
    require_root!();
    let mut topo = Topology::new(4, &[VIP]);
    topo.serve_streams(VIP, PORT);
    let first = topo.start_agent(&config(3));
    let streams = topo.open_streams(VIP, PORT, STREAMS);
    assert!(streams.progress(3, Duration::from_secs(10)), "streams started: {:?}", streams.exchanges());

    // SIGKILL: no cleanup at all. The pinned link keeps XDP attached and forwarding.
    topo.agent(first).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    assert!(xdp_attached(&topo), "XDP stays attached after the agent was killed");
    assert!(streams.progress(5, Duration::from_secs(5)), "streams go on without an agent: {:?}", streams.exchanges());

    // A new agent with a fourth backend adopts the pinned maps and swaps the program in place.
    let second = topo.start_agent(&config(4));
    assert!(
        streams.progress(10, Duration::from_secs(10)),
        "streams go on after the restart: {:?}",
        streams.exchanges()
    );
    let stats = topo.stats().expect("the new agent answers");
    let vip = stats.vip("streams").expect("VIP adopted under its configured name");
    assert_eq!(vip.backends.len(), 4);
    let results = streams.finish();
    let broken: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(broken.is_empty(), "streams broken by the restart: {broken:?}");

    // New connections do reach the added backend.
    let (seen, failed) = topo.tcp_requests(VIP, PORT, 200);
    assert_eq!(failed, 0, "new connections after the restart: {seen:?}");
    assert!(seen.get("be3").copied().unwrap_or(0) > 20, "the added backend takes new flows: {seen:?}");

    // Control: the same change without the connection table does break streams, so the
    // assertion above could have failed. Forget the pinned maps, start fresh with 4 backends.
    let streams = topo.open_streams(VIP, PORT, STREAMS);
    assert!(streams.progress(3, Duration::from_secs(10)), "control streams started");
    topo.agent(second).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    let out = std::process::Command::new(xlb_bin())
        .args(["detach", "--iface", "eth0", "--forget-flows", "--pin-dir"])
        .arg(topo.pin_dir_of(0))
        .output()
        .expect("xlb detach");
    assert!(out.status.success(), "xlb detach: {}", String::from_utf8_lossy(&out.stderr));
    topo.start_agent(&config(3));
    let _ = streams.progress(10, Duration::from_secs(6));
    let broken = streams.finish().iter().filter(|r| r.is_err()).count();
    assert!(broken > 0, "re-hashing 24 flows from 4 backends to 3 moves some of them");
}
