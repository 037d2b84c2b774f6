//! Edge-sized configurations: the per-node limits are accepted, refused one past them at the
//! element that crosses them, the YAML budgets bound what a hostile file costs, and a file that
//! would empty the node by accident is refused.

use std::{fmt::Write as _, ops::Range, path::Path};

use lb_common::{MAX_BACKENDS, MAX_VIPS};

use super::{ConfigError, Mode, parse};

fn check(text: &str) -> Result<super::Config, ConfigError> {
    parse(Path::new("test.yaml"), text)
}

/// A backend address unique over the whole file.
fn backend_address(k: usize) -> String {
    format!("10.{}.{}.{}", k >> 16, (k >> 8) & 255, k & 255)
}

/// VIP `i` — dsr-l2 or nat, alternately, with a health check — with backends numbered `backends`.
fn write_vip(out: &mut String, i: usize, backends: Range<usize>) {
    let mode = if i.is_multiple_of(2) { "dsr-l2" } else { "nat" };
    // One check template for every VIP, as a hand-kept file would have it.
    let check = if i == 0 { "&check\n      type: tcp\n      interval: 5s" } else { "*check" };
    let _ = write!(
        out,
        "  - name: vip{i}\n    address: 198.18.{}.{}\n    port: 80\n    protocol: tcp\n    mode: {mode}\n    health_check: {check}\n    backends:{}\n",
        i >> 8,
        i & 255,
        if backends.is_empty() { " []" } else { "" }
    );
    for k in backends {
        let _ = write!(out, "      - address: {}\n        weight: {}\n", backend_address(k), 1 + k % 3);
        if i.is_multiple_of(2) {
            let _ = writeln!(out, "        mac: 02:00:00:{:02x}:{:02x}:{:02x}", k >> 16, (k >> 8) & 255, k & 255);
        } else {
            out.push_str("        port: 8080\n");
        }
    }
}

/// A file of one VIP per entry of `sizes`, with that many backends each.
fn edge_config(sizes: &[usize]) -> String {
    let mut out = String::from("vips:\n");
    let mut next = 0;
    for (i, &n) in sizes.iter().enumerate() {
        write_vip(&mut out, i, next..next + n);
        next += n;
    }
    out
}

/// `test.yaml:LINE:COLUMN` of the first character of `needle` (found by text, not by the parser).
fn position(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or_else(|| panic!("`{needle}` is not in the file"));
    let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
    format!("test.yaml:{}:{}", text[..at].matches('\n').count() + 1, at - line_start + 1)
}

#[test]
fn ten_thousand_vips_of_ten_backends_parse() {
    let text = edge_config(&vec![10; MAX_VIPS as usize]);
    let config = check(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.vips.len(), 10_000);
    assert_eq!(config.vips.iter().map(|v| v.backends.len()).sum::<usize>(), 100_000);
    let last = &config.vips[9_999];
    assert_eq!((last.name.as_str(), last.mode, last.table_size), ("vip9999", Mode::Nat, 16381));
    assert_eq!(last.backends[9].address.to_string(), backend_address(99_999));
    assert_eq!(last.backends[9].port, Some(8080));
    assert_eq!(last.health_check, config.vips[0].health_check, "the aliased check");
    assert!(last.health_check.is_some());
}

#[test]
fn the_first_vip_over_the_limit_is_refused_where_it_is() {
    let text = edge_config(&vec![0; MAX_VIPS as usize + 1]);
    let err = check(&text).unwrap_err().to_string();
    let at = position(&text, "name: vip10000\n");
    assert_eq!(
        err,
        format!(
            "{at}: vips[10000]: more than 10000 VIPs (the per-node limit; the file has 10001); split them over more nodes"
        )
    );
}

#[test]
fn the_backend_that_crosses_the_limit_is_refused_where_it_is() {
    // Six VIPs of 15 000 and a seventh of 10 000: exactly the limit.
    let mut sizes = vec![15_000; 6];
    sizes.push(10_000);
    assert_eq!(sizes.iter().sum::<usize>(), MAX_BACKENDS as usize);
    let config = check(&edge_config(&sizes)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.vips.iter().map(|v| v.backends.len()).sum::<usize>(), 100_000);

    // One more in the seventh: its backend 10000 is backend 100 001 of the node.
    sizes[6] += 1;
    let text = edge_config(&sizes);
    let err = check(&text).unwrap_err().to_string();
    let at = position(&text, &format!("address: {}\n", backend_address(100_000)));
    assert_eq!(
        err,
        format!(
            "{at}: vips[6].backends[10000]: more than 100000 backends over all VIPs (the per-node limit); split the VIPs over more nodes"
        )
    );
}

/// The text of a VIP whose `port:` holds `value` (an untagged value: read whole before it is judged).
fn vip_with_port(value: &str) -> String {
    format!("vips:\n  - name: a\n    address: 192.0.2.1\n    protocol: tcp\n    mode: dsr-l2\n    port: {value}\n")
}

#[test]
fn a_billion_laughs_is_stopped_in_xlbs_words() {
    // Nine anchors, each ten aliases of the one before: 10^9 nodes from a few hundred bytes.
    let mut value = format!("[&l0 [{}]", ["lol"; 10].join(", "));
    for k in 1..9 {
        let _ = write!(value, ", &l{k} [{}]", vec![format!("*l{}", k - 1); 10].join(", "));
    }
    value.push(']');
    let err = check(&vip_with_port(&value)).unwrap_err().to_string();
    assert!(err.starts_with("test.yaml:6:"), "{err}");
    assert!(err.contains("the anchors (&name) of the file hold more than 1000000 YAML events"), "{err}");
    assert!(!err.contains("budget"), "xlb's words, not the YAML reader's: {err}");
}

#[test]
fn deep_nesting_is_refused_in_xlbs_words() {
    let err = check(&vip_with_port(&format!("{}1{}", "[".repeat(20), "]".repeat(20)))).unwrap_err().to_string();
    assert!(err.starts_with("test.yaml:6:"), "{err}");
    assert!(err.contains("the file nests more than 16 levels deep"), "{err}");
}

#[test]
fn a_file_with_nothing_in_it_is_refused_and_an_explicit_empty_list_is_not() {
    // What a truncated write or an editor's accident leaves: applying it would withdraw every VIP.
    for text in ["", "\n\n", "# all commented out\n#vips:\n", "---\n# x\n...\n"] {
        let err = check(text).unwrap_err().to_string();
        assert!(err.starts_with("test.yaml:1:1: the file is empty"), "{text:?}: {err}");
        assert!(err.contains("write `vips: []`"), "{err}");
    }
    assert!(check("vips: []\n").unwrap().vips.is_empty(), "serving no VIPs on purpose");
}

#[test]
fn a_vip_without_backends_is_refused_at_its_backends() {
    let head = "vips:\n  - name: a\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n";
    let err = check(&format!("{head}    backends: []\n")).unwrap_err().to_string();
    assert_eq!(
        err,
        "test.yaml:7:15: vips[0].backends: the list is empty; a VIP needs at least one backend: list them, or remove the VIP"
    );
    let err = check(head).unwrap_err().to_string();
    assert!(err.starts_with("test.yaml:2:5: vips[0].backends: no backends listed;"), "{err}");
    // Every backend at weight 0 is a VIP kept in place with no new flows: accepted.
    let parked = format!("{head}    backends: [{{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\", weight: 0 }}]\n");
    check(&parked).unwrap_or_else(|e| panic!("{e}"));
}
