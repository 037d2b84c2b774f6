//! Neighbour resolution over rtnetlink (`xlb::sources::neighbor`) against the real kernel: two
//! namespaces joined by a veth pair, the table read, solicited and managed from namespace A for
//! B's addresses, changes followed through the kernel's notifications. Needs root.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use xlb::sources::{
    neighbor::{self, MacMap, Neighbor, Options, Resolver},
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

/// The namespace's neighbour table, read through the resolver's own dump (call inside the
/// namespace).
fn dump() -> Vec<Neighbor> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(dump_async())
}

async fn dump_async() -> Vec<Neighbor> {
    let (handle, _notifications) = netlink::subscribe(&[]).expect("a netlink socket");
    neighbor::dump(&handle).await.expect("dump")
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
            let before = entry(&dump(), index, addr);
            assert!(
                before.as_ref().is_none_or(|n| !neighbor::is_usable(n.state)),
                "nothing talked to {addr} yet: {before:?}"
            );
            let start = Instant::now();
            neighbor::solicit(A_IF, addr).expect("solicit");
            let resolved = wait_for(&format!("a usable entry for {addr}"), Duration::from_secs(5), || {
                entry(&dump(), index, addr).filter(|n| neighbor::is_usable(n.state))
            });
            eprintln!("{addr}: resolved by solicit in {:?} ({resolved:?})", start.elapsed());
            assert_eq!(resolved.mac, Some(b_mac), "{addr} resolves to B's MAC");
        }
        // The dump holds both families, and other entries of the namespace (all interfaces) too.
        let all = dump();
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
            // The kernel keeps them: managed entries, marked as xlb's.
            let index = netlink::ifindex(A_IF).expect("ifindex");
            let table = dump_async().await;
            for addr in [v4, v6] {
                let n = entry(&table, index, addr).expect("an entry");
                assert!(n.managed && n.ours, "{addr}: {n:?}");
            }

            sh("ip", &["-n", &b_name, "link", "set", "dev", B_IF, "address", "02:00:00:21:30:02"]);
            let took = watcher
                .until("B's new MAC for both addresses", Duration::from_secs(15), |m| {
                    m.get(&v4) == Some(&NEW_B_MAC) && m.get(&v6) == Some(&NEW_B_MAC)
                })
                .await;
            eprintln!("followed B's MAC change in {took:?}");

            // The silent target was solicited (the kernel has an entry for it, resolving or
            // failed) and is not in the map (the watcher checked every version of it).
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let silent_entry = entry(&dump_async().await, index, silent);
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
            // The dropped target's managed entry is removed from the kernel's table.
            let deadline = Instant::now() + Duration::from_secs(3);
            while entry(&dump_async().await, index, v6).is_some_and(|n| n.managed) {
                assert!(Instant::now() < deadline, "the managed entry of the dropped {v6} stayed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }

            // Dropping the resolver stops its task: the channel closes.
            drop(resolver);
            let closed =
                tokio::time::timeout(Duration::from_secs(5), async { while watcher.rx.changed().await.is_ok() {} })
                    .await;
            assert!(closed.is_ok(), "the resolver's task outlived it");
        });
    });
}

/// Runs `f` with a resolver on A for B's two addresses, on a runtime inside A.
fn with_resolver<F: std::future::Future<Output = ()>>(
    pair: &Pair,
    options: Options,
    f: impl FnOnce(Resolver, Watcher) -> F + Send + 'static,
) {
    run_in(&pair.a, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(async move {
            let targets = [ip(B_V4), ip(B_V6)].into_iter().map(|a| (a, A_IF.to_owned())).collect();
            let (resolver, rx) = Resolver::start_with(targets, options);
            f(resolver, Watcher { rx, last: MacMap::new(), wakeups: 0 }).await;
        });
    });
}

#[test]
fn a_mac_change_is_followed_by_notification_within_a_second() {
    xlb_tests::require_root!();
    let pair = Pair::new();
    let old_mac = pair.b_mac();
    // B announces its new MAC (gratuitous ARP, unsolicited NA) as hosts configured for fail-over
    // do; A's timers stay at their defaults and the resolver reads the table only once an hour,
    // so only the kernel's notification can carry the change within the second.
    for key in [format!("net.ipv4.conf.{B_IF}.arp_notify=1"), format!("net.ipv6.conf.{B_IF}.ndisc_notify=1")] {
        let out = pair.b.command("sysctl").args(["-w", &key]).output().expect("run sysctl");
        assert!(out.status.success(), "sysctl -w {key}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let b_name = pair.b.name.clone();
    let options = Options { managed: true, reread: Duration::from_secs(3600) };
    with_resolver(&pair, options, move |resolver, mut watcher| async move {
        let _running = resolver;
        let (v4, v6) = (ip(B_V4), ip(B_V6));
        watcher
            .until("B's MAC", Duration::from_secs(10), |m| m.get(&v4) == Some(&old_mac) && m.get(&v6) == Some(&old_mac))
            .await;
        // Past the kernel's lock time (1 s), within which a gratuitous ARP does not override.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        sh("ip", &["-n", &b_name, "link", "set", "dev", B_IF, "address", "02:00:00:21:30:02"]);
        let took = watcher
            .until("B's new MAC", Duration::from_secs(1), |m| {
                m.get(&v4) == Some(&NEW_B_MAC) && m.get(&v6) == Some(&NEW_B_MAC)
            })
            .await;
        eprintln!("a MAC change reached the published map in {took:?}, without a poll");
    });
}

#[test]
fn without_managed_entries_targets_are_solicited_and_resolved() {
    xlb_tests::require_root!();
    let pair = Pair::new();
    let mac = pair.b_mac();
    // An operator's static entry for a third address is used as it is and left alone.
    let static_mac = "02:00:00:21:30:77";
    pair.a.ip(&["neigh", "add", "10.213.0.77", "dev", A_IF, "lladdr", static_mac, "nud", "permanent"]);
    let options = Options { managed: false, reread: Duration::from_secs(30) };
    with_resolver(&pair, options, move |mut resolver, mut watcher| async move {
        let (v4, v6, fixed) = (ip(B_V4), ip(B_V6), ip("10.213.0.77"));
        let took = watcher
            .until("B's MAC by solicitation", Duration::from_secs(10), |m| {
                m.get(&v4) == Some(&mac) && m.get(&v6) == Some(&mac)
            })
            .await;
        eprintln!("resolved by solicitation in {took:?}");
        let index = netlink::ifindex(A_IF).expect("ifindex");
        let table = dump_async().await;
        for addr in [v4, v6] {
            let n = entry(&table, index, addr).expect("an entry");
            assert!(!n.managed && !n.ours, "soliciting makes no managed entry: {n:?}");
        }
        let mut targets: BTreeMap<IpAddr, String> = [v4, fixed].into_iter().map(|a| (a, A_IF.to_owned())).collect();
        resolver.replace(targets.clone());
        watcher
            .until("the static entry's MAC", Duration::from_secs(3), |m| {
                m.get(&fixed) == Some(&parse_mac(static_mac)) && !m.contains_key(&v6)
            })
            .await;
        targets.remove(&fixed);
        resolver.replace(targets);
        watcher.until("the static target dropped", Duration::from_secs(3), |m| !m.contains_key(&fixed)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = entry(&dump_async().await, index, fixed).expect("the operator's entry stays");
        assert!(n.is_static() && n.mac == Some(parse_mac(static_mac)), "{n:?}");
    });
}
