//! The agent's interfaces as the kernel reports them: RTM_NEWLINK / RTM_DELLINK notifications
//! (and a read of every link at start and after lost notifications) turned into [`LinkNews`]:
//! whether the link can carry frames, its MTU, whether it is gone. The attachment watch acts on
//! them at once instead of at its next check.

use std::{collections::BTreeSet, time::Duration};

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp, State, XdpAttached},
    },
};
use tokio::task::AbortHandle;

use crate::sources::netlink;

/// What the kernel said about one of the agent's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkNews {
    pub iface: String,
    /// Administratively up and its carrier (operational state) not down.
    pub up: bool,
    pub mtu: Option<u32>,
    /// How an XDP program runs on it, as the kernel says: "native", "generic", "offload" or
    /// "multiple"; `None` when none is attached (or the message does not say).
    pub xdp_mode: Option<&'static str>,
    /// Deleted (RTM_DELLINK).
    pub gone: bool,
}

impl LinkNews {
    /// A link message as news, for an interface named in `watched`.
    pub fn from_message(message: &LinkMessage, deleted: bool, watched: &BTreeSet<String>) -> Option<LinkNews> {
        let (mut name, mut mtu, mut oper, mut xdp_mode) = (None, None, None, None);
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                LinkAttribute::OperState(s) => oper = Some(*s),
                LinkAttribute::Xdp(xdp) => xdp_mode = xdp.iter().find_map(attached_mode),
                _ => {}
            }
        }
        let iface = watched.get(name?)?.clone();
        // Unknown (tun, dummy, some drivers never report one) and dormant count as up.
        let carrier = !matches!(oper, Some(State::Down | State::LowerLayerDown | State::NotPresent));
        let up = !deleted && message.header.flags.contains(LinkFlags::Up) && carrier;
        Some(LinkNews { iface, up, mtu, xdp_mode, gone: deleted })
    }
}

fn attached_mode(xdp: &LinkXdp) -> Option<&'static str> {
    match xdp {
        LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
        LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("generic"),
        LinkXdp::Attached(XdpAttached::Hardware) => Some("offload"),
        LinkXdp::Attached(XdpAttached::Multiple) => Some("multiple"),
        _ => None,
    }
}

/// How long after a failure the subscription is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the interfaces named in `watched` on the current tokio runtime, handing each
/// report to `sink` (every interface once at the start, then on each change the kernel
/// reports). Stops when the returned handle is aborted.
pub fn start(watched: BTreeSet<String>, sink: impl Fn(LinkNews) + Send + Sync + 'static) -> AbortHandle {
    tokio::spawn(async move {
        let mut last_error = None;
        loop {
            if let Err(e) = follow(&watched, &sink).await {
                let error = e.to_string();
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, "cannot follow the interfaces' link state; the attachment check still runs every second");
                    last_error = Some(error);
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    })
    .abort_handle()
}

/// One subscription, until it fails.
async fn follow(watched: &BTreeSet<String>, sink: &impl Fn(LinkNews)) -> std::io::Result<()> {
    let (handle, mut notifications) = netlink::subscribe(&[MulticastGroup::Link])?;
    read_all(&handle, watched, sink).await?;
    while let Some((message, _)) = notifications.next().await {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                LinkNews::from_message(&link, false, watched).into_iter().for_each(sink);
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                LinkNews::from_message(&link, true, watched).into_iter().for_each(sink);
            }
            NetlinkPayload::Overrun(_) => read_all(&handle, watched, sink).await?,
            _ => {}
        }
    }
    Err(std::io::Error::other("the netlink connection closed"))
}

/// Reports every watched interface as it is now.
async fn read_all(handle: &Handle, watched: &BTreeSet<String>, sink: &impl Fn(LinkNews)) -> std::io::Result<()> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink::error("reading the links (RTM_GETLINK)", e))?;
    links.iter().filter_map(|link| LinkNews::from_message(link, false, watched)).for_each(sink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, flags: LinkFlags, oper: State, mtu: u32) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.flags = flags;
        m.attributes =
            vec![LinkAttribute::IfName(name.to_owned()), LinkAttribute::Mtu(mtu), LinkAttribute::OperState(oper)];
        m
    }

    #[test]
    fn link_messages_read_as_news_for_watched_interfaces() {
        let watched = BTreeSet::from(["eth0".to_owned(), "eth1".to_owned()]);
        let news = |m: &LinkMessage, deleted| LinkNews::from_message(m, deleted, &watched);
        let up = LinkFlags::Up | LinkFlags::LowerUp;
        assert_eq!(
            news(&link("eth0", up, State::Up, 1500), false),
            Some(LinkNews { iface: "eth0".into(), up: true, mtu: Some(1500), xdp_mode: None, gone: false })
        );
        assert_eq!(news(&link("eth2", up, State::Up, 1500), false), None, "not watched");
        assert!(!news(&link("eth0", LinkFlags::empty(), State::Down, 1500), false).unwrap().up, "set down");
        assert!(!news(&link("eth0", LinkFlags::Up, State::LowerLayerDown, 1500), false).unwrap().up, "peer down");
        assert!(!news(&link("eth0", LinkFlags::Up, State::Down, 1500), false).unwrap().up, "no carrier");
        assert!(news(&link("eth1", LinkFlags::Up, State::Unknown, 9000), false).unwrap().up, "no state reported");
        let gone = news(&link("eth1", up, State::Up, 9000), true).unwrap();
        assert!(gone.gone && !gone.up);
        let mut native = link("eth0", up, State::Up, 1500);
        native.attributes.push(LinkAttribute::Xdp(vec![LinkXdp::Attached(XdpAttached::Driver), LinkXdp::ProgId(7)]));
        assert_eq!(news(&native, false).unwrap().xdp_mode, Some("native"));
        let mut generic = link("eth0", up, State::Up, 1500);
        generic.attributes.push(LinkAttribute::Xdp(vec![LinkXdp::Attached(XdpAttached::SocketBuffer)]));
        assert_eq!(news(&generic, false).unwrap().xdp_mode, Some("generic"));
        let mut none = link("eth0", up, State::Up, 1500);
        none.attributes.push(LinkAttribute::Xdp(vec![LinkXdp::Attached(XdpAttached::None)]));
        assert_eq!(news(&none, false).unwrap().xdp_mode, None);
        let mut nameless = link("eth0", up, State::Up, 1500);
        nameless.attributes.remove(0);
        assert_eq!(news(&nameless, false), None);
    }
}
