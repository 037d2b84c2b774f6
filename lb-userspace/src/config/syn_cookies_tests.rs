//! `syn_cookies:` of VIPs: the three forms, and the errors (each at the value's line and column,
//! in xlb's words).

use super::tests::check;
use super::*;

fn nat_vip(protocol: &str, pool: bool, cookies: &str) -> String {
    format!(
        "nat_pools:\n  - name: p\n    addresses: [198.51.100.1]\n    ports: 40000-40099\nvips:\n  - name: web\n    \
         address: 192.0.2.10\n    port: 80\n    protocol: {protocol}\n    mode: nat\n{}    syn_cookies: {cookies}\n    \
         backends:\n      - address: 10.1.0.1\n",
        if pool { "    snat_pool: p\n" } else { "" }
    )
}

#[test]
fn syn_cookies_parse_in_their_three_forms() {
    for (written, want) in [
        ("off", SynCookies::Off),
        ("always", SynCookies::Always),
        ("{ above: 5000 }", SynCookies::Above(5000)),
        ("\n      above: 1", SynCookies::Above(1)),
    ] {
        let config = check(&nat_vip("tcp", true, written)).unwrap_or_else(|e| panic!("{written}: {e}"));
        assert_eq!(config.vips[0].syn_cookies, want, "{written}");
    }
    let without = nat_vip("tcp", true, "off").replace("    syn_cookies: off\n", "");
    assert_eq!(check(&without).unwrap().vips[0].syn_cookies, SynCookies::Off, "off unless written");
}

#[test]
fn syn_cookies_errors_name_the_field_the_value_and_the_fix() {
    let dsr = "vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    \
               syn_cookies: always\n    backends:\n      - { address: 10.1.0.1, mac: \"02:00:00:00:01:01\" }\n";
    for (text, field, words) in [
        (nat_vip("tcp", true, "sometimes"), "vips[0].syn_cookies", "`sometimes` is not a setting; write `off`"),
        (nat_vip("tcp", true, "true"), "vips[0].syn_cookies", "is not a setting"),
        (nat_vip("tcp", true, "{ above: 0 }"), "vips[0].syn_cookies.above", "1 to 100000000"),
        (nat_vip("tcp", true, "{ above: lots }"), "vips[0].syn_cookies.above", "`lots` is not a rate"),
        (nat_vip("tcp", true, "{ above: 200000000 }"), "vips[0].syn_cookies.above", "is not a rate"),
        (nat_vip("tcp", true, "{ rate: 5 }"), "vips[0].syn_cookies.rate", "takes `above` only"),
        (nat_vip("tcp", true, "{ }"), "vips[0].syn_cookies.above", "is missing"),
        (nat_vip("udp", true, "always"), "vips[0].syn_cookies", "TCP VIPs only"),
        (nat_vip("tcp", false, "always"), "vips[0].syn_cookies", "needs a source pool"),
        (dsr.to_owned(), "vips[0].syn_cookies", "answer their own handshakes"),
    ] {
        let err = check(&text).unwrap_err();
        let ConfigError::Invalid { line, column, field: got, message, .. } = &err else { panic!("{text}: {err:?}") };
        assert_eq!(got, field, "{text}: {err}");
        assert!(message.contains(words), "{text}: {err}");
        assert!(*line > 1 && *column > 0, "{text}: placed at its line ({line}:{column})");
        let rendered = err.to_string();
        assert!(!rendered.contains("serde") && !rendered.contains("untagged"), "xlb's own words: {rendered}");
    }
}
