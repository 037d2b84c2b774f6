//! One agent per interface. Each interface's pin directory (on bpffs) is locked with `flock`
//! on the directory itself: bpffs holds no regular files, but any directory can be flocked. The
//! kernel drops the lock when the holder exits, however it exits (SIGKILL included), so a dead
//! agent never blocks the next one.
//!
//! Beside the lock the holder leaves an owner record — a symlink named `owner` whose target is
//! a line of JSON (pid, config, command), the one kind of non-pin entry bpffs allows — so a
//! refused agent can say who holds the interface. The record is only a label: who holds the lock
//! is read from `/proc/locks`, and a record whose pid does not match it is not believed.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The owner record's name in a pin directory (bpffs refuses names with a dot).
const OWNER: &str = "owner";
const OWNER_NEW: &str = "owner-new";

/// Who holds an interface: what the owner record says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The holder's config file, when it is an agent.
    #[serde(default)]
    pub config: Option<String>,
    /// What the holder runs (`xlb run`, `xlb detach`).
    pub command: String,
}

impl Owner {
    /// This process, running `command` with `config`.
    pub fn this_process(command: &str, config: Option<&Path>) -> Self {
        let config = config.map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.to_owned()).display().to_string());
        Owner { pid: std::process::id(), config, command: command.to_owned() }
    }
}

/// What is known of the process holding a lock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holder {
    pub pid: Option<u32>,
    pub config: Option<String>,
    /// The holder's command line (`/proc/PID/cmdline`) or the command its record names.
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => write!(f, "pid unknown (/proc/locks does not show it)")?,
        }
        if let Some(config) = &self.config {
            write!(f, ", config {config}")?;
        }
        if let Some(command) = &self.command {
            write!(f, ", running `{command}`")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("locking {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "interface {iface} is held by another xlb ({holder}; lock on {}). One agent per interface: stop that one first ({}), or talk to it (`xlb status`). Nothing was changed",
        dir.display(),
        stop_hint(iface, holder)
    )]
    Held { iface: String, dir: PathBuf, holder: Holder },
}

fn stop_hint(iface: &str, holder: &Holder) -> String {
    match holder.pid {
        Some(pid) => format!("`systemctl stop xlb@{iface}`, or `kill {pid}`"),
        None => format!("`systemctl stop xlb@{iface}`"),
    }
}

/// Exclusive hold on the pin directories of the interfaces an agent (or a CLI command that
/// changes pins) works on, released when dropped or when the process ends.
#[derive(Debug)]
pub struct InstanceLock {
    dirs: Vec<(PathBuf, File)>,
}

impl InstanceLock {
    /// Locks each `(iface, dir)` pin directory (which must exist), all or none, and leaves
    /// `owner` as the record in each.
    pub fn acquire<'a>(dirs: impl IntoIterator<Item = (&'a str, &'a Path)>, owner: &Owner) -> Result<Self, LockError> {
        let mut held = Vec::new();
        for (iface, dir) in dirs {
            // On failure the locks already taken go with `held`.
            held.push((dir.to_owned(), lock_dir(iface, dir)?));
        }
        let lock = InstanceLock { dirs: held };
        lock.write_owner(owner);
        Ok(lock)
    }

    /// The directories held.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(dir, _)| dir.as_path())
    }

    /// Replaces the owner record in every directory held (a failure is only logged: the lock
    /// holds either way).
    fn write_owner(&self, owner: &Owner) {
        let Ok(text) = serde_json::to_string(owner) else { return };
        for (dir, _) in &self.dirs {
            let (new, record) = (dir.join(OWNER_NEW), dir.join(OWNER));
            let _ = std::fs::remove_file(&new);
            if let Err(e) = std::os::unix::fs::symlink(&text, &new).and_then(|()| std::fs::rename(&new, &record)) {
                tracing::warn!(path = %record.display(), error = %e, "could not write the owner record; a refused agent will not see this one's config");
            }
        }
    }
}

/// Takes the flock of `dir` without waiting.
fn lock_dir(iface: &str, dir: &Path) -> Result<File, LockError> {
    let io = |source| LockError::Io { path: dir.to_owned(), source };
    // Read-only, as a directory: std opens with O_CLOEXEC, so no child inherits the lock.
    let file = File::open(dir).map_err(io)?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() != std::io::ErrorKind::WouldBlock {
        return Err(io(e));
    }
    Err(LockError::Held { iface: iface.to_owned(), dir: dir.to_owned(), holder: holder(dir, &file) })
}

