//! End to end through a veth pair: `xlb run` attached in one namespace, real TCP and UDP sent
//! from the other, counters read back through the agent's admin socket.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use xlb::stats::Snapshot;
use xlb_tests::{
    netns::{Netns, Process, veth, wait_for, xlb_bin},
    require_root,
};

const VIP4: &str = "10.201.0.100";
const VIP6: &str = "fd00:201::100";
const UDP_DATAGRAMS: usize = 10;
const TCP_CONNECTIONS: usize = 3;

fn config() -> String {
    format!(
        "vips:\n  - name: udp4\n    address: {VIP4}\n    port: 5353\n    protocol: udp\n  - name: tcp4\n    address: {VIP4}\n    port: 8080\n    protocol: tcp\n  - name: udp6\n    address: {VIP6}\n    port: 5353\n    protocol: udp\n  - name: tcp6\n    address: {VIP6}\n    port: 8080\n    protocol: tcp\n"
    )
}

fn stats(socket: &std::path::Path) -> Option<Snapshot> {
    let out =
        std::process::Command::new(xlb_bin()).args(["stats", "--json", "--admin-socket"]).arg(socket).output().ok()?;
    out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("stats --json is JSON"))
}

/// UDP receiver and TCP echo server on the VIPs, inside the LB namespace (the program passes VIP
/// traffic to the local stack until forwarding lands). Returns datagrams received.
fn serve(lb: &Netns, vip: &'static str) -> (std::thread::JoinHandle<usize>, std::thread::JoinHandle<usize>) {
    let udp = Ready::new();
    let tcp = Ready::new();
    let (udp_ready, tcp_ready) = (udp.clone(), tcp.clone());
    let udp_server = lb.run(move || {
        let socket = UdpSocket::bind(SocketAddr::new(vip.parse().unwrap(), 5353)).expect("bind UDP on the VIP");
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        udp_ready.set();
        let mut buf = [0u8; 1500];
        (0..UDP_DATAGRAMS).take_while(|_| socket.recv_from(&mut buf).is_ok()).count()
    });
    let tcp_server = lb.run(move || {
        let listener = TcpListener::bind(SocketAddr::new(vip.parse().unwrap(), 8080)).expect("bind TCP on the VIP");
        tcp_ready.set();
        let mut echoed = 0;
        for _ in 0..TCP_CONNECTIONS {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).expect("read");
            conn.write_all(&buf[..n]).expect("echo");
            echoed += 1;
        }
        echoed
    });
    udp.wait();
    tcp.wait();
    (udp_server, tcp_server)
}

