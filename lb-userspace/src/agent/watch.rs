//! The attachment watch: once a second, and at once when the kernel reports a change of the
//! interface (sources/link_events), on a thread of its own, whether each interface still runs
//! the agent's XDP program through its pinned link, and whether its link is up. A link that goes
//! down (set down, carrier lost, its veth peer down) withdraws the VIPs served through it like a
//! lost attachment, without a re-attach; an MTU change is passed on to the control thread. A lost attachment is reported to the
//! control thread (which withdraws the VIPs that depend on that interface), logged, shown in
//! `xlb status` and `/metrics`, and re-attached after a pause that doubles while it keeps being
//! lost — unless the operator detached it through `xlb detach`, which tells the agent first.
//!
//! The watch never waits on the control thread: it sends it commands on an unbounded channel
//! and holds no lock a pass takes. It takes the attachment table's lock for each interface's
//! check, so an operator's detach (which sets its flag under that lock) never races a
//! re-attach.

use std::{
    path::PathBuf,
    sync::{Arc, mpsc::RecvTimeoutError},
    time::{Duration, Instant},
};

pub use crate::sources::link_events::LinkNews;

use tokio::sync::mpsc;

use super::{control::Command, view::Shared, view::lock};
use crate::{
    apply::dataplane::{
        self, AttachMode, Attached, Loaded,
        link_state::{LinkState, ifindex, link_state},
    },
    serve::admin::AttachmentStatus,
    sources::ethtool,
};

/// How often each attachment is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The first re-attach comes this long after the loss was seen, so the withdrawal reaches the
/// routers and whoever detached it sees it stay off for a moment; a re-attached interface that
/// is lost again waits twice as long, up to `REATTACH_MAX`.
pub const REATTACH_FIRST: Duration = Duration::from_secs(2);
const REATTACH_MAX: Duration = Duration::from_secs(60);
/// Attached this long, an interface's next loss waits `REATTACH_FIRST` again.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// At most one warning this often per interface for checks that could not run.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One interface as the watch follows it.
#[derive(Debug)]
struct Link {
    iface: String,
    pin: PathBuf,
    /// When it was last (re-)attached.
    attached_at: Instant,
    /// When to try re-attaching next, while detached.
    retry_at: Instant,
    backoff: Duration,
    last_warning: Option<Instant>,
    /// When transmit failures were last warned about.
    last_drop_warning: Option<Instant>,
    /// The MTU the kernel last reported.
    mtu: Option<u32>,
}

/// What the watch thread is told.
#[derive(Debug)]
pub enum Signal {
    /// The kernel reported a change of an interface.
    Link(LinkNews),
    Stop,
}

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Attached,
    Lost(String),
    /// The check itself failed (out of file descriptors, say): the state stays as it was.
    Unknown(String),
}

fn check(iface: &str, pin: &std::path::Path) -> Check {
    let index = match ifindex(iface) {
        Ok(Some(index)) => index,
        Ok(None) => return Check::Lost(format!("interface {iface} is gone")),
        Err(e) => return Check::Unknown(format!("looking up interface {iface}: {e}")),
    };
    match link_state(pin) {
        Ok(LinkState::Attached { ifindex }) if ifindex == index => Check::Attached,
        Ok(LinkState::Attached { ifindex }) => Check::Lost(format!(
            "the pinned link is on interface index {ifindex}, not {iface}'s {index} (was {iface} recreated?)"
        )),
        Ok(LinkState::Missing) => {
            Check::Lost(format!("the pinned link {} was removed, which detached the program", pin.display()))
        }
        Ok(LinkState::Defunct) => {
            Check::Lost("the link was detached in place (bpftool link detach), or its interface was deleted".to_owned())
        }
        Err(e) => Check::Unknown(format!("reading the pinned link {}: {e}", pin.display())),
    }
}

