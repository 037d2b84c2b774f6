//! `cargo xtask deb`: a Debian package of the agent, built with `dpkg-deb` from a staged tree
//! (no cargo-deb); `cargo xtask docs`: the man pages and shell completions alone.
//!
//! The package holds `/usr/bin/xlb`, the systemd unit (`/lib/systemd/system/xlb@.service`, its
//! binary path pointed at `/usr/bin/xlb`), man pages (`xlb(1)` and one per subcommand),
//! completions for bash, zsh and fish, and under `/usr/share/doc/xlb` the README, the example
//! config, the Grafana dashboard and the Prometheus alert rules.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};
use clap_complete::Shell;

/// Where the package installs the binary; the unit's ExecStart follows.
const BIN: &str = "usr/bin/xlb";
/// The path the repository's unit names (a `cargo install`-style /usr/local).
const UNIT_BIN: &str = "/usr/local/bin/xlb";

#[derive(Debug, clap::Args)]
pub struct DebOptions {
    /// Package this xlb binary instead of building one (`cargo build --release -p lb-userspace`).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Directory to write the .deb to.
    #[arg(long, default_value = "target/deb")]
    pub out: PathBuf,
    /// dpkg-deb's compression: xz (smallest), gzip (faster) or none.
    #[arg(long, default_value = "xz", value_parser = ["xz", "gzip", "none"])]
    pub compression: String,
}

