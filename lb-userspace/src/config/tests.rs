//! Unit tests of parsing and checking a configuration.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

pub(super) fn check(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("test.yaml"), text)
}

const NODE: &str =
    "node:\n  next_hop_mac: 02:00:00:00:00:fe\n  tunnel_source_v4: 10.0.0.0/24\n  tunnel_source_v6: fd00::1\n";

fn vip(extra: &str) -> String {
    format!(
        "{NODE}vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n{extra}"
    )
}

#[test]
fn parses_a_valid_file() {
    let config = check(&vip(
            "    hash: source-ip\n    unhashable: drop\n    backends:\n      - address: 10.1.0.1\n        weight: 3\n      - address: fd00:1::1\n        mac: 02:00:00:00:01:01\n",
        ))
        .unwrap();
    let v = &config.vips[0];
    assert_eq!(v.endpoint(), "192.0.2.10:80/tcp");
    assert_eq!(
        (v.mode, v.hash, v.unhashable, v.table_size),
        (Mode::DsrIpip, HashFields::SourceIp, Unhashable::Drop, 16381)
    );
    assert_eq!(v.backends[0].weight, 3);
    assert_eq!(v.backends[1].mac, Some(Mac([2, 0, 0, 0, 1, 1])));
    assert_eq!(config.node.tunnel_source_v4.unwrap().len, 24);
    assert_eq!(config.node.tunnel_source_v6.unwrap().len, 128);
}

#[test]
fn unknown_field_names_line_and_column() {
    let err = check("vips:\n  - name: web\n    adress: 192.0.2.10\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test.yaml:3:"), "{text}");
    assert!(text.contains("adress"), "{text}");
    assert!(!text.contains("line 3"), "location printed once: {text}");
}

#[test]
fn bad_values_are_syntax_errors_with_location() {
    let err = check("vips:\n  - name: web\n    address: 192.0.2.300\n").unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { line: 3, column: 14, .. }), "{err}");
    let err = check("node:\n  next_hop_mac: 02:00:00:00:00\n").unwrap_err();
    assert!(err.to_string().contains("not a MAC address"), "{err}");
}

#[test]
fn semantic_errors_name_the_field_and_the_fix() {
    let cases = [
            (vip("    maglev_table_size: 65536\n"), "vips[0].maglev_table_size", "prime"),
            (
                vip("    backends:\n      - address: 10.1.0.1\n      - address: 10.1.0.1\n"),
                "vips[0].backends[1].address",
                "twice",
            ),
            (
                vip("    backends:\n      - address: 10.1.0.1\n        weight: 70000\n"),
                "vips[0].backends[0].weight",
                "scale",
            ),
            (
                "node:\n  next_hop_v4: fd00::1\n".to_string(),
                "node.next_hop_v4",
                "IPv4 address",
            ),
            (
                "vips:\n  - name: l2\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n      - address: fd00::1\n        mac: 02:00:00:00:00:01\n".to_string(),
                "vips[0].backends[0].address",
                "family",
            ),
            (
                "vips:\n  - name: t\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n    backends:\n      - address: 10.1.0.1\n        mac: 02:00:00:00:00:01\n".to_string(),
                "vips[0].backends[0].address",
                "node.tunnel_source_v4",
            ),
            (
                format!(
                    "{NODE}vips:\n  - name: t\n    address: 2001:db8::1\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n    backends:\n      - address: 10.1.0.1\n"
                ),
                "vips[0].backends[0].address",
                "IPv6 backends",
            ),
        ];
    for (text, field, hint) in cases {
        let err = check(&text).unwrap_err().to_string();
        assert!(err.contains(field) && err.contains(hint), "expected {field} / {hint}: {err}");
    }
}

