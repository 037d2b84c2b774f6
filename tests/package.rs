//! `cargo xtask deb`: the package builds with dpkg-deb, unpacks into a scratch root, and the
//! xlb it installs runs; the unit points at it, the man pages and completions are there.
//!
//! Runs the xtask binary `cargo build --all-targets` leaves beside xlb (scripts/test.sh builds
//! it before testing), on the xlb under test (`--binary`, gzip: seconds, not a release build).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use xlb_tests::netns::{unique_name, xlb_bin};

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).trim().to_owned()
}

fn xtask_bin() -> PathBuf {
    let bin = xlb_bin().with_file_name("xtask");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --all-targets` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

fn gunzip(path: &Path) -> String {
    stdout(Command::new("gzip").arg("-dc").arg(path))
}

#[test]
fn the_deb_installs_an_xlb_that_runs_with_its_unit_man_pages_and_completions() {
    let scratch = Scratch(std::env::temp_dir().join(unique_name("deb")));
    let out = scratch.0.join("out");
    let deb = stdout(
        Command::new(xtask_bin())
            .args(["deb", "--compression", "gzip", "--binary"])
            .arg(xlb_bin())
            .arg("--out")
            .arg(&out),
    );
    let version = stdout(Command::new(xlb_bin()).arg("--version"));
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    let number = version.strip_prefix("xlb ").expect("xlb --version says `xlb VERSION`");
    assert_eq!(Path::new(&deb), out.join(format!("xlb_{number}_{arch}.deb")));

    let info = stdout(Command::new("dpkg-deb").args(["--field", &deb, "Package", "Version", "Architecture"]));
    assert_eq!(info, format!("Package: xlb\nVersion: {number}\nArchitecture: {arch}"));
    let contents = stdout(Command::new("dpkg-deb").args(["--contents", &deb]));
    for path in [
        "./usr/bin/xlb",
        "./lib/systemd/system/xlb@.service",
        "./usr/share/man/man1/xlb.1.gz",
        "./usr/share/man/man1/xlb-run.1.gz",
        "./usr/share/man/man1/xlb-status.1.gz",
        "./usr/share/bash-completion/completions/xlb",
        "./usr/share/zsh/vendor-completions/_xlb",
        "./usr/share/fish/vendor_completions.d/xlb.fish",
        "./usr/share/doc/xlb/README.md",
        "./usr/share/doc/xlb/examples/example.yaml",
        "./usr/share/doc/xlb/prometheus/xlb-alerts.yml",
        "./usr/share/doc/xlb/grafana/xlb.json",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(&format!(" {path}"))), "no {path} in the package:\n{contents}");
    }
    assert!(
        contents.lines().any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with(" ./usr/bin/xlb")),
        "xlb is root's and executable:\n{contents}"
    );

    // Installed into a scratch root: the binary runs and checks the example config.
    let root = scratch.0.join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let installed = root.join("usr/bin/xlb");
    assert_eq!(stdout(Command::new(&installed).arg("--version")), version);
    let example = root.join("usr/share/doc/xlb/examples/example.yaml");
    let checked = stdout(Command::new(&installed).arg("check").arg(&example));
    assert!(checked.contains(": ok, "), "{checked}");

    // The unit runs the installed binary, nothing from /usr/local.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/xlb@.service")).unwrap();
    assert!(unit.lines().any(|l| l == "ExecStart=/usr/bin/xlb run --config /etc/xlb/%i.yaml --iface %i"), "{unit}");
    assert!(unit.lines().any(|l| l == "ExecStartPre=/usr/bin/xlb check /etc/xlb/%i.yaml"), "{unit}");
    assert!(!unit.contains("/usr/local"), "{unit}");

    // Man pages: xlb(1) lists the subcommands, xlb-run(1) its flags.
    let man = root.join("usr/share/man/man1");
    let main = gunzip(&man.join("xlb.1.gz"));
    assert!(main.contains(".TH xlb 1"), "{main}");
    for sub in ["xlb\\-run(1)", "xlb\\-status(1)", "xlb\\-drain(1)"] {
        assert!(main.contains(sub), "xlb(1) names {sub}:\n{main}");
    }
    let run_page = gunzip(&man.join("xlb-run.1.gz"));
    assert!(run_page.contains(".TH xlb\\-run 1") || run_page.contains(".TH xlb-run 1"), "{run_page}");
    assert!(run_page.contains("\\-\\-metrics\\-listen") && run_page.contains(number), "{run_page}");

    // Completions know the subcommands and their flags.
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/xlb")).unwrap();
    assert!(bash.contains("complete -F _xlb") && bash.contains("--admin-socket"), "{bash}");
    let fish = std::fs::read_to_string(root.join("usr/share/fish/vendor_completions.d/xlb.fish")).unwrap();
    assert!(fish.contains("__fish_xlb_needs_command") && fish.contains("-a \"drain\""), "{fish}");
}