/// A one-shot readiness flag between threads.
#[derive(Clone)]
struct Ready(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Ready {
    fn new() -> Self {
        Self(Default::default())
    }
    fn set(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }
    fn wait(&self) {
        let guard = self.0.0.lock().unwrap();
        let (ready, timeout) = self.0.1.wait_timeout_while(guard, Duration::from_secs(5), |r| !*r).unwrap();
        assert!(*ready && !timeout.timed_out(), "server did not start");
    }
}

/// From the client namespace: UDP datagrams and TCP request/echo exchanges to `vip`, plus UDP to
/// a non-VIP port of the same address.
fn drive(client: &Netns, vip: &'static str) {
    client
        .run(move || {
            let ip: std::net::IpAddr = vip.parse().unwrap();
            let socket =
                UdpSocket::bind(SocketAddr::new(if ip.is_ipv4() { "0.0.0.0" } else { "::" }.parse().unwrap(), 0))
                    .unwrap();
            for i in 0..UDP_DATAGRAMS {
                socket.send_to(format!("datagram {i}").as_bytes(), SocketAddr::new(ip, 5353)).expect("send UDP");
                std::thread::sleep(Duration::from_millis(5));
            }
            socket.send_to(b"not for a VIP", SocketAddr::new(ip, 9)).expect("send UDP to port 9");
            for i in 0..TCP_CONNECTIONS {
                let mut conn =
                    TcpStream::connect_timeout(&SocketAddr::new(ip, 8080), Duration::from_secs(5)).expect("connect");
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let msg = format!("hello {i}");
                conn.write_all(msg.as_bytes()).unwrap();
                let mut buf = [0u8; 64];
                let n = conn.read(&mut buf).expect("echo");
                assert_eq!(&buf[..n], msg.as_bytes());
            }
        })
        .join()
        .expect("client thread");
}

#[test]
fn agent_counts_real_tcp_and_udp_through_a_veth_pair() {
    require_root!();
    let client = Netns::new("cl");
    let lb = Netns::new("lb");
    veth(&client, "eth0", &lb, "eth0");
    client.ip(&["addr", "add", "10.201.0.1/24", "dev", "eth0"]);
    lb.ip(&["addr", "add", "10.201.0.2/24", "dev", "eth0"]);
    lb.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "eth0"]);
    client.ip(&["route", "add", &format!("{VIP4}/32"), "via", "10.201.0.2"]);
    client.ip(&["addr", "add", "fd00:201::1/64", "dev", "eth0", "nodad"]);
    lb.ip(&["addr", "add", "fd00:201::2/64", "dev", "eth0", "nodad"]);
    lb.ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "eth0", "nodad"]);
    client.ip(&["-6", "route", "add", &format!("{VIP6}/128"), "via", "fd00:201::2"]);

    let dir = tempdir();
    let config_path = dir.join("xlb.yaml");
    std::fs::write(&config_path, config()).unwrap();
    let socket = dir.join("admin.sock");
    let mut cmd = lb.command(xlb_bin().to_str().unwrap());
    cmd.args(["run", "--iface", "eth0", "--config"]).arg(&config_path).arg("--admin-socket").arg(&socket);
    let mut agent = Process::spawn(cmd, "xlb run");
    let before = wait_for("the agent's admin socket", Duration::from_secs(10), || stats(&socket));
    assert!(before.vips.iter().all(|v| v.packets == 0));
    let link = String::from_utf8(lb.ip(&["link", "show", "eth0"]).stdout).unwrap();
    assert!(link.contains("xdp"), "XDP is attached: {link}");

    for vip in [VIP4, VIP6] {
        let (udp_server, tcp_server) = serve(&lb, vip);
        drive(&client, vip);
        assert_eq!(udp_server.join().unwrap(), UDP_DATAGRAMS, "{vip}: the local stack got every datagram");
        assert_eq!(tcp_server.join().unwrap(), TCP_CONNECTIONS, "{vip}: every connection was echoed");
    }

    let after = stats(&socket).expect("stats after traffic");
    for name in ["udp4", "udp6"] {
        let vip = after.vip(name).unwrap();
        assert_eq!(vip.packets, UDP_DATAGRAMS as u64, "{name}: one count per datagram");
        assert!(vip.bytes > 42 * UDP_DATAGRAMS as u64, "{name}: bytes {}", vip.bytes);
    }
    for name in ["tcp4", "tcp6"] {
        // SYN, ACK, data, FIN/ACK at least, per connection, client to VIP.
        let packets = after.vip(name).unwrap().packets;
        assert!(packets >= 4 * TCP_CONNECTIONS as u64, "{name}: {packets} packets");
    }
    let vip_total: u64 = after.vips.iter().map(|v| v.packets).sum();
    assert_eq!(after.counter("vip_hit"), Some(vip_total));
    assert!(after.counter("pass_not_vip").unwrap() >= 2, "UDP to port 9 and ND/ARP replies are not VIP traffic");
    assert_eq!(after.counters.iter().filter(|c| c.malformed).map(|c| c.value).sum::<u64>(), 0);

    // Reload: an invalid file keeps the running config; a valid one drops the removed VIP.
    std::fs::write(&config_path, "vips:\n  - name: broken\n    address: not-an-ip\n").unwrap();
    // SAFETY: kill with our own child's pid and a valid signal number.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    let kept = stats(&socket).expect("agent still serving after an invalid reload");
    assert_eq!(kept.vips.len(), 4, "the old config keeps serving");
    assert_eq!(kept.vip("udp4").unwrap().packets, UDP_DATAGRAMS as u64, "counts survive the rejected reload");
    let without_tcp6 = config().split("  - name: tcp6").next().unwrap().to_owned();
    std::fs::write(&config_path, without_tcp6).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    let reloaded =
        wait_for("the reload to drop tcp6", Duration::from_secs(5), || stats(&socket).filter(|s| s.vips.len() == 3));
    assert!(reloaded.vip("tcp6").is_none());
    assert_eq!(reloaded.vip("udp4").unwrap().packets, UDP_DATAGRAMS as u64, "unchanged VIPs keep their counters");

    let status = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "xlb exits cleanly on SIGTERM: {status}");
    let link = String::from_utf8(lb.ip(&["link", "show", "eth0"]).stdout).unwrap();
    assert!(!link.contains("xdp"), "XDP detached on SIGTERM: {link}");
    assert!(!socket.exists(), "admin socket removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(xlb_tests::netns::unique_name("smoke"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