#[derive(Debug, clap::Args)]
pub struct DocsOptions {
    /// Directory to write `man/` and `completions/` into.
    #[arg(long, default_value = "target/docs")]
    pub out: PathBuf,
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path`, relative to the workspace root unless absolute (cargo runs xtask from anywhere).
fn under_root(path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_owned() } else { root().join(path) }
}

/// `cargo xtask docs`.
pub fn docs(opts: &DocsOptions) -> anyhow::Result<()> {
    let out = under_root(&opts.out);
    let man = out.join("man");
    let completions = out.join("completions");
    let pages = write_man_pages(&man)?;
    let scripts = write_completions(&completions)?;
    println!("{} man pages in {}, {} completion scripts in {}", pages, man.display(), scripts, completions.display());
    Ok(())
}

/// `xlb.1` and `xlb-SUBCOMMAND.1` for each subcommand, into `dir`; returns how many.
fn write_man_pages(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = xlb::cli::command();
    cmd.build();
    let mut pages = vec![("xlb".to_owned(), cmd.clone())];
    // Built, each subcommand's display name is `xlb-run` and its synopsis `xlb run …`, as
    // git's subcommand pages are.
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = sub.get_display_name().map_or_else(|| format!("xlb-{}", sub.get_name()), str::to_owned);
        pages.push((name, sub.clone().version(xlb::cli::VERSION)));
    }
    for (name, page) in &pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(page.clone()).render(&mut text).with_context(|| format!("rendering {name}.1"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(pages.len())
}

/// Completion scripts where each shell looks for them, under `dir`; returns how many.
fn write_completions(dir: &Path) -> anyhow::Result<usize> {
    let shells = [(Shell::Bash, "bash/xlb"), (Shell::Zsh, "zsh/_xlb"), (Shell::Fish, "fish/xlb.fish")];
    for (shell, file) in shells {
        let path = dir.join(file);
        write_completion(shell, &path)?;
    }
    Ok(shells.len())
}

fn write_completion(shell: Shell, path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut xlb::cli::command(), "xlb", &mut text);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `cargo xtask deb`.
pub fn deb(opts: &DebOptions) -> anyhow::Result<()> {
    let binary = match &opts.binary {
        Some(path) => path.clone(),
        None => {
            build_release()?;
            root().join("target/release/xlb")
        }
    };
    ensure!(binary.is_file(), "{}: no such binary (build it, or leave --binary out)", binary.display());
    // The version the binary says it is (`xlb 0.1.0`).
    let said = output(Command::new(&binary).arg("--version"))?;
    let version = match said.split_whitespace().collect::<Vec<_>>()[..] {
        ["xlb", version] => version.to_owned(),
        _ => bail!("{} --version said `{said}`, not `xlb VERSION`", binary.display()),
    };
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let name = format!("xlb_{version}_{arch}");
    let out = under_root(&opts.out);
    let stage = out.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing the old {}", stage.display()))?;
    }
    stage_tree(&stage, &binary, &version, &arch)?;
    let deb = out.join(format!("{name}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Z", &opts.compression, "--build"])
        .arg(&stage)
        .arg(&deb)
        .stdout(Stdio::null())
        .status()
        .context("running dpkg-deb (Debian package dpkg)")?;
    ensure!(status.success(), "dpkg-deb --build {} failed", stage.display());
    std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    println!("{}", deb.display());
    Ok(())
}

fn build_release() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked", "-p", "lb-userspace", "--bin", "xlb", "--manifest-path"])
        .arg(root().join("Cargo.toml"))
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "building the agent (cargo build --release -p lb-userspace --bin xlb) failed");
    Ok(())
}

/// The package's files under `stage`, and its DEBIAN/ control files.
fn stage_tree(stage: &Path, binary: &Path, version: &str, arch: &str) -> anyhow::Result<()> {
    let root = root();
    let bin = stage.join(BIN);
    copy(binary, &bin, 0o755)?;
    // Debug info and symbols out, as Debian's dh_strip does: a debug build is ~10 times the size.
    let status =
        Command::new("strip").arg("--strip-unneeded").arg(&bin).status().context("running strip (binutils)")?;
    ensure!(status.success(), "strip --strip-unneeded {} failed", bin.display());

    let unit = std::fs::read_to_string(root.join("deploy/xlb@.service")).context("reading deploy/xlb@.service")?;
    ensure!(unit.contains(UNIT_BIN), "deploy/xlb@.service no longer names {UNIT_BIN}: update xtask/src/deb.rs");
    write(
        &stage.join("lib/systemd/system/xlb@.service"),
        unit.replace(UNIT_BIN, &format!("/{BIN}")).as_bytes(),
        0o644,
    )?;

    let man = stage.join("usr/share/man/man1");
    write_man_pages(&man)?;
    for page in std::fs::read_dir(&man)? {
        gzip(&page?.path())?;
    }
    let share = stage.join("usr/share");
    write_completion(Shell::Bash, &share.join("bash-completion/completions/xlb"))?;
    write_completion(Shell::Zsh, &share.join("zsh/vendor-completions/_xlb"))?;
    write_completion(Shell::Fish, &share.join("fish/vendor_completions.d/xlb.fish"))?;

    let doc = share.join("doc/xlb");
    copy(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    copy(&root.join("config/example.yaml"), &doc.join("examples/example.yaml"), 0o644)?;
    copy(&root.join("deploy/grafana/xlb.json"), &doc.join("grafana/xlb.json"), 0o644)?;
    copy(&root.join("deploy/prometheus/xlb-alerts.yml"), &doc.join("prometheus/xlb-alerts.yml"), 0o644)?;
    write(&doc.join("copyright"), COPYRIGHT.as_bytes(), 0o644)?;
    // The unit asserts /etc/xlb/IFACE.yaml: the directory is the package's.
    std::fs::create_dir_all(stage.join("etc/xlb"))?;

    let installed_kib = du_kib(stage)?;
    let control = format!(
        "Package: xlb\nVersion: {version}\nArchitecture: {arch}\nMaintainer: xlb developers <xlb@localhost>\n\
         Installed-Size: {installed_kib}\nDepends: libc6, libgcc-s1\nSection: net\nPriority: optional\n\
         Description: XDP L4 load balancer with BGP announcements\n \
         xlb takes VIP traffic at the NIC with XDP, spreads it over backends by\n \
         consistent hashing (direct server return or NAT), announces its VIPs over\n \
         BGP and serves L7 VIPs with its own HTTP proxy. One systemd instance per\n \
         interface: systemctl enable --now xlb@eth0 (config in /etc/xlb/eth0.yaml).\n"
    );
    write(&stage.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(&stage.join("DEBIAN/postinst"), MAINTAINER_SCRIPT.as_bytes(), 0o755)?;
    write(&stage.join("DEBIAN/postrm"), MAINTAINER_SCRIPT.as_bytes(), 0o755)?;
    Ok(())
}

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: xlb\n\nFiles: *\nLicense: MIT or Apache-2.0\n";

/// After install and removal: systemd re-reads its units (the agent is never started or
/// stopped by the package: forwarding outlives it, and the operator picks the interfaces).
const MAINTAINER_SCRIPT: &str = "#!/bin/sh\nset -e\n\
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then\n\
    systemctl daemon-reload || true\nfi\nexit 0\n";

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// `gzip -9n` in place (`-n`: no name or time stamp, so the same page compresses the same).
fn gzip(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("gzip").args(["-9n", "--force"]).arg(path).output().context("running gzip")?;
    if !out.status.success() {
        bail!("gzip {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The size of the tree in KiB (`du -sk`), for Installed-Size.
fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let text = output(Command::new("du").arg("-sk").arg(dir))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sk {}: unexpected output `{text}`", dir.display()))
}

/// A command's standard output, trimmed; its failure with its standard error.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