/// The interfaces the agent attached, all attached, with their drivers' transmit-failure counts
/// so far (a veth is named in the log: its traffic needs XDP on the peer too).
pub fn initial(links: &[(String, PathBuf)]) -> Vec<AttachmentStatus> {
    links
        .iter()
        .map(|(iface, _)| {
            if ethtool::driver(iface).is_ok_and(|(driver, _)| driver == "veth") {
                tracing::info!(
                    %iface,
                    "a veth: frames XDP sends out of it reach its peer only while the peer runs an XDP program (and senders must not leave checksums to offload); failures are counted (xlb_xdp_transmit_errors_total) and warned about"
                );
            }
            AttachmentStatus {
                iface: iface.clone(),
                attached: true,
                operator_detached: false,
                link_down: false,
                mode: None,
                reason: None,
                reattached: 0,
                transmit_errors: transmit_errors(iface),
            }
        })
        .collect()
}

/// The driver's count of frames XDP sent out of `iface` that it dropped, if it keeps one.
fn transmit_errors(iface: &str) -> Option<u64> {
    ethtool::xdp_transmit_errors(iface)
        .inspect_err(|e| tracing::debug!(%iface, error = %e, "cannot read the driver's statistics"))
        .ok()
        .flatten()
}

/// Reads the interface's transmit failures again; warns (at most every `WARN_EVERY`) when they
/// grew: the counters say "forwarded" for frames the driver then dropped.
fn follow_transmit_errors(link: &mut Link, status: &mut AttachmentStatus, now: Instant) {
    let Some(before) = status.transmit_errors else { return };
    let Some(now_count) = transmit_errors(&link.iface) else { return };
    status.transmit_errors = Some(now_count);
    if now_count > before && link.last_drop_warning.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
        link.last_drop_warning = Some(now);
        tracing::warn!(
            iface = %link.iface,
            dropped = now_count - before,
            total = now_count,
            "the driver dropped frames XDP sent out of this interface: on a veth, attach an XDP program to its peer (any, even one that passes everything) and turn tx checksum offload off on the senders"
        );
    }
}

/// Starts the watch over `links` (interface, pinned link), which `program` attached. It stops
/// on [`Signal::Stop`] or when every sender is gone, and hands `program` back.
pub fn start(
    program: Loaded,
    links: Vec<(String, PathBuf)>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
) -> anyhow::Result<(std::sync::mpsc::Sender<Signal>, std::thread::JoinHandle<Loaded>)> {
    let (signal, signals) = std::sync::mpsc::channel::<Signal>();
    let now = Instant::now();
    let mut links: Vec<Link> = links
        .into_iter()
        .map(|(iface, pin)| Link {
            iface,
            pin,
            attached_at: now,
            retry_at: now,
            backoff: REATTACH_FIRST,
            last_warning: None,
            last_drop_warning: None,
            mtu: None,
        })
        .collect();
    let thread = std::thread::Builder::new().name("xlb-attach-watch".into()).spawn(move || {
        let mut program = program;
        let mut next_check = Instant::now() + CHECK_EVERY;
        loop {
            match signals.recv_timeout(next_check.saturating_duration_since(Instant::now())) {
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Signal::Link(news)) => {
                    if let Some(link) = links.iter_mut().find(|l| l.iface == news.iface) {
                        link_news(&mut program, link, &news, &shared, &commands);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    for link in &mut links {
                        step(&mut program, link, &shared, &commands);
                    }
                    next_check = Instant::now() + CHECK_EVERY;
                }
            }
        }
        program
    })?;
    Ok((signal, thread))
}

/// Acts on what the kernel reported about `link`: up or down (the control thread withdraws or
/// announces its VIPs), a new MTU (the control thread re-reads the interfaces), and whatever it
/// means for the attachment (a deleted or recreated interface), checked now.
fn link_news(
    program: &mut Loaded,
    link: &mut Link,
    news: &LinkNews,
    shared: &Shared,
    commands: &mpsc::UnboundedSender<Command>,
) {
    {
        let mut table = lock(&shared.attachments);
        let Some(status) = table.iter_mut().find(|s| s.iface == link.iface) else { return };
        let iface = link.iface.clone();
        if let Some(mode) = news.xdp_mode {
            status.mode = Some(mode.to_owned());
        }
        let mtu_changed = link.mtu.is_some() && news.mtu.is_some() && news.mtu != link.mtu;
        link.mtu = news.mtu.or(link.mtu);
        if status.link_down == news.up {
            status.link_down = !news.up;
            if news.up {
                tracing::info!(%iface, "link up again: announcing the VIPs served through it");
            } else {
                tracing::warn!(%iface, gone = news.gone, "link down (set down, carrier lost or deleted): withdrawing the VIPs served through it");
            }
            let _ = commands.send(Command::Attachment { iface, attached: serving(status), reply: None });
        } else if mtu_changed && serving(status) {
            tracing::info!(%iface, mtu = ?news.mtu, "MTU changed: rewriting the node settings");
            let _ = commands.send(Command::Attachment { iface, attached: true, reply: None });
        }
    }
    step(program, link, shared, commands);
}

