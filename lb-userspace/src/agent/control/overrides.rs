//! The operator's per-backend overrides: drains (`xlb drain VIP BACKEND`) and runtime weights
//! (`xlb weight VIP BACKEND N`). Both name a backend the config has, go to the state file before
//! they take effect (what the agent confirmed survives a crash), and go away with their backend
//! when a reload or a start no longer configures it.

use super::Control;
use crate::{
    config::{self, Config, MAX_WEIGHT},
    l7,
    serve::admin::Reply,
    state::desired::{BackendRef, BackendStates},
};

/// What the operator asks of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// No new flows (or with `undo`, new flows again).
    Drain { undo: bool },
    /// A runtime weight in place of the config file's (`None`: the file's again).
    Weight(Option<u32>),
}

impl Override {
    /// Puts the override in force in `states`; whether that changed anything.
    fn apply(self, states: &mut BackendStates, at: BackendRef) -> bool {
        match self {
            Override::Drain { undo: true } => states.drained.remove(&at),
            Override::Drain { undo: false } => states.drained.insert(at),
            Override::Weight(None) => states.weights.remove(&at).is_some(),
            Override::Weight(Some(weight)) => states.weights.insert(at, weight) != Some(weight),
        }
    }

    /// What the backend does now, for the reply; `file` is its weight in the config file.
    fn outcome(self, file: Option<u32>) -> String {
        let file = file.map_or_else(|| "?".to_owned(), |w| w.to_string());
        match self {
            Override::Drain { undo: true } => "takes new flows again".to_owned(),
            Override::Drain { undo: false } => "drained: no new flows, established ones finish".to_owned(),
            Override::Weight(None) => format!("back to the config's weight {file}"),
            Override::Weight(Some(0)) => {
                format!("weight 0 (config {file}): no new flows, established ones finish")
            }
            Override::Weight(Some(weight)) => format!("weight {weight} (config {file}) until `--reset`"),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Override::Drain { .. } => "drain",
            Override::Weight(_) => "weight",
        }
    }

    /// Whether `vip` can take this override: the proxy weighs l7 routes' backends itself, from
    /// the config.
    fn check(self, vip: &config::Vip, backend: &str) -> Result<(), String> {
        match self {
            Override::Weight(Some(weight)) if weight > MAX_WEIGHT => Err(format!(
                "weight {weight} for backend `{backend}` of VIP `{}` is above {MAX_WEIGHT}; weights are relative, scale them down (0 takes no new flows)",
                vip.name
            )),
            Override::Weight(_) if vip.l7.is_some() => Err(format!(
                "VIP `{}` is mode: l7, whose proxy weighs its route backends from the config file; change `weight` there (`xlb weight` reweights L4 VIPs)",
                vip.name
            )),
            _ => Ok(()),
        }
    }
}

impl Control {
    /// `xlb drain VIP BACKEND` and `xlb weight VIP BACKEND`: checked, persisted, then applied.
    pub(super) fn set_override(&mut self, vip: String, backend: String, change: Override) -> Reply {
        // An l7 VIP's weight is refused before its backend is looked for: it is named otherwise.
        let found = find_vip(&self.config, &vip)
            .and_then(|configured| change.check(configured, &backend).map(|()| configured))
            .and_then(|configured| has_backend(configured, &backend).map(|()| configured));
        let configured = match found {
            Ok(configured) => configured,
            Err(e) => return Reply::Error(e),
        };
        let file_weight = configured
            .backends
            .iter()
            .zip(configured.backend_identities())
            .find(|(_, identity)| *identity == backend)
            .map(|(b, _)| b.weight);
        let changed = change.apply(&mut self.states, (vip.clone(), backend.clone()));
        self.dirty = true;
        // On disk before it takes effect: an override the agent confirmed survives a crash.
        let persisted = if changed { self.persist() } else { Ok(()) };
        if let Err(e) = self.converge() {
            return Reply::Error(format!("applying the {} failed: {e}", change.noun()));
        }
        let outcome = change.outcome(file_weight);
        tracing::info!(%vip, %backend, %outcome, "{}", change.noun());
        let done = format!("{vip} {backend}: {outcome}{}", if changed { "" } else { " (already so)" });
        match persisted {
            Ok(()) => Reply::Done(done),
            Err(e) => Reply::Error(format!("{done}; but {e}")),
        }
    }
}

/// The configured VIP named `vip`; else an error listing those there are.
fn find_vip<'c>(config: &'c Config, vip: &str) -> Result<&'c config::Vip, String> {
    config.vips.iter().find(|v| v.name == vip).ok_or_else(|| {
        let names: Vec<&str> = config.vips.iter().map(|v| v.name.as_str()).collect();
        format!("no VIP named `{vip}`; configured: {}", names.join(", "))
    })
}

