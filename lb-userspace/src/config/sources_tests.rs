//! `sources:` of the node and of VIPs: what parses, the defaults, and the errors (each at its
//! field's line and column, in xlb's words).

use super::tests::{check, checked};
use super::*;

fn with_node_sources(node: &str, vip: &str) -> String {
    checked(vip).replacen("node:\n", &format!("node:\n  sources:\n{node}"), 1)
}

#[test]
fn sources_parse_with_defaults() {
    let config = check(&with_node_sources(
        "    deny: [203.0.113.0/24, \"2001:db8:bad::/48\", 198.51.100.7]\n    new_flows: { rate: 500 }\n",
        "    sources:\n      allow: [10.9.0.0/16]\n      allow_only: true\n      new_flows: { rate: 20, burst: 50, prefix_v4: 32, prefix_v6: 128 }\n",
    ))
    .unwrap();
    let node = &config.node.sources;
    assert_eq!(node.deny.len(), 3);
    assert_eq!(
        node.deny[2],
        Prefix { address: "198.51.100.7".parse().unwrap(), len: 32 },
        "a bare address is one host"
    );
    assert_eq!(node.new_flows, Some(NewFlowLimit { rate: 500, burst: 500, prefix_v4: 24, prefix_v6: 64 }), "defaults");
    let vip = &config.vips[0].sources;
    assert!(vip.allow_only);
    assert_eq!(vip.new_flows, Some(NewFlowLimit { rate: 20, burst: 50, prefix_v4: 32, prefix_v6: 128 }));
    assert!(check(&checked("")).unwrap().vips[0].sources.is_empty(), "no sources: nothing to judge");
}

#[test]
fn sources_errors_name_the_field_the_value_and_the_fix() {
    for (node, vip, field, words) in [
        ("    deny: [10.0.0.1/8]\n", "", "node.sources.deny[0]", "host bits set; write the prefix as 10.0.0.0/8"),
        ("    deny: [10.0.0.0/8]\n    allow: [10.0.0.0/8]\n", "", "node.sources.deny[0]", "both `allow` and `deny`"),
        ("    deny: [10.0.0.0/8, 10.0.0.0/8]\n", "", "node.sources.deny[1]", "listed twice"),
        ("    new_flows: { rate: 0 }\n", "", "node.sources.new_flows.rate", "use 1 to 10000000"),
        ("    new_flows: { burst: 5 }\n", "", "node.sources.new_flows.rate", "is missing"),
        ("    new_flows: { rate: 5, prefix_v4: 33 }\n", "", "node.sources.new_flows.prefix_v4", "use 1 to 32"),
        ("    new_flows: { rate: 5, prefix_v6: 0 }\n", "", "node.sources.new_flows.prefix_v6", "use 1 to 128"),
        ("    new_flows: { rate: 5, burst: 0 }\n", "", "node.sources.new_flows.burst", "out of range"),
        ("    allow_only: true\n", "", "node.sources.allow_only", "refuses every source of VIP `web`"),
        (
            "    deny: []\n",
            "    sources: { allow_only: true }\n",
            "vips[0].sources.allow_only",
            "list the sources it serves",
        ),
    ] {
        let text = with_node_sources(node, vip);
        let err = check(&text).unwrap_err();
        let ConfigError::Invalid { line, column, field: got, message, .. } = &err else {
            panic!("{node}{vip}: {err:?}")
        };
        assert_eq!(got, field, "{node}{vip}: {err}");
        assert!(message.contains(words), "{node}{vip}: {err}");
        assert!(*line > 1 && *column > 0, "{node}{vip}: placed at its line ({line}:{column})");
    }
    // Parse-level errors (a prefix that is none, a misspelt key) are placed and worded too.
    for (node, words) in [
        ("    deny: [10.0.0.0/40]\n", "the prefix length must be 0 to 32"),
        ("    deny: [example.com]\n", "is not an address or prefix"),
        ("    rate_limit: 5\n", "rate_limit"),
    ] {
        let err = check(&with_node_sources(node, "")).unwrap_err().to_string();
        assert!(err.contains(words) && err.contains("test.yaml:"), "{node}: {err}");
    }
}