/// Whether the interface carries the VIPs' traffic: XDP attached and the link up.
fn serving(status: &AttachmentStatus) -> bool {
    status.attached && !status.link_down
}

/// Checks one interface and acts on what it finds, under the attachment table's lock.
fn step(program: &mut Loaded, link: &mut Link, shared: &Shared, commands: &mpsc::UnboundedSender<Command>) {
    let mut table = lock(&shared.attachments);
    let Some(status) = table.iter_mut().find(|s| s.iface == link.iface) else { return };
    if status.operator_detached {
        return;
    }
    let now = Instant::now();
    follow_transmit_errors(link, status, now);
    let iface = link.iface.clone();
    match (status.attached, check(&link.iface, &link.pin)) {
        (_, Check::Unknown(error)) => {
            if link.last_warning.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
                link.last_warning = Some(now);
                tracing::warn!(%iface, %error, "cannot check the XDP attachment; keeping its last known state");
            }
        }
        (true, Check::Attached) => {
            if now.duration_since(link.attached_at) >= STABLE_AFTER {
                link.backoff = REATTACH_FIRST;
            }
        }
        (true, Check::Lost(reason)) => {
            link.retry_at = now + link.backoff;
            tracing::error!(
                %iface,
                %reason,
                retry_in = ?link.backoff,
                "XDP is no longer attached: withdrawing the VIPs served through it; re-attaching (`xlb detach` detaches for good)"
            );
            status.attached = false;
            status.reason = Some(reason);
            let _ = commands.send(Command::Attachment { iface, attached: false, reply: None });
        }
        (false, Check::Attached) => {
            // Someone else put it back (a restored pin).
            tracing::info!(%iface, "XDP attached again");
            mark_attached(link, status, now, commands);
        }
        (false, Check::Lost(reason)) if now >= link.retry_at => match reattach(program, link) {
            Ok(mode) => {
                if let Some(mode) = mode {
                    status.mode = Some(mode.to_owned());
                }
                tracing::info!(%iface, after = %reason, "XDP re-attached; announcing its VIPs again");
                status.reattached += 1;
                mark_attached(link, status, now, commands);
                link.backoff = (link.backoff * 2).min(REATTACH_MAX);
            }
            Err(error) => {
                link.retry_at = now + link.backoff;
                tracing::error!(%iface, %error, retry_in = ?link.backoff, "re-attaching XDP failed");
                link.backoff = (link.backoff * 2).min(REATTACH_MAX);
                status.reason = Some(format!("{reason}; re-attaching failed: {error}"));
            }
        },
        (false, Check::Lost(_)) => {}
    }
}

fn mark_attached(
    link: &mut Link,
    status: &mut AttachmentStatus,
    now: Instant,
    commands: &mpsc::UnboundedSender<Command>,
) {
    link.attached_at = now;
    status.attached = true;
    status.reason = None;
    let _ = commands.send(Command::Attachment { iface: link.iface.clone(), attached: serving(status), reply: None });
}

/// Attaches afresh: a pin left behind by a defunct link (or one on a vanished interface) goes
/// first, since the kernel refuses to update a link that is attached nowhere.
fn reattach(program: &mut Loaded, link: &Link) -> Result<Option<&'static str>, String> {
    if !matches!(link_state(&link.pin), Ok(LinkState::Missing)) {
        dataplane::detach_pinned(&link.pin).map_err(|e| format!("removing the stale pin: {e}"))?;
    }
    match program.attach_pinned(&link.iface, &link.pin).map_err(|e| e.to_string())? {
        Attached::New(mode) => {
            tracing::debug!(iface = %link.iface, ?mode, "attached");
            Ok(Some(match mode {
                AttachMode::Native => "native",
                AttachMode::Generic => "generic",
            }))
        }
        Attached::Replaced => Ok(None),
    }
}