#[test]
fn port_ranges_parse_and_are_checked() {
    let vip = |port: &str, protocol: &str| {
        format!(
            "vips:\n  - name: r\n    address: 192.0.2.1\n    port: {port}\n    protocol: {protocol}\n    mode: dsr-l2\n    backends: [{{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }}]\n"
        )
    };
    let config = check(&vip("8000-8099", "tcp")).unwrap();
    let v = &config.vips[0];
    assert_eq!((v.port, v.port_last, v.is_port_range()), (8000, 8099, true));
    assert_eq!(v.endpoint(), "192.0.2.1:8000-8099/tcp");
    let one = check(&vip("443", "tcp")).unwrap();
    assert_eq!((one.vips[0].port, one.vips[0].port_last, one.vips[0].is_port_range()), (443, 443, false));
    for (text, hint) in [
        (vip("8099-8000", "tcp"), "vips[0].port: `8099-8000`: the range is empty"),
        (vip("80-x", "tcp"), "`80-x` is not a port or a port range"),
        (vip("1-2", "icmp"), "an icmp VIP has no port"),
    ] {
        let err = check(&text).unwrap_err().to_string();
        assert!(err.contains(hint), "expected {hint}: {err}");
    }
    let two = format!(
        "{}{}",
        vip("8000-8099", "udp"),
        vip("9000-9099", "udp").replace("vips:\n", "").replace("name: r", "name: s")
    );
    let err = check(&two).unwrap_err().to_string();
    assert!(err.contains("a second port range on the same address and protocol"), "{err}");
    let mixed = format!(
        "{}{}",
        vip("8000-8099", "tcp"),
        vip("8080", "tcp").replace("vips:\n", "").replace("name: r", "name: s")
    );
    assert!(check(&mixed).is_ok(), "a single port inside a range is allowed: it takes precedence");
}

#[test]
fn agent_listeners_are_read_and_checked() {
    let config = check(
            "agent:\n  admin_socket: /run/xlb/edge.sock\n  metrics_listen: 127.0.0.1:9842\n  state_dir: /var/lib/xlb/edge\n",
        )
        .unwrap();
    assert_eq!(config.agent.admin_socket, Some(PathBuf::from("/run/xlb/edge.sock")));
    assert_eq!(config.agent.state_dir, Some(PathBuf::from("/var/lib/xlb/edge")));
    assert_eq!(config.agent.metrics_listen, Some("127.0.0.1:9842".parse().unwrap()));
    assert_eq!(check("vips: []\n").unwrap().agent, AgentListeners::default());
    let err = check("agent:\n  metrics_listen: localhost\n").unwrap_err().to_string();
    assert!(err.contains(":2:19:") && err.contains("`localhost` is not an address and port"), "{err}");
    let err = check("agent:\n  metrics: 127.0.0.1:1\n").unwrap_err().to_string();
    assert!(err.contains("`metrics` is not a field in agent; did you mean `metrics_listen`?"), "{err}");
}

#[test]
fn short_tunnel_prefixes_are_rejected() {
    let err = check("node:\n  tunnel_source_v4: 10.0.0.0/8\n").unwrap_err().to_string();
    assert!(err.contains("node.tunnel_source_v4") && err.contains("/16"), "{err}");
    let err = check("node:\n  tunnel_source_v6: fd00::/64\n").unwrap_err().to_string();
    assert!(err.contains("node.tunnel_source_v6") && err.contains("/96"), "{err}");
}

