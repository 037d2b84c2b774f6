//! What the packet bench runs on: the balancer config (Katran's default shape) and its frames.

use anyhow::Context as _;
use lb_common::{FAMILY_V4, SourceBucket, SourceBucketKey, source_bucket_slots, source_scope};
use xlb_tests::{
    Balancer,
    packets::{Frame, L4},
};

/// Katran's default shape: 16 reals per VIP, ring 65537.
pub fn config() -> String {
    let mut yaml = String::from(
        "node:\n  next_hop_mac: 02:00:00:00:00:fe\n  tunnel_source_v4: 172.16.0.0/24\n  tunnel_source_v6: fd00:ffff::/112\nvips:\n",
    );
    let mut vip = |name: &str, address: &str, mode: &str, backend: &dyn Fn(usize) -> String| {
        yaml.push_str(&format!("  - name: {name}\n    address: {address}\n    port: 80\n    protocol: tcp\n    mode: {mode}\n    backends:\n"));
        for i in 0..16 {
            yaml.push_str(&format!("      - {{ address: \"{}\", mac: \"02:00:00:00:01:{i:02x}\" }}\n", backend(i)));
        }
    };
    vip("ipip4", "192.0.2.10", "dsr-ipip", &|i| format!("10.1.0.{}", i + 1));
    vip("ipip6", "2001:db8::10", "dsr-ipip", &|i| format!("fd00:1::{}", i + 1));
    vip("l2v4", "192.0.2.20", "dsr-l2", &|i| format!("10.2.0.{}", i + 1));
    // Source policy: the flood's prefix over its limit (`limit_flooder`), or denied.
    vip("limited4", "192.0.2.21", "dsr-l2\n    sources: { new_flows: { rate: 1000, prefix_v4: 8 } }", &|i| {
        format!("10.2.0.{}", i + 1)
    });
    vip("denied4", "192.0.2.22", "dsr-l2\n    sources: { deny: [203.0.113.0/24] }", &|i| format!("10.2.0.{}", i + 1));
    vip("nat4", "192.0.2.30", "nat\n    snat_pool: pool4", &|i| format!("10.3.0.{}", i + 1));
    vip("nat6", "2001:db8::30", "nat\n    snat_pool: pool6", &|i| format!("fd00:3::{}", i + 1));
    // SYN cookies: every SYN answered with a cookie, nothing claimed.
    vip("cookies4", "192.0.2.32", "nat\n    snat_pool: pool4\n    syn_cookies: always", &|i| {
        format!("10.3.0.{}", i + 1)
    });
    yaml.push_str("  - name: natfull4\n    address: 192.0.2.31\n    port: 80\n    protocol: tcp\n    mode: nat\n    snat_pool: poolfull\n    backends:\n      - { address: 10.4.0.1, mac: \"02:00:00:00:04:01\" }\n");
    // Room for every new-flow call of a run without reuse: 8 × 50 000 sources per backend.
    yaml.push_str("nat_pools:\n  - name: pool4\n    addresses: [");
    yaml.push_str(&(1..=8).map(|i| format!("198.18.0.{i}")).collect::<Vec<_>>().join(", "));
    yaml.push_str("]\n    ports: 10000-59999\n  - name: pool6\n    addresses: [");
    yaml.push_str(&(1..=8).map(|i| format!("\"fd00:18::{i}\"")).collect::<Vec<_>>().join(", "));
    yaml.push_str("]\n    ports: 10000-59999\n");
    // A pool of 64 000 sources that the bench fills before it measures (`fill_pool`).
    yaml.push_str("  - name: poolfull\n    addresses: [198.19.0.1]\n    ports: 1024-65023\n");
    yaml
}

/// A TCP frame from `src` to `dst` (IPv6 if `dst` is).
pub fn frame(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    if dst.contains(':') { Frame::v6(src, dst, l4).build() } else { Frame::v4(src, dst, l4).build() }
}

/// Puts the flood's sources (203.0.0.0/8, `limited4`'s bucket prefix) over their limit: a
/// bucket whose next admission is an hour away, so every SYN the bench sends is refused by the
/// bucket (the limit's whole path: clock, bucket lookup, refusal).
pub fn limit_flooder(balancer: &Balancer) -> anyhow::Result<()> {
    let id = balancer.applied("limited4").meta.id;
    let key =
        SourceBucketKey { scope: source_scope(id, FAMILY_V4), addr: [u32::from_ne_bytes([203, 0, 0, 0]), 0, 0, 0] };
    // The data plane's clock (bpf_ktime_get_coarse_ns).
    let now_ns = xlb::apply::nat::monotonic_ns();
    let bucket = SourceBucket { key, tat_ns: now_ns + 3_600_000_000_000, ..SourceBucket::default() };
    let sources = balancer.maps.sources.as_ref().context("this build has no source policy")?;
    sources.buckets()?.write(source_bucket_slots(&key).0, &bucket)?;
    Ok(())
}
