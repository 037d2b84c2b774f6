//! The cached read must be the whole read: same configuration, same errors at the same places.

use std::{fmt::Write as _, path::Path};

use super::super::{LastRead, VipItemCache, parse, parse_cached};

const PATH: &str = "t.yaml";

/// A VIP of `backends` backends, its `k`-th set (the set moves by one backend per `k`).
fn vip(out: &mut String, i: usize, k: usize, indent: &str) {
    let nat = i % 3 == 1;
    let _ = write!(
        out,
        "{indent}- name: vip-{i}   # the VIP's comment\n{indent}  address: 10.1.{}.{}\n{indent}  port: 80\n\
         {indent}  protocol: tcp\n",
        i / 250,
        i % 250 + 1
    );
    out.push_str(&if nat {
        format!("{indent}  mode: nat\n{indent}  snat_pool: np\n")
    } else {
        format!("{indent}  mode: dsr-l2\n")
    });
    if i.is_multiple_of(5) {
        let _ = writeln!(out, "{indent}  health_check: {{ type: tcp, interval: 1s, timeout: 500ms }}");
    }
    let _ = writeln!(out, "{indent}  backends:");
    for j in 0..4 {
        let b = (i + j + k) % 200 + 1;
        let port = if nat { "port: 8080, " } else { "" };
        let _ = writeln!(out, "{indent}    - {{ address: 10.2.0.{b}, {port}mac: \"02:00:00:00:00:{b:02x}\" }}");
    }
    if i.is_multiple_of(7) {
        out.push_str("\n# between items\n");
    }
}

/// A file of `sets.len()` VIPs, VIP `i` with backend set `sets[i]`; `tail` after the list.
fn file(sets: &[usize], indent: &str, tail: &str) -> String {
    let mut out = String::from(
        "# edge node\nnode:\n  flow_table_size: 65536\nnat_pools:\n  - name: np\n    addresses: [10.9.0.1]\n    ports: 20000-29999\nvips:\n",
    );
    for (i, &k) in sets.iter().enumerate() {
        vip(&mut out, i, k, indent);
    }
    out.push_str(tail);
    out
}

/// Reads `text` through `cache` and whole; both must agree, configuration or error.
fn same(cache: &mut VipItemCache, text: &str) -> LastRead {
    let cached = parse_cached(Path::new(PATH), text, cache).map_err(|e| e.to_string());
    let whole = parse(Path::new(PATH), text).map_err(|e| e.to_string());
    assert_eq!(cached, whole, "the cached read differs from the whole read of:\n{text}");
    cache.last_read()
}

#[test]
fn one_changed_vip_is_the_only_one_parsed_again() {
    for (indent, tail) in [("  ", ""), ("", ""), ("  ", "agent:\n  metrics_listen: 127.0.0.1:9842\n")] {
        let mut sets = vec![0; 40];
        let mut cache = VipItemCache::default();
        assert_eq!(same(&mut cache, &file(&sets, indent, tail)), LastRead::Whole, "the first read is whole");
        for changed in [0, 17, 39] {
            sets[changed] += 1;
            let read = same(&mut cache, &file(&sets, indent, tail));
            assert_eq!(read, LastRead::Items { reparsed: 1, items: 40 }, "VIP {changed} changed (indent {indent:?})");
        }
        // Nothing changed: nothing parsed again.
        assert_eq!(same(&mut cache, &file(&sets, indent, tail)), LastRead::Items { reparsed: 0, items: 40 });
    }
}

#[test]
fn many_changes_and_moved_lines_read_whole_and_agree() {
    let mut sets = vec![0; 40];
    let mut cache = VipItemCache::default();
    same(&mut cache, &file(&sets, "  ", ""));
    for s in &mut sets {
        *s += 1;
    }
    assert_eq!(same(&mut cache, &file(&sets, "  ", "")), LastRead::Whole);
    // A VIP added at the end moves no line: only it is new.
    sets.push(3);
    assert_eq!(same(&mut cache, &file(&sets, "  ", "")), LastRead::Items { reparsed: 1, items: 41 });
    // A line added at the top moves every item: read whole.
    let moved = format!("# a new first line\n{}", file(&sets, "  ", ""));
    assert_eq!(same(&mut cache, &moved), LastRead::Whole);
}

