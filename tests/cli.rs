//! The `xlb` binary's command line, without root.

use std::process::Command;

use xlb_tests::netns::{unique_name, xlb_bin};

fn check(yaml: &str) -> (bool, String, String) {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("check")));
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(xlb_bin()).arg("check").arg(&path).output().expect("run xlb check");
    let _ = std::fs::remove_file(&path);
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace(path.to_str().unwrap(), "FILE");
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_accepts_the_shipped_configs() {
    for file in ["config/example.yaml", "config/lab.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
        let out = Command::new(xlb_bin()).arg("check").arg(&path).output().unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn check_prints_the_bpf_memory_estimate() {
    let (ok, out, err) = check(
        "node:\n  flow_table_size: 65536\nvips:\n  - { name: a, address: 192.0.2.1, port: 80, protocol: tcp, mode: dsr-l2, backends: [{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }] }\n",
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "FILE: ok, 1 VIPs");
    // The parts the file sizes; `other` depends on this machine's CPUs.
    assert!(
        lines[1].starts_with("BPF memory: ~")
            && lines[1].contains("(Maglev tables 0.1 MiB for 1 VIPs, connection table 4.5 MiB, NAT 78 MiB, other "),
        "{out}"
    );
    assert!(err.is_empty(), "no warning under 2 GiB: {err}");
}

#[test]
fn check_rejects_invalid_files_with_location_field_and_fix() {
    let (ok, _, err) = check("vips:\n  - name: a\n    address: 192.0.2.1\n    port: 80\n    protocol: sctp\n");
    assert!(!ok);
    assert!(err.starts_with("xlb: FILE:5:"), "{err}");
    assert!(err.contains("sctp"), "{err}");

    let (ok, _, err) = check("vips:\n  - name: a\n    address: 192.0.2.1\n    protocol: tcp\n    mode: dsr-l2\n");
    assert!(!ok);
    assert!(err.contains("FILE:2:") && err.contains("vips[0].port") && err.contains("between 1 and 65535"), "{err}");

    let (ok, _, err) = check("vips:\n  - name: a\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n");
    assert!(!ok && err.contains("FILE:2:5: vips[0].mode: missing; say how"), "a missing field is named: {err}");

    let (ok, _, err) = check("vips: [\n");
    assert!(!ok && err.contains("FILE:"), "{err}");

    // An empty file would withdraw every VIP: refused, with the way to mean it.
    let (ok, _, err) = check("# vips: commented out\n");
    assert!(!ok && err.starts_with("xlb: FILE:1:1: the file is empty") && err.contains("`vips: []`"), "{err}");
    let (ok, _, err) = check("vips: []\n");
    assert!(ok, "no VIPs on purpose: {err}");
}

#[test]
fn check_names_a_missing_file() {
    let out = Command::new(xlb_bin()).args(["check", "/nonexistent/xlb.yaml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/xlb.yaml") && err.contains("cannot read"), "{err}");
}
