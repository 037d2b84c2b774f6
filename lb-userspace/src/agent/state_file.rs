//! Operator overrides that outlive the agent: backend drains (`xlb drain VIP BACKEND`), runtime
//! weights (`xlb weight VIP BACKEND N`) and the node drain (`xlb drain node`). They live in a JSON
//! file in a regular directory (bpffs holds only pins), written whole on every change — temp
//! file, fsync, rename, fsync of the directory — so a crash leaves the old file or the new one,
//! never half of one. The agent reads it before its first pass: a drained backend gets no new
//! flows after a restart, not even briefly, and a reweighted one keeps its share.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::state::desired::{BackendRef, BackendStates};

/// The state file's name in the state directory.
pub const FILE_NAME: &str = "state.json";
/// The state directory when neither `--state-dir` nor `agent.state_dir` names one:
/// `/var/lib/xlb/<iface>` (the unit's `StateDirectory=xlb/%i`).
pub const DEFAULT_DIR: &str = "/var/lib/xlb";
/// The format written; older agents refuse newer files rather than drop what they hold.
const VERSION: u32 = 1;

/// The overrides in force.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overrides {
    pub drained: BTreeSet<BackendRef>,
    /// Runtime weights, in place of the config file's.
    pub weights: BTreeMap<BackendRef, u32>,
    pub node_drained: bool,
}

impl Overrides {
    /// What `states` and the node drain hold that the file keeps (not health, not MACs).
    pub fn of(states: &BackendStates, node_drained: bool) -> Self {
        Overrides { drained: states.drained.clone(), weights: states.weights.clone(), node_drained }
    }
}

/// The file's contents.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    #[serde(default)]
    node_drained: bool,
    #[serde(default)]
    drained: Vec<DrainedBackend>,
    /// Absent from files written before runtime weights, and left out while there are none, so
    /// such a file stays readable by an xlb that knows no weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    weights: Vec<WeightedBackend>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainedBackend {
    vip: String,
    backend: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedBackend {
    vip: String,
    backend: String,
    weight: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the state file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the state file {} is not valid ({source}); it holds the drains and weights set with `xlb drain` and `xlb weight`. Repair it, or move it aside (`mv {} {}.bad`) to start with none",
        path.display(),
        path.display(),
        path.display()
    )]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error(
        "the state file {} has format version {found}; this xlb reads version {VERSION}. Run the xlb that wrote it, or move the file aside to start with no drains or runtime weights",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "writing the state file {}: {source}; the change is in force but will not survive a restart (is the state directory writable? `--state-dir`, `agent.state_dir`)",
        path.display()
    )]
    Write { path: PathBuf, source: std::io::Error },
}

pub use crate::serve::summary::StateStatus;

/// The state file of one agent.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The file in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        StateFile { path: dir.join(FILE_NAME) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The overrides on disk; `None` when there is no file. A file that cannot be read or
    /// understood is an error: silently starting without its drains would send new flows to
    /// backends an operator took out.
    pub fn load(&self) -> Result<Option<Overrides>, StateError> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path: self.path.clone(), source }),
        };
        let persisted: Persisted =
            serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path: self.path.clone(), source })?;
        if persisted.version != VERSION {
            return Err(StateError::Version { path: self.path.clone(), found: persisted.version });
        }
        Ok(Some(Overrides {
            drained: persisted.drained.into_iter().map(|d| (d.vip, d.backend)).collect(),
            weights: persisted.weights.into_iter().map(|w| ((w.vip, w.backend), w.weight)).collect(),
            node_drained: persisted.node_drained,
        }))
    }

    /// Replaces the file with `overrides`, atomically and durably.
    pub fn save(&self, overrides: &Overrides) -> Result<(), StateError> {
        let persisted = Persisted {
            version: VERSION,
            node_drained: overrides.node_drained,
            drained: overrides
                .drained
                .iter()
                .map(|(vip, backend)| DrainedBackend { vip: vip.clone(), backend: backend.clone() })
                .collect(),
            weights: overrides
                .weights
                .iter()
                .map(|((vip, backend), &weight)| WeightedBackend { vip: vip.clone(), backend: backend.clone(), weight })
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&persisted).expect("plain data serializes");
        text.push(b'\n');
        self.write_atomically(&text).map_err(|source| StateError::Write { path: self.path.clone(), source })
    }

    fn write_atomically(&self, text: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let temp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
            file.write_all(text)?;
            file.sync_all()?;
            std::fs::rename(&temp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xlb-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn overrides_round_trip_and_a_missing_file_is_none() {
        let dir = temp_dir("roundtrip");
        let file = StateFile::in_dir(&dir.join("eth0"));
        assert_eq!(file.load().unwrap(), None);
        let overrides = Overrides {
            drained: [("web".to_owned(), "10.0.0.2".to_owned()), ("dns".to_owned(), "fd00::1".to_owned())].into(),
            weights: [(("web".to_owned(), "10.0.0.3".to_owned()), 7), (("dns".to_owned(), "fd00::2".to_owned()), 0)]
                .into(),
            node_drained: true,
        };
        file.save(&overrides).unwrap();
        assert_eq!(file.load().unwrap(), Some(overrides));
        file.save(&Overrides::default()).unwrap();
        assert_eq!(file.load().unwrap(), Some(Overrides::default()));
        let leftovers: Vec<_> = std::fs::read_dir(file.path().parent().unwrap()).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "only the state file: {leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_from_before_runtime_weights_loads_and_one_without_weights_stays_that_shape() {
        let dir = temp_dir("old");
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::in_dir(&dir);
        std::fs::write(
            file.path(),
            "{\"version\":1,\"node_drained\":false,\"drained\":[{\"vip\":\"web\",\"backend\":\"10.0.0.2\"}]}",
        )
        .unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!(loaded.drained, [("web".to_owned(), "10.0.0.2".to_owned())].into());
        assert!(loaded.weights.is_empty());
        file.save(&loaded).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains("weights"), "older agents can still read it: {text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_or_newer_file_is_an_error_naming_the_file_and_the_fix() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::in_dir(&dir);
        std::fs::write(file.path(), "{\"version\":1,\"drained\":[{\"vip\":\"web\"").unwrap();
        let message = file.load().unwrap_err().to_string();
        assert!(message.contains(&file.path().display().to_string()), "{message}");
        assert!(message.contains("move it aside"), "{message}");
        std::fs::write(file.path(), "{\"version\":2}").unwrap();
        let message = file.load().unwrap_err().to_string();
        assert!(message.contains("format version 2"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_says_what_was_restored() {
        let status = StateStatus {
            path: "/var/lib/xlb/eth0/state.json".into(),
            found: true,
            restored_drains: 2,
            restored_node_drain: true,
            pruned_drains: 1,
            ..Default::default()
        };
        assert_eq!(
            status.render(),
            "state file /var/lib/xlb/eth0/state.json: restored 2 backend drains and the node drain at start (1 of backends no longer configured dropped)\n"
        );
        let status = StateStatus { restored_weights: 3, pruned_weights: 1, ..status };
        assert_eq!(
            status.render(),
            "state file /var/lib/xlb/eth0/state.json: restored 2 backend drains, 3 runtime weights and the node drain at start (2 of backends no longer configured dropped)\n"
        );
    }
}