/// Whether `vip` has `backend`; else an error listing its backends.
fn has_backend(vip: &config::Vip, backend: &str) -> Result<(), String> {
    let identities = backend_identities(vip);
    if identities.iter().any(|b| b == backend) {
        return Ok(());
    }
    Err(format!("VIP `{}` has no backend `{backend}`; its backends: {}", vip.name, identities.join(", ")))
}

/// A VIP's backends as health checks and drains name them: addresses (`address:port` for an
/// address listed with several ports), `address:port` for an l7 VIP's.
fn backend_identities(vip: &config::Vip) -> Vec<String> {
    match &vip.l7 {
        Some(l7) => l7.backends().map(l7::config::L7Backend::identity).collect(),
        None => vip.backend_identities(),
    }
}

/// The overrides a prune dropped, by kind.
#[derive(Debug, Default)]
pub struct Pruned {
    pub drains: Vec<BackendRef>,
    pub weights: Vec<BackendRef>,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        self.drains.is_empty() && self.weights.is_empty()
    }

    /// One info line per override dropped; `when` says where (`"at start"`, `"at reload"`).
    pub fn log(&self, when: &str) {
        for (vip, backend) in &self.drains {
            tracing::info!(%vip, %backend, when, "drain dropped: the backend is no longer configured");
        }
        for (vip, backend) in &self.weights {
            tracing::info!(%vip, %backend, when, "runtime weight dropped: the backend is no longer configured");
        }
    }
}

/// Drains and runtime weights of backends that are no longer configured go with them.
pub fn prune_overrides(states: &mut BackendStates, config: &Config) -> Pruned {
    let configured = |(vip, backend): &BackendRef| {
        config.vips.iter().any(|v| v.name == *vip && backend_identities(v).contains(backend))
    };
    let keep = |at: &BackendRef, dropped: &mut Vec<BackendRef>| {
        let keep = configured(at);
        if !keep {
            dropped.push(at.clone());
        }
        keep
    };
    let mut pruned = Pruned::default();
    states.drained.retain(|at| keep(at, &mut pruned.drains));
    states.weights.retain(|at, _| keep(at, &mut pruned.weights));
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_of_backends_gone_from_the_config_are_pruned() {
        let text = "vips:\n  - { name: web, address: 192.0.2.1, port: 80, protocol: tcp, mode: dsr-l2, backends: [{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }] }\n";
        let config = config::parse(std::path::Path::new("t.yaml"), text).unwrap();
        let at = |vip: &str, b: &str| (vip.to_owned(), b.to_owned());
        let mut states = BackendStates::default();
        states.drained.extend([at("web", "10.0.0.1"), at("web", "10.0.0.2")]);
        states.weights.extend([(at("web", "10.0.0.1"), 3), (at("gone", "10.0.0.1"), 0)]);
        let pruned = prune_overrides(&mut states, &config);
        assert_eq!((pruned.drains, pruned.weights), (vec![at("web", "10.0.0.2")], vec![at("gone", "10.0.0.1")]));
        assert_eq!(states.drained, [at("web", "10.0.0.1")].into());
        assert_eq!(states.weights, [(at("web", "10.0.0.1"), 3)].into());
    }

    #[test]
    fn weights_are_checked_and_errors_name_the_vip_and_backend() {
        let text = "vips:\n  - { name: web, address: 192.0.2.1, port: 80, protocol: tcp, mode: dsr-l2, backends: [{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }] }\n";
        let config = config::parse(std::path::Path::new("t.yaml"), text).unwrap();
        assert_eq!(find_vip(&config, "api").unwrap_err(), "no VIP named `api`; configured: web");
        let web = find_vip(&config, "web").unwrap();
        assert_eq!(
            has_backend(web, "10.0.0.9").unwrap_err(),
            "VIP `web` has no backend `10.0.0.9`; its backends: 10.0.0.1"
        );
        assert_eq!(has_backend(web, "10.0.0.1"), Ok(()));
        let too_high = Override::Weight(Some(MAX_WEIGHT + 1)).check(web, "10.0.0.1").unwrap_err();
        assert!(too_high.contains("`10.0.0.1` of VIP `web`") && too_high.contains("above 65535"), "{too_high}");
        for weight in [Some(0), Some(MAX_WEIGHT), None] {
            assert_eq!(Override::Weight(weight).check(web, "10.0.0.1"), Ok(()));
        }
        let mut states = BackendStates::default();
        let at = || ("web".to_owned(), "10.0.0.1".to_owned());
        assert!(Override::Weight(Some(2)).apply(&mut states, at()));
        assert!(!Override::Weight(Some(2)).apply(&mut states, at()), "already so");
        assert!(Override::Weight(None).apply(&mut states, at()));
        assert!(!Override::Weight(None).apply(&mut states, at()));
        assert_eq!(Override::Weight(Some(2)).outcome(Some(1)), "weight 2 (config 1) until `--reset`");
    }
}