/// Who holds the lock on `dir` (opened as `file`): the pid from `/proc/locks`, and the owner
/// record's config when the record is that process's.
fn holder(dir: &Path, file: &File) -> Holder {
    // /proc/locks is read in pieces; locks that other processes take or drop meanwhile shift
    // its lines, so one read can miss ours: a few reads before giving up on the pid.
    let pid = file.metadata().ok().and_then(|meta| {
        (0..3).find_map(|_| flock_holder(&std::fs::read_to_string("/proc/locks").ok()?, meta.dev(), meta.ino()))
    });
    let record: Option<Owner> =
        std::fs::read_link(dir.join(OWNER)).ok().and_then(|target| serde_json::from_str(target.to_str()?).ok());
    match (pid, record) {
        (Some(pid), Some(record)) if record.pid == pid => {
            Holder { pid: Some(pid), config: record.config, command: Some(record.command) }
        }
        (Some(pid), _) => Holder { pid: Some(pid), config: None, command: cmdline(pid) },
        (None, Some(record)) => Holder { pid: None, config: record.config, command: Some(record.command) },
        (None, None) => Holder::default(),
    }
}

/// A process's command line, arguments joined by spaces.
fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// The pid holding a write flock on the inode `ino` of device `dev`, from `/proc/locks` text.
/// Lines read `N: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE START END` (major and minor in hex);
/// waiters are marked `->` and skipped.
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    // The kernel's dev_t encoding (glibc's gnu_dev_major / gnu_dev_minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, file, ..] if *file == wanted => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xlb-lock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn proc_locks_lines_name_the_holder() {
        let locks = "1: FLOCK  ADVISORY  WRITE 7161 fe:00:5873778 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 7531 00:29:5615030 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 8000 00:29:5615030 0 EOF\n\
                     3: POSIX  ADVISORY  WRITE 9000 00:29:42 0 EOF\n";
        // Device 0:41 (0x29).
        assert_eq!(flock_holder(locks, 41, 5_615_030), Some(7531));
        assert_eq!(flock_holder(locks, 0xfe << 8, 5_873_778), Some(7161));
        assert_eq!(flock_holder(locks, 41, 42), None, "a POSIX lock is not the flock");
        assert_eq!(flock_holder(locks, 41, 1), None);
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_config() {
        let dir = temp_dir("second");
        let owner = Owner::this_process("xlb run", Some(Path::new("/etc/xlb/eth0.yaml")));
        let first = InstanceLock::acquire([("eth0", dir.as_path())], &owner).unwrap();
        let refused = InstanceLock::acquire([("eth0", dir.as_path())], &owner).unwrap_err();
        let LockError::Held { iface, holder, .. } = &refused else { panic!("{refused}") };
        assert_eq!(iface, "eth0");
        assert_eq!(holder.pid, Some(std::process::id()));
        assert_eq!(holder.config.as_deref(), Some("/etc/xlb/eth0.yaml"));
        let message = refused.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert!(message.contains("config /etc/xlb/eth0.yaml"), "{message}");
        assert!(message.contains("systemctl stop xlb@eth0"), "{message}");
        drop(first);
        let again = InstanceLock::acquire([("eth0", dir.as_path())], &owner).unwrap();
        assert_eq!(again.dirs().count(), 1);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_record_is_not_believed() {
        let dir = temp_dir("stale");
        std::os::unix::fs::symlink(r#"{"pid":1,"config":"/old.yaml","command":"xlb run"}"#, dir.join(OWNER)).unwrap();
        let file = File::open(&dir).unwrap();
        // SAFETY: flock on a descriptor the test owns.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        let refused = lock_dir("eth1", &dir).unwrap_err();
        let LockError::Held { holder, .. } = refused else { panic!("{refused}") };
        assert_eq!(holder.pid, Some(std::process::id()));
        assert_eq!(holder.config, None, "the record names another pid");
        assert!(holder.command.is_some_and(|c| !c.is_empty()));
        drop(file);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
