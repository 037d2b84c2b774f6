//! Builds the XDP objects (lb-ebpf's binaries) into OUT_DIR so the agent can embed them.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?;
    let ebpf_dir = workspace.join("lb-ebpf");
    let common_dir = workspace.join("lb-common");
    println!("cargo::rerun-if-changed={}", common_dir.display());

    // The eBPF sub-build uses the toolchain pinned for the workspace, whose LLVM bpf-linker
    // was built against (scripts/setup.sh); a different LLVM fails as "Invalid record".
    let pinned = std::fs::read_to_string(workspace.join("rust-toolchain.toml")).context("read rust-toolchain.toml")?;
    let toolchain = pinned
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("channel")
                .map(|v| v.trim_start_matches([' ', '=']).trim().trim_matches('"').to_owned())
        })
        .ok_or_else(|| anyhow!("rust-toolchain.toml has no `channel = \"...\"` line"))?;
    println!("cargo::rerun-if-changed={}", workspace.join("rust-toolchain.toml").display());

    // Host-only builds (no bpf-linker, no rust-src): embed empty objects; loading then fails
    // with DataplaneError::NotBuilt instead of the build failing.
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        for object in ["xlb-balancer", "xlb-decap", "xlb-floor", "xlb-traffic"] {
            std::fs::write(out_dir.join(object), [])?;
        }
        return Ok(());
    }

    // -Z build-std=core needs unstable cargo features; allow them for that sub-build only.
    // SAFETY: the build script is single-threaded at this point; nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "lb-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the XDP program (lb-ebpf); run ./scripts/setup.sh if bpf-linker or rust-src is missing")
}