#[test]
fn errors_in_a_changed_vip_are_the_whole_reads() {
    let sets = vec![0; 30];
    let good = file(&sets, "  ", "");
    let mut cache = VipItemCache::default();
    same(&mut cache, &good);
    let broken = [
        ("port: 80\n", "port: 70000\n"),                          // type error
        ("protocol: tcp\n", "protocol: tcp\n    colour: blue\n"), // unknown field
        ("address: 10.2.0.3,", "address: 10.2.0.300,"),           // bad address
        ("mode: dsr-l2\n", "mode: dsr-l2\n    min_healthy: 9\n"), // a check after parsing
        ("interval: 1s", "interval: 1s, timeout: 2s"),            // timeout ≥ interval
        ("- name: vip-20 ", "- name: vip-19 "),                   // duplicate name
        ("    port: 80\n", "   port: 80\n"),                      // indentation
        ("[10.9.0.1]", "[10.9.0.1, 10.9.0.1]"),                   // outside the VIPs
    ];
    for (from, to) in broken {
        // Change the 21st occurrence (or the only one), so that the error sits mid-file.
        let at = good.match_indices(from).map(|(i, _)| i).nth(20).or_else(|| good.find(from)).expect("in the file");
        let bad = format!("{}{to}{}", &good[..at], &good[at + from.len()..]);
        let error = parse(Path::new(PATH), &bad).expect_err(&format!("{from:?} → {to:?} is refused"));
        assert!(error.to_string().starts_with(PATH), "{error}");
        same(&mut cache, &bad);
        // The old file reads again from the cache after the error.
        same(&mut cache, &good);
    }
}

#[test]
fn files_not_plainly_written_are_read_whole() {
    let sets = vec![0; 10];
    let plain = file(&sets, "  ", "");
    let variants = [
        // An anchor.
        plain.replacen("health_check: {", "health_check: &check {", 1),
        // A tag.
        plain.replacen("port: 80\n", "port: !!int 80\n", 1),
        // A quoted value spanning lines.
        plain.replacen("name: vip-3 ", "name: \"vip-\n      3x\" ", 1),
        // A flow mapping spanning lines.
        plain.replacen("{ address: 10.2.0.5,", "{ address: 10.2.0.5,\n      ", 1),
        // A second document marker.
        format!("---\n{plain}"),
    ];
    for text in &variants {
        let mut cache = VipItemCache::default();
        same(&mut cache, text);
        assert_eq!(same(&mut cache, text), LastRead::Whole, "read whole:\n{text}");
    }
}

#[test]
fn a_file_that_says_vips_twice_or_oddly_reads_whole() {
    let sets = vec![0; 5];
    let plain = file(&sets, "  ", "");
    for text in [
        format!("{plain}vips:\n  []\n"),
        plain.replace("vips:\n", "\"vips\":\n"),
        plain.replace("vips:\n", "vips: # list\n"),
    ] {
        let mut cache = VipItemCache::default();
        same(&mut cache, &text);
        same(&mut cache, &text);
    }
}

/// Random edits of a 60-VIP file, each read both ways.
#[test]
fn random_edits_agree_with_the_whole_read() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut sets = vec![0; 60];
    let mut tail = String::new();
    let mut cache = VipItemCache::default();
    let mut cached_reads = 0;
    for _ in 0..60 {
        match next(6) {
            0 | 1 => sets[next(60)] += 1,
            2 => {
                let i = next(60);
                sets[i] += 1;
                sets[(i + 1) % 60] += 1;
            }
            3 => tail = format!("agent:\n  metrics_listen: 127.0.0.1:{}\n", 9000 + next(100)),
            4 => sets.rotate_left(1),
            _ => {}
        }
        if matches!(same(&mut cache, &file(&sets, "  ", &tail)), LastRead::Items { .. }) {
            cached_reads += 1;
        }
    }
    assert!(cached_reads > 20, "the cache served only {cached_reads} of 60 reads");
}
