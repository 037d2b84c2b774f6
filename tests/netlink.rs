//! Neighbour resolution over rtnetlink (`xlb::sources::neighbor`) against the real kernel: two
//! namespaces joined by a veth pair, the table read and solicited from namespace A for B's
//! addresses. Needs root.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use xlb::sources::{
    neighbor::{self, MacMap, Neighbor, Resolver},
    netlink,
};
use xlb_tests::netns::{Netns, sh, veth, wait_for};

const A_IF: &str = "xnl-a";
const B_IF: &str = "xnl-b";
const B_V4: &str = "10.213.0.2";
const B_V6: &str = "fd00:213::2";
/// On the link, but nobody has it: never answers.
const SILENT_V4: &str = "10.213.0.99";
const NEW_B_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x21, 0x30, 0x02];

fn ip(addr: &str) -> IpAddr {
    addr.parse().unwrap()
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap_or_else(|b| panic!("not a MAC: {text} ({b:?})"))
}

fn format_map(map: &MacMap) -> String {
    let entries: Vec<String> = map
        .iter()
        .map(|(addr, m)| {
            format!("{addr}={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
        })
        .collect();
    format!("{{{}}}", entries.join(", "))
}

/// Runs `f` on a thread inside `ns` and re-raises its panic (with its own message) here.
fn run_in<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    ns.run(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Namespaces A and B, joined by `A_IF` — `B_IF`, with 10.213.0.1/24 and fd00:213::1/64 on A and
/// .2 / ::2 on B (IPv6 without duplicate address detection, usable at once).
struct Pair {
    a: Netns,
    b: Netns,
}

impl Pair {
    fn new() -> Self {
        let a = Netns::new("nla");
        let b = Netns::new("nlb");
        veth(&a, A_IF, &b, B_IF);
        a.ip(&["addr", "add", "10.213.0.1/24", "dev", A_IF]);
        a.ip(&["addr", "add", "fd00:213::1/64", "dev", A_IF, "nodad"]);
        b.ip(&["addr", "add", &format!("{B_V4}/24"), "dev", B_IF]);
        b.ip(&["addr", "add", &format!("{B_V6}/64"), "dev", B_IF, "nodad"]);
        Self { a, b }
    }

    /// B's MAC, as `ip link` reports it.
    fn b_mac(&self) -> [u8; 6] {
        let out = self.b.ip(&["-j", "link", "show", "dev", B_IF]);
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j link prints JSON");
        parse_mac(links[0]["address"].as_str().expect("the link has an address"))
    }

    /// Sets an `ip neigh` timer sysctl of A's interface for IPv4 and IPv6.
    fn a_neigh_sysctl(&self, name: &str, value: &str) {
        for family in ["ipv4", "ipv6"] {
            let key = format!("net.{family}.neigh.{A_IF}.{name}={value}");
            let out = self.a.command("sysctl").args(["-w", &key]).output().expect("run sysctl");
            assert!(out.status.success(), "sysctl -w {key}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn entry(neighbors: &[Neighbor], index: u32, addr: IpAddr) -> Option<Neighbor> {
    neighbors.iter().find(|n| n.ifindex == index && n.addr == addr).cloned()
}

#[test]
fn dump_shows_what_solicit_resolves_v4_and_v6() {
    xlb_tests::require_root!();
    let pair = Pair::new();
    let b_mac = pair.b_mac();
    run_in(&pair.a, move || {
        let index = netlink::ifindex(A_IF).expect("A's interface has an index");
        let e = netlink::ifindex("xnl-missing").unwrap_err();
        assert!(e.to_string().contains("xnl-missing"), "{e}");
        for addr in [ip(B_V4), ip(B_V6)] {
            let before = entry(&neighbor::dump().expect("dump"), index, addr);
            assert!(
                before.as_ref().is_none_or(|n| !neighbor::is_usable(n.state)),
                "nothing talked to {addr} yet: {before:?}"
            );
            let start = Instant::now();
            neighbor::solicit(A_IF, addr).expect("solicit");
            let resolved = wait_for(&format!("a usable entry for {addr}"), Duration::from_secs(5), || {
                entry(&neighbor::dump().expect("dump"), index, addr).filter(|n| neighbor::is_usable(n.state))
            });
            eprintln!("{addr}: resolved by solicit in {:?} ({resolved:?})", start.elapsed());
            assert_eq!(resolved.mac, Some(b_mac), "{addr} resolves to B's MAC");
        }
        // The dump holds both families, and other entries of the namespace (all interfaces) too.
        let all = neighbor::dump().expect("dump");
        assert!(all.iter().any(|n| n.addr.is_ipv4()) && all.iter().any(|n| n.addr.is_ipv6()), "{all:?}");
    });
}

/// Follows the published map, checking on every wake-up that it really changed and never holds
/// the silent target.
struct Watcher {
    rx: tokio::sync::watch::Receiver<MacMap>,
    last: MacMap,
    wakeups: usize,
}

impl Watcher {
    async fn until(&mut self, what: &str, timeout: Duration, done: impl Fn(&MacMap) -> bool) -> Duration {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.last) {
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Err(_) => {
                    panic!("timed out after {timeout:?} waiting for {what}; the map is {}", format_map(&self.last))
                }
                Ok(Err(_)) => panic!("the resolver stopped while waiting for {what}"),
                Ok(Ok(())) => {}
            }
            let map = self.rx.borrow_and_update().clone();
            assert_ne!(map, self.last, "woken without a change to the map");
            assert!(!map.contains_key(&ip(SILENT_V4)), "{SILENT_V4} never answers: {}", format_map(&map));
            eprintln!("  +{:?}: {}", start.elapsed(), format_map(&map));
            self.last = map;
            self.wakeups += 1;
        }
        start.elapsed()
    }
}

#[test]
fn resolver_publishes_and_follows_mac_changes() {
    xlb_tests::require_root!();
    let pair = Pair::new();
    let old_mac = pair.b_mac();
    assert_ne!(old_mac, NEW_B_MAC);
    // Short neighbour timers on A so that an entry goes stale within about a second of its last
    // confirmation, and the resolver's re-verification (stale → delay → unicast probe, which the
    // moved MAC does not answer → failed → re-solicited) shows a MAC change in a few seconds
    // without flushing anything. With the defaults (base_reachable_time 30 s, reachable for
    // 15-45 s, delay_first_probe_time 5 s) the same sequence takes up to about a minute.
    pair.a_neigh_sysctl("base_reachable_time_ms", "1000");
    pair.a_neigh_sysctl("delay_first_probe_time", "1");
    let b_name = pair.b.name.clone();
    run_in(&pair.a, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(async move {
            let (v4, v6, silent) = (ip(B_V4), ip(B_V6), ip(SILENT_V4));
            let on_a = |addrs: &[IpAddr]| addrs.iter().map(|a| (*a, A_IF.to_owned())).collect();
            let (mut resolver, rx) = Resolver::start(on_a(&[v4, v6, silent]));
            let mut watcher = Watcher { rx, last: MacMap::new(), wakeups: 0 };
            assert!(watcher.rx.borrow().is_empty(), "the map starts empty");

            let took = watcher
                .until("B's MAC for both addresses", Duration::from_secs(10), |m| {
                    m.get(&v4) == Some(&old_mac) && m.get(&v6) == Some(&old_mac)
                })
                .await;
            eprintln!("learned B's MAC for {v4} and {v6} in {took:?}");

            sh("ip", &["-n", &b_name, "link", "set", "dev", B_IF, "address", "02:00:00:21:30:02"]);
            let took = watcher
                .until("B's new MAC for both addresses", Duration::from_secs(15), |m| {
                    m.get(&v4) == Some(&NEW_B_MAC) && m.get(&v6) == Some(&NEW_B_MAC)
                })
                .await;
            eprintln!("followed B's MAC change in {took:?}");

            // The silent target was solicited (the kernel has an entry for it, resolving or
            // failed) and is not in the map (the watcher checked every version of it).
            let index = netlink::ifindex(A_IF).expect("ifindex");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let silent_entry = entry(&neighbor::dump().expect("dump"), index, silent);
                if let Some(n) = silent_entry {
                    assert!(!neighbor::is_usable(n.state), "nobody answers for {silent}: {n:?}");
                    break;
                }
                assert!(Instant::now() < deadline, "the resolver never solicited {silent}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(!watcher.last.contains_key(&silent));

            // A reload that drops a target takes it out of the map at once; kept ones stay.
            resolver.replace(on_a(&[v4, silent]));
            let took = watcher
                .until("the dropped target to leave the map", Duration::from_secs(3), |m| {
                    *m == BTreeMap::from([(v4, NEW_B_MAC)])
                })
                .await;
            eprintln!("replace took effect in {took:?}; {} wake-ups in all", watcher.wakeups);

            // Dropping the resolver stops its task: the channel closes.
            drop(resolver);
            let closed =
                tokio::time::timeout(Duration::from_secs(5), async { while watcher.rx.changed().await.is_ok() {} })
                    .await;
            assert!(closed.is_ok(), "the resolver's task outlived it");
        });
    });
}