#[test]
fn duplicates_and_conflicting_policies_are_rejected() {
    let two = |a: &str, b: &str| {
        format!(
            "{NODE}vips:\n  - name: a\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n    backends: [{{ address: 10.0.0.1 }}]\n{a}  - name: b\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n    backends: [{{ address: 10.0.0.1 }}]\n{b}"
        )
    };
    let err = check(&two("", "")).unwrap_err().to_string();
    assert!(err.contains("vips[1].address") && err.contains("`a`") && err.contains("line"), "{err}");
    let err = check(&two("", "").replacen("name: b", "name: a", 1)).unwrap_err().to_string();
    assert!(err.contains("vips[1].name"), "{err}");
    let err = check(&two("    unhashable: drop\n", "    unhashable: pass\n").replacen("port: 80", "port: 81", 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("vips[1].unhashable") && err.contains("must agree"), "{err}");
}

#[test]
fn ports_follow_the_protocol() {
    let err = check("vips:\n  - name: a\n    address: 192.0.2.10\n    protocol: udp\n    mode: dsr-l2\n").unwrap_err();
    assert!(err.to_string().contains("vips[0].port"), "{err}");
    let err = check("vips:\n  - name: a\n    address: 192.0.2.10\n    port: 7\n    protocol: icmp\n    mode: dsr-l2\n")
        .unwrap_err();
    assert!(err.to_string().contains("no port"), "{err}");
}

pub(super) fn checked(extra: &str) -> String {
    vip(&format!(
        "    backends:\n      - address: 10.1.0.1\n      - address: 10.1.0.2\n        health_check: {{ type: tcp, port: 8080 }}\n{extra}"
    ))
}

#[test]
fn panic_threshold_defaults_to_half_and_takes_percentages() {
    assert_eq!(check(&checked("")).unwrap().vips[0].panic_threshold, DEFAULT_PANIC_THRESHOLD);
    for (text, want) in [("25%", 25), ("0", 0), ("100 %", 100), ("\"75%\"", 75)] {
        let config = check(&checked(&format!("    panic_threshold: {text}\n"))).unwrap();
        assert_eq!(config.vips[0].panic_threshold, want, "{text}");
    }
    for bad in ["101%", "-5", "12.5%", "half"] {
        let err = check(&checked(&format!("    panic_threshold: {bad}\n"))).unwrap_err();
        let ConfigError::Invalid { line, column, field, message, .. } = &err else { panic!("{err:?}") };
        assert_eq!(field, "vips[0].panic_threshold", "{bad}");
        // The value's own place: the last line of `checked`, after `panic_threshold: `.
        assert_eq!((*line, *column), (15, 22), "{bad}: {err}");
        assert_eq!(
            message,
            &format!(
                "`{bad}` is not a percentage; write a whole number from 0 to 100 such as `50%` (0 turns panic mode off)"
            )
        );
    }
}

#[test]
fn health_checks_default_and_resolve_ports() {
    let config = check(&checked("    health_check:\n      type: tcp\n")).unwrap();
    let v = &config.vips[0];
    let default = HealthCheck {
        kind: CheckKind::Tcp { port: 80 },
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    };
    assert_eq!(v.health_check, Some(default.clone()));
    assert_eq!(v.min_healthy, 1);
    assert_eq!(v.check_for(&v.backends[0]), Some(&default));
    let own = v.check_for(&v.backends[1]).unwrap();
    assert_eq!(own, &HealthCheck { kind: CheckKind::Tcp { port: 8080 }, ..default });

    // No VIP check: only the backend with its own is checked.
    let config = check(&checked("")).unwrap();
    let v = &config.vips[0];
    assert_eq!((v.check_for(&v.backends[0]), v.check_for(&v.backends[1]).is_some()), (None, true));
}

#[test]
fn a_nat_backend_s_check_probes_its_own_port() {
    let nat = |check: &str| {
        format!(
            "vips:\n  - name: n\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: nat\n{check}    backends:\n      - {{ address: 10.1.0.1, port: 8080 }}\n      - address: 10.1.0.2\n      - {{ address: 10.1.0.3, port: 9000, health_check: {{ type: http }} }}\n"
        )
    };
    let ports = |config: &Config| -> Vec<Option<u16>> {
        let v = &config.vips[0];
        v.backends.iter().map(|b| v.check_for(b).map(|c| c.kind.port())).collect()
    };
    // The VIP's check without a port: each backend's own port, else the VIP's.
    let config = check(&nat("    health_check: { type: tcp }\n")).unwrap();
    assert_eq!(ports(&config), [Some(8080), Some(80), Some(9000)]);
    // A port named in the check is the port probed.
    let config = check(&nat("    health_check: { type: tcp, port: 7000 }\n")).unwrap();
    assert_eq!(ports(&config), [Some(7000), Some(7000), Some(9000)]);
    // No VIP check: only the backend with its own.
    let config = check(&nat("")).unwrap();
    assert_eq!(ports(&config), [None, None, Some(9000)]);
}

#[test]
fn http_and_udp_checks_parse() {
    let config = check(&checked(
            "    min_healthy: 2\n    health_check:\n      type: http\n      port: 8443\n      interval: 500ms\n      timeout: 250ms\n      rise: 1\n      fall: 1\n      path: /healthz?full=1\n      host: www.example.com\n      expect_status: 204\n      expect_body: ready\n",
        ))
        .unwrap();
    let v = &config.vips[0];
    assert_eq!(v.min_healthy, 2);
    assert_eq!(
        v.health_check,
        Some(HealthCheck {
            kind: CheckKind::Http(Box::new(HttpCheck {
                port: 8443,
                method: "GET".into(),
                path: "/healthz?full=1".into(),
                host: Some("www.example.com".into()),
                expect_status: vec![(204, 204)],
                expect_body: Some("ready".into()),
                headers: Vec::new(),
                http2: false,
                tls: None,
            })),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            rise: 1,
            fall: 1,
        })
    );
    let config = check(
            "vips:\n  - name: ping\n    address: 192.0.2.1\n    protocol: icmp\n    mode: dsr-l2\n    backends: [{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }]\n    health_check:\n      type: udp\n      port: 53\n      interval: 1m\n      send: \"\\x00ping\"\n      expect: pong\n",
        )
        .unwrap();
    let udp = config.vips[0].health_check.as_ref().unwrap();
    assert_eq!(udp.kind, CheckKind::Udp { port: 53, send: b"\0ping".to_vec(), expect: Some(b"pong".to_vec()) });
    assert_eq!(udp.interval, Duration::from_secs(60));
    let config = check(&checked("    health_check: { type: http }\n")).unwrap();
    let CheckKind::Http(http) = &config.vips[0].health_check.as_ref().unwrap().kind else { panic!("http") };
    assert_eq!((http.port, http.path.as_str(), &http.expect_status, http.http2), (80, "/", &vec![(200, 200)], false));
}

const NAT: &str = "nat_pools:\n  - name: edge\n    addresses: [198.51.100.1, 198.51.100.2]\n    ports: 20000-20999\nvips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: nat\n";

#[test]
fn nat_vips_and_pools_parse_with_defaults() {
    let config = check(&format!(
            "{NAT}    snat_pool: edge\n    backends:\n      - {{ address: 10.1.0.1, port: 8080 }}\n      - {{ address: 10.1.0.2 }}\n"
        ))
        .unwrap();
    let vip = &config.vips[0];
    assert_eq!(vip.mode, Mode::Nat);
    assert_eq!(vip.snat_pool.as_deref(), Some("edge"));
    assert_eq!(vip.backends[0].port, Some(8080));
    assert_eq!(vip.backends[1].port, None);
    assert_eq!(config.nat_pools[0].capacity(), 2000);
    assert_eq!(config.node.nat_table_size, lb_common::NAT_TABLE_SIZE);
    assert_eq!(config.node.nat_tcp_timeout, Duration::from_secs(900));
    assert_eq!(config.node.nat_closing_timeout, Duration::from_secs(10));
    assert_eq!(config.node.nat_udp_timeout, Duration::from_secs(60));
    let dnat = check(&format!("{NAT}    backends:\n      - {{ address: 10.1.0.1 }}\n")).unwrap();
    assert_eq!(dnat.vips[0].snat_pool, None, "no pool: DNAT only");
}

#[test]
fn bad_nat_config_names_the_field_and_the_fix() {
    let cases = [
        (
            format!("{NAT}    snat_pool: edgy\n"),
            "vips[0].snat_pool",
            "no pool named `edgy` under nat_pools (known: edge); add it or fix the name",
        ),
        (
            vip("    snat_pool: edge\n"),
            "vips[0].snat_pool",
            "`edge`: only mode: nat uses a source pool; remove it or set mode: nat",
        ),
        (
            vip("    backends:\n      - { address: 10.1.0.1, port: 8080 }\n"),
            "vips[0].backends[0].port",
            "`8080`: only mode: nat translates ports; direct server return keeps the VIP's port, so remove `port`",
        ),
        (
            vip("    backends:\n      - { address: 10.1.0.1, interface: eth1 }\n"),
            "vips[0].backends[0].interface",
            "`eth1`: only mode: nat sends to backends by another interface; direct server return answers by the one the packet came in on, so remove `interface`",
        ),
        (
            format!("{NAT}    backends:\n      - {{ address: 10.1.0.1, interface: \"a/b\" }}\n"),
            "vips[0].backends[0].interface",
            "`a/b` is not an interface name",
        ),
        (
            NAT.replace("protocol: tcp", "protocol: icmp").replace("    port: 80\n", ""),
            "vips[0].mode",
            "`nat`: NAT translates ports: use it with tcp or udp VIPs",
        ),
        (
            format!("{NAT}    backends:\n      - {{ address: \"fd00::1\" }}\n"),
            "vips[0].backends[0].address",
            "`fd00::1`: NAT between address families is not supported: give the VIP backends of its own family",
        ),
        (
            NAT.replace("ports: 20000-20999", "ports: 0-10"),
            "nat_pools[0].ports",
            "`0-10` is not a usable range; write first-last within 1 to 65535, e.g. 20000-59999",
        ),
        (
            NAT.replace("    ports: 20000-20999\n", ""),
            "nat_pools[0].ports",
            "required: the source ports to use, e.g. ports: 20000-59999",
        ),
        (
            NAT.replace("198.51.100.2", "\"2001:db8::1\""),
            "nat_pools[0].addresses[1]",
            "`2001:db8::1` is of the other family than the pool's first address; make one pool per family",
        ),
        (
            NAT.replace("198.51.100.2", "198.51.100.1"),
            "nat_pools[0].addresses[1]",
            "`198.51.100.1` is listed twice; list each address once",
        ),
        (
            format!("{NAT}    backends: [{{ address: 10.1.0.1 }}]\n").replace("198.51.100.2", "192.0.2.10"),
            "nat_pools[0].addresses[1]",
            "`192.0.2.10` is also the address of VIP `web`; give the pool addresses of its own",
        ),
        (
            format!("node:\n  nat_udp_timeout: 500ms\n{NAT}"),
            "node.nat_udp_timeout",
            "`500ms`: NAT timeouts count whole seconds: use 1s or more (e.g. 30s, 15m, 2h)",
        ),
    ];
    for (text, field, message) in cases {
        match check(&text) {
            Err(ConfigError::Invalid { field: f, message: m, .. }) => {
                assert_eq!((f.as_str(), m.as_str()), (field, message), "{text}")
            }
            other => panic!("{text}: expected an error on {field}, got {other:?}"),
        }
    }
}

#[test]
fn bad_health_checks_name_the_field_and_the_fix() {
    let vip_check = |body: &str| checked(&format!("    health_check:\n{body}"));
    let cases = [
            (
                vip_check("      type: tcp\n      interval: 2\n"),
                "vips[0].health_check.interval",
                "`2` has no unit; write `2s` for seconds (or 2ms, 2m, 2h)",
            ),
            (
                vip_check("      type: tcp\n      timeout: 1.5s\n"),
                "vips[0].health_check.timeout",
                "`1.5s` has a fraction; write a whole number with one unit: 500ms, 2s, 1m or 1h: write `1500ms`",
            ),
            (
                vip_check("      type: tcp\n      interval: 50ms\n"),
                "vips[0].health_check.interval",
                "`50ms`: out of range; use 100ms to 1h",
            ),
            (
                vip_check("      type: tcp\n      interval: 1s\n      timeout: 1s\n"),
                "vips[0].health_check.timeout",
                "`1s`: must be above 0 and shorter than the interval (1s), so probes never overlap",
            ),
            (
                vip_check("      type: tcp\n      timeout: 0ms\n"),
                "vips[0].health_check.timeout",
                "`0ms`: must be above 0 and shorter than the interval (2s), so probes never overlap",
            ),
            (
                vip_check("      type: tcp\n      rise: 0\n"),
                "vips[0].health_check.rise",
                "`0`: use 1 to 100 consecutive results (1 reacts to a single probe)",
            ),
            (
                vip_check("      type: tcp\n      fall: 101\n"),
                "vips[0].health_check.fall",
                "`101`: use 1 to 100 consecutive results (1 reacts to a single probe)",
            ),
            (
                vip_check("      type: tcp\n      port: 0\n"),
                "vips[0].health_check.port",
                "`0`: must be 1 to 65535, or left out to check the VIP's port",
            ),
            (
                vip_check("      type: tcp\n      path: /\n"),
                "vips[0].health_check.path",
                "`/`: only http and https checks have `path`; remove it from this tcp check",
            ),
            (
                vip_check("      type: http\n      send: x\n"),
                "vips[0].health_check.send",
                "`x`: only udp checks have `send`; remove it from this http check",
            ),
            (
                vip_check("      type: http\n      path: healthz\n"),
                "vips[0].health_check.path",
                "`healthz` must start with `/` and have no spaces (e.g. /healthz)",
            ),
            (
                vip_check("      type: http\n      host: a b\n"),
                "vips[0].health_check.host",
                "`a b` is not a host name; write it as it goes in the Host header (e.g. www.example.com)",
            ),
            (
                vip_check("      type: http\n      expect_status: 600\n"),
                "vips[0].health_check.expect_status",
                "`600` is not an HTTP status or range; use codes 100 to 599 (e.g. 200, or 200-399)",
            ),
            (
                vip_check("      type: http\n      expect_body: \"\"\n"),
                "vips[0].health_check.expect_body",
                "an empty string matches every body; remove it or give the text to look for",
            ),
            (
                vip_check("      type: udp\n"),
                "vips[0].health_check.send",
                "missing or empty: a udp check needs a payload that the service answers (e.g. send: \"ping\")",
            ),
            (
                vip_check("      type: udp\n      send: ping\n      expect: \"\"\n"),
                "vips[0].health_check.expect",
                "an empty string matches every reply; remove it to accept any reply",
            ),
            (
                checked("").replace("port: 8080", "rise: 0"),
                "vips[0].backends[1].health_check.rise",
                "`0`: use 1 to 100 consecutive results (1 reacts to a single probe)",
            ),
            (
                checked("    min_healthy: 3\n"),
                "vips[0].min_healthy",
                "`3` is more than the VIP's 2 backends, so it could never be up; lower it",
            ),
            (
                checked("    min_healthy: 0\n"),
                "vips[0].min_healthy",
                "`0`: must be at least 1: a VIP with no healthy backend is down whatever this says",
            ),
            (
                "vips:\n  - name: ping\n    address: 192.0.2.1\n    protocol: icmp\n    mode: dsr-l2\n    backends: [{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }]\n    health_check: { type: tcp }\n".into(),
                "vips[0].health_check.port",
                "an icmp VIP has no port to check by default; set the port the backends' service listens on",
            ),
        ];
    for (text, want_field, want_message) in cases {
        match check(&text) {
            Err(ConfigError::Invalid { field, message, .. }) => {
                assert_eq!((field.as_str(), message.as_str()), (want_field, want_message), "{text}")
            }
            other => panic!("{want_field}: expected a validation error, got {other:?}\n{text}"),
        }
    }
}

#[test]
fn health_check_errors_point_at_the_field() {
    let err = check(&checked("    health_check:\n      type: tcp\n      rise: 0\n")).unwrap_err().to_string();
    assert_eq!(
        err,
        "test.yaml:17:13: vips[0].health_check.rise: `0`: use 1 to 100 consecutive results (1 reacts to a single probe)"
    );
    let err = check(&checked("    health_check:\n      type: tcp\n      intreval: 2s\n")).unwrap_err().to_string();
    assert!(err.starts_with("test.yaml:17:7: vips[0].health_check.intreval: `intreval` is not a field"), "{err}");
    assert!(err.contains("did you mean `interval`?"), "{err}");
    let err = check(&checked("    health_check:\n      type: icmp\n")).unwrap_err().to_string();
    assert_eq!(
        err,
        "test.yaml:16:13: vips[0].health_check.type: `icmp` is not one of tcp, http, https, grpc or udp; write one of them as shown"
    );
}

const BGP: &str = "bgp:\n  local_as: 65010\n  router_id: 192.0.2.21\n";

#[test]
fn bgp_parses_with_defaults_and_every_field() {
    let config = check(&format!("{BGP}  peers:\n    - {{ address: 10.0.0.1, remote_as: 65000 }}\n")).unwrap();
    let bgp = config.bgp.unwrap();
    assert_eq!(
        bgp,
        BgpConfig {
            local_as: 65010,
            router_id: Ipv4Addr::new(192, 0, 2, 21),
            hold_time: Duration::from_secs(9),
            connect_retry: Duration::from_secs(5),
            graceful_restart_time: Duration::from_secs(120),
            withdraw_grace: Duration::from_secs(5),
            communities: vec![],
            med: None,
            local_pref: None,
            peers: vec![BgpPeer {
                address: "10.0.0.1".parse().unwrap(),
                remote_as: 65000,
                port: 179,
                password: None,
                bfd: BfdConfig {
                    enabled: false,
                    min_tx: Duration::from_millis(100),
                    min_rx: Duration::from_millis(100),
                    multiplier: 3
                },
                source_address: None,
            }],
        }
    );
    let config = check(
            "bgp:\n  local_as: 4200000001\n  router_id: 10.0.0.2\n  hold_time: 0s\n  connect_retry: 500ms\n  graceful_restart_time: 0s\n  withdraw_grace: 1m\n  communities: [\"65010:100\", \"0:65535\", \"65010:100\"]\n  med: 20\n  local_pref: 200\n  peers:\n    - address: fd00::1\n      remote_as: 4200000001\n      port: 1179\n      password: s3cret\n      source_address: fd00::2\n      bfd: { enabled: true, min_tx: 50ms, min_rx: 1s, multiplier: 5 }\n",
        )
        .unwrap();
    let bgp = config.bgp.unwrap();
    assert_eq!(
        (bgp.local_as, bgp.hold_time, bgp.connect_retry, bgp.graceful_restart_time, bgp.withdraw_grace),
        (4200000001, Duration::ZERO, Duration::from_millis(500), Duration::ZERO, Duration::from_secs(60))
    );
    assert_eq!(bgp.communities, vec![Community { asn: 65010, value: 100 }, Community { asn: 0, value: 65535 }]);
    assert_eq!(bgp.communities[0].to_u32(), 0xfdf2_0064);
    assert_eq!(bgp.communities[0].to_string(), "65010:100");
    assert_eq!((bgp.med, bgp.local_pref), (Some(20), Some(200)));
    let peer = &bgp.peers[0];
    assert_eq!((peer.port, peer.password.as_deref(), peer.is_ibgp(bgp.local_as)), (1179, Some("s3cret"), true));
    assert_eq!(peer.source_address, Some("fd00::2".parse().unwrap()));
    assert_eq!(
        peer.bfd,
        BfdConfig { enabled: true, min_tx: Duration::from_millis(50), min_rx: Duration::from_secs(1), multiplier: 5 }
    );
    assert!(!format!("{peer:?}").contains("s3cret"), "the password stays out of Debug output");
    assert_eq!(check("vips: []\n").unwrap().bgp, None);
}

#[test]
fn bad_bgp_sections_name_the_field_and_the_fix() {
    let peer = "  peers:\n    - { address: 10.0.0.1, remote_as: 65000 }\n";
    let with = |extra: &str| format!("{BGP}{extra}{peer}");
    let peer_with =
        |fields: &str| format!("{BGP}  peers:\n    - {{ address: 10.0.0.1, remote_as: 65000, {fields} }}\n");
    let cases = [
            (
                format!("bgp:\n  router_id: 192.0.2.21\n{peer}"),
                "bgp.local_as",
                "required: this node's AS number (e.g. local_as: 65010)".to_string(),
            ),
            (
                format!("bgp:\n  local_as: 0\n  router_id: 192.0.2.21\n{peer}"),
                "bgp.local_as",
                "`0`: AS 0 is reserved (RFC 7607); use the real AS number (e.g. 65010)".into(),
            ),
            (
                format!("bgp:\n  local_as: 65010\n{peer}"),
                "bgp.router_id",
                "required: an IPv4 address unique among the routers, usually the node's own (e.g. router_id: 192.0.2.21)".into(),
            ),
            (
                format!("bgp:\n  local_as: 65010\n  router_id: fd00::1\n{peer}"),
                "bgp.router_id",
                "`fd00::1`: must be an IPv4 address (BGP identifiers are 32 bits, also on IPv6-only nodes), e.g. 192.0.2.21".into(),
            ),
            (
                format!("bgp:\n  local_as: 65010\n  router_id: 0.0.0.0\n{peer}"),
                "bgp.router_id",
                "`0.0.0.0` is not a valid BGP identifier; use a unicast IPv4 address (e.g. the node's own)".into(),
            ),
            (
                with("  hold_time: 2s\n"),
                "bgp.hold_time",
                "`2s`: not a usable hold time; use 0 (no keepalives) or 3s to 65535s, in whole seconds".into(),
            ),
            (
                with("  hold_time: 3500ms\n"),
                "bgp.hold_time",
                "`3500ms`: not a usable hold time; use 0 (no keepalives) or 3s to 65535s, in whole seconds".into(),
            ),
            (
                with("  hold_time: 9\n"),
                "bgp.hold_time",
                "`9` has no unit; write `9s` for seconds (or 9ms, 9m, 9h)".into(),
            ),
            (with("  connect_retry: 0s\n"), "bgp.connect_retry", "`0s`: out of range; use 100ms to 1h".into()),
            (
                with("  graceful_restart_time: 2d\n"),
                "bgp.graceful_restart_time",
                "`2d`: the units are ms, s, m and h; write `48h`".into(),
            ),
            (
                with("  graceful_restart_time: 70m\n"),
                "bgp.graceful_restart_time",
                "`70m`: out of range; use 0 (no graceful restart) to 4095s, in whole seconds".into(),
            ),
            (with("  withdraw_grace: 11m\n"), "bgp.withdraw_grace", "`11m`: out of range; use 0 to 10m".into()),
            (
                with("  communities: [\"65010:1\", \"65010\"]\n"),
                "bgp.communities[1]",
                "`65010` is not a community; write AS:VALUE with both parts 0 to 65535 (e.g. 65010:100)".into(),
            ),
            (
                with("  communities: [\"70000:1\"]\n"),
                "bgp.communities[0]",
                "`70000:1` is not a community; write AS:VALUE with both parts 0 to 65535 (e.g. 65010:100)".into(),
            ),
            (
                with("  local_pref: 200\n"),
                "bgp.local_pref",
                "`200`: LOCAL_PREF is only sent to iBGP peers (remote_as 65010) and none is configured; remove it, or use med toward eBGP peers".into(),
            ),
            (
                format!("{BGP}  peers: []\n"),
                "bgp.peers",
                "list at least one peer (address and remote_as), or remove the bgp section".into(),
            ),
            (
                format!("{BGP}  peers:\n    - {{ address: 0.0.0.0, remote_as: 65000 }}\n"),
                "bgp.peers[0].address",
                "`0.0.0.0` cannot be a BGP neighbour; use the router's unicast address on the link".into(),
            ),
            (
                format!("{BGP}{peer}    - {{ address: 10.0.0.1, remote_as: 65001 }}\n"),
                "bgp.peers[1].address",
                "`10.0.0.1` is already bgp.peers[0]; list each neighbour once".into(),
            ),
            (
                format!("{BGP}  peers:\n    - {{ address: 10.0.0.1, remote_as: 23456 }}\n"),
                "bgp.peers[0].remote_as",
                "`23456` is AS_TRANS, the stand-in for 4-octet AS numbers (RFC 6793); use the real AS number".into(),
            ),
            (
                peer_with("port: 0"),
                "bgp.peers[0].port",
                "`0`: must be 1 to 65535; leave it out for BGP's port, 179".into(),
            ),
            (
                peer_with("password: \"\""),
                "bgp.peers[0].password",
                "an empty password signs nothing; remove it, or give the TCP MD5 key the router has".into(),
            ),
            (
                peer_with(&format!("password: {}", "x".repeat(81))),
                "bgp.peers[0].password",
                "81 bytes is longer than the 80 Linux takes for a TCP MD5 key".into(),
            ),
            (
                peer_with("source_address: fd00::2"),
                "bgp.peers[0].source_address",
                "`fd00::2` is not of the peer's address family; use this node's IPv4 address on the link".into(),
            ),
            (
                peer_with("bfd: { enabled: true, min_tx: 5ms }"),
                "bgp.peers[0].bfd.min_tx",
                "`5ms`: out of range; use 10ms to 1m".into(),
            ),
            (
                peer_with("bfd: { min_rx: fast }"),
                "bgp.peers[0].bfd.min_rx",
                "`fast` is not a duration; write a whole number with one unit: 500ms, 2s, 1m or 1h".into(),
            ),
            (
                peer_with("bfd: { multiplier: 0 }"),
                "bgp.peers[0].bfd.multiplier",
                "`0`: use 1 to 255, the packets the peer may miss before it counts us as down (3 is usual)".into(),
            ),
        ];
    for (text, want_field, want_message) in cases {
        match check(&text) {
            Err(ConfigError::Invalid { field, message, .. }) => {
                assert_eq!((field.as_str(), message.as_str()), (want_field, want_message.as_str()), "{text}")
            }
            other => panic!("{want_field}: expected a validation error, got {other:?}\n{text}"),
        }
    }
}

#[test]
fn bgp_errors_point_at_the_entry() {
    let err = check(&format!("{BGP}  peers:\n    - address: 10.0.0.1\n      remote_as: 65000\n      port: 0\n"))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "test.yaml:7:13: bgp.peers[0].port: `0`: must be 1 to 65535; leave it out for BGP's port, 179");
    let err = check(&format!("{BGP}  peers:\n    - address: 10.0.0.1\n      remote_as: 65000\n      md5: x\n"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.yaml:7:") && err.contains("md5"), "{err}");
    let err = check(&format!("{BGP}  peers:\n    - address: 10.0.0.1\n")).unwrap_err().to_string();
    assert!(err.starts_with("test.yaml:") && err.contains("remote_as"), "{err}");
}

#[test]
fn the_example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example.yaml");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let bgp = config.bgp.expect("the example has a bgp section");
    assert!(!bgp.peers.is_empty());
}

#[test]
fn empty_file_is_an_empty_config() {
    let config = check("vips: []\n").unwrap();
    assert_eq!(config.vips.len(), 0);
    assert_eq!(config.node.flow_table_size, lb_common::FLOW_TABLE_SIZE);
}
