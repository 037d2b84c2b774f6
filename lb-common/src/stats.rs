//! Counters of the balancer (global, per CPU) and of the decapsulation program, with their names.

/// Global per-CPU counters, indexed by `Stat as u32` in the `STATS` array.
///
/// Every packet the program sees lands in exactly one *outcome* counter, so their sum is the
/// number of packets received. The few *event* counters (`is_outcome() == false`) count things
/// that happen on the way, like connection-table misses.
///
/// Adding a counter: append it before `Count`, add it to `ALL` and give it a name in
/// [`Stat::name`]; the agent and the metrics pick it up from there.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Well-formed packet that is not for a VIP: passed untouched.
    PassNotVip = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    PassNotIp,
    /// VIP packet sent on to its backend (XDP_TX).
    Forwarded,
    /// VIP packet too big once encapsulated: answered with ICMP fragmentation-needed or ICMPv6
    /// packet-too-big (XDP_TX back to the client).
    IcmpTooBigSent,
    /// IPv4 fragment or IPv6 packet with extension headers to a VIP address: its ports are not
    /// reliable, so it is never hashed. Passed or dropped by the address's policy.
    PassUnhashable,
    DropUnhashable,
    /// VIP without a usable backend (no backends, or its Maglev slot is empty).
    DropNoBackend,
    /// Too big once encapsulated, without DF: it cannot be forwarded and must not be fragmented.
    DropTooBig,
    /// dsr-ipip VIP, but no tunnel source of the backend's family is configured.
    DropNoTunnelSource,
    /// The kernel refused to grow or shrink the frame (bpf_xdp_adjust_head/tail).
    DropAdjustFailed,
    /// Malformed: shorter than an Ethernet header.
    TruncatedEth,
    /// Malformed: 802.1Q tag cut short.
    TruncatedVlan,
    /// Malformed: shorter than an IPv4 header, or than its IHL says.
    TruncatedIpv4,
    /// Malformed: IPv4 IHL below 5 or version not 4.
    BadIpv4Header,
    /// Malformed: IPv4 total length shorter than the header or longer than the frame.
    BadIpv4Length,
    /// Malformed: shorter than an IPv6 header.
    TruncatedIpv6,
    /// Malformed: IPv6 version field not 6.
    BadIpv6Header,
    /// Malformed: IPv6 payload length longer than the frame.
    BadIpv6Length,
    /// Malformed: TCP header cut short, or data offset below 5.
    TruncatedTcp,
    /// Malformed: UDP header cut short.
    TruncatedUdp,
    /// Malformed: ICMP/ICMPv6 header cut short.
    TruncatedIcmp,
    /// Event: the connection table had no entry for a VIP packet.
    FlowMiss,
    /// Event: the connection table pointed at a retired backend; the flow was re-hashed.
    FlowStale,
    /// Event: an ICMP error about a VIP flow was sent to the backend that owns the flow.
    IcmpErrorToBackend,
    /// NAT: a client packet translated and sent to its backend.
    NatForwarded,
    /// NAT: a backend's reply translated and sent to the client.
    NatReplied,
    /// NAT: an ICMP error about a NAT flow translated and sent on (either direction).
    NatIcmpTranslated,
    /// NAT: every (address, port) of the pool is taken toward this backend.
    DropPoolExhausted,
    /// NAT: the NAT table is full (`node.nat_table_size`).
    DropNatTableFull,
    /// NAT: a TCP packet that is not a SYN, of no known flow (its state is gone or expired).
    DropNatNoFlow,
    /// NAT: the TTL / hop limit would reach 0.
    DropTtlExceeded,
    /// A packet for a NAT address, but the NAT program is not loaded (the agent sets it), or
    /// the NAT program it reached belongs to another load of the balancer (never, unless program
    /// arrays got mixed across an upgrade).
    DropNatUnavailable,
    /// Event: a NAT port of an expired flow was taken over by a new flow.
    NatPortReclaimed,
    /// Event: a NAT packet left by another interface than it came in on (devmap redirect).
    NatRedirected,
    /// NAT: the packet must leave by an interface the redirect map does not hold.
    DropNoEgress,
    /// Event: a new flow (TCP SYN, UDP) found every entry of its connection-table set held by a
    /// confirmed, live flow: it was sent by the Maglev table without being recorded, so that a
    /// flood of new flows cannot evict established ones.
    FlowSetFull,
    /// Event: a new NAT flow took a source an earlier flow of its backend released (the slot's
    /// free-source hints), without a scan of the pool.
    NatSourceReused,
    /// Source policy: the source is on a deny list of the VIP or the node.
    DropSourceDenied,
    /// Source policy: the VIP or the node serves only allowed sources (`allow_only`), and no
    /// allow entry names this one.
    DropSourceNotAllowed,
    /// Source policy: the source prefix opened new flows faster than its limit allows.
    DropSourceLimited,
    /// Event: a new flow was admitted without being counted: both bucket slots of its source
    /// prefix were held by prefixes being limited (the buckets are too few for this flood).
    SourceUntracked,
    /// SYN cookies: a SYN to a NAT VIP answered with a cookie SYN-ACK (sent back out).
    SynCookieSent,
    /// SYN cookies: an ACK carried a valid cookie: a pool port claimed, the SYN sent to the
    /// backend.
    SynCookieOpened,
    /// SYN cookies: an ACK of no flow at a VIP with cookies carried no valid cookie (forged, or
    /// older than two periods).
    DropSynCookieInvalid,
    /// SYN cookies: the backend's SYN-ACK answered with the ACK that completes its handshake.
    SynCookieHandshake,
    /// SYN cookies: a client packet came before the backend's SYN-ACK: it went as the SYN again
    /// (the client sends its data again once the backend answered).
    SynCookieSynResent,
    /// SYN cookies: a packet of a cookie flow whose sequence state is gone (dropped).
    DropSynCookieNoState,
    /// Connection limit: a new flow to a VIP that opened new flows faster than its
    /// `connection_limit` allows (dropped).
    DropConnLimited,
    /// Connection limit: a SYN over the VIP's `connection_limit` answered with a RST
    /// (`on_limit: reset`).
    ConnLimitReset,
    Count,
}

pub const STAT_COUNT: u32 = Stat::Count as u32;

/// Room for counters in `StatCounters`: more than there are, so that a later version's new
/// counters (appended) keep the pinned `STATS` map's value size and an upgrade adopts it with
/// its counts instead of refusing the pins.
pub const STAT_SLOTS: usize = 64;
const _: () = assert!(STAT_COUNT as usize <= STAT_SLOTS);

/// All global counters of one CPU: the single value of the per-CPU `STATS` array, so the program
/// looks it up once per packet and bumps fields with plain increments. Slots past `STAT_COUNT`
/// stay zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatCounters {
    pub values: [u64; STAT_SLOTS],
}

impl Default for StatCounters {
    fn default() -> Self {
        Self { values: [0; STAT_SLOTS] }
    }
}

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::PassNotVip,
        Stat::PassNotIp,
        Stat::Forwarded,
        Stat::IcmpTooBigSent,
        Stat::PassUnhashable,
        Stat::DropUnhashable,
        Stat::DropNoBackend,
        Stat::DropTooBig,
        Stat::DropNoTunnelSource,
        Stat::DropAdjustFailed,
        Stat::TruncatedEth,
        Stat::TruncatedVlan,
        Stat::TruncatedIpv4,
        Stat::BadIpv4Header,
        Stat::BadIpv4Length,
        Stat::TruncatedIpv6,
        Stat::BadIpv6Header,
        Stat::BadIpv6Length,
        Stat::TruncatedTcp,
        Stat::TruncatedUdp,
        Stat::TruncatedIcmp,
        Stat::FlowMiss,
        Stat::FlowStale,
        Stat::IcmpErrorToBackend,
        Stat::NatForwarded,
        Stat::NatReplied,
        Stat::NatIcmpTranslated,
        Stat::DropPoolExhausted,
        Stat::DropNatTableFull,
        Stat::DropNatNoFlow,
        Stat::DropTtlExceeded,
        Stat::DropNatUnavailable,
        Stat::NatPortReclaimed,
        Stat::NatRedirected,
        Stat::DropNoEgress,
        Stat::FlowSetFull,
        Stat::NatSourceReused,
        Stat::DropSourceDenied,
        Stat::DropSourceNotAllowed,
        Stat::DropSourceLimited,
        Stat::SourceUntracked,
        Stat::SynCookieSent,
        Stat::SynCookieOpened,
        Stat::DropSynCookieInvalid,
        Stat::SynCookieHandshake,
        Stat::SynCookieSynResent,
        Stat::DropSynCookieNoState,
        Stat::DropConnLimited,
        Stat::ConnLimitReset,
    ];

    /// Stable snake_case name, used in `xlb stats` and as the metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::PassNotVip => "pass_not_vip",
            Stat::PassNotIp => "pass_not_ip",
            Stat::Forwarded => "forwarded",
            Stat::IcmpTooBigSent => "icmp_too_big_sent",
            Stat::PassUnhashable => "pass_unhashable",
            Stat::DropUnhashable => "drop_unhashable",
            Stat::DropNoBackend => "drop_no_backend",
            Stat::DropTooBig => "drop_too_big",
            Stat::DropNoTunnelSource => "drop_no_tunnel_source",
            Stat::DropAdjustFailed => "drop_adjust_failed",
            Stat::TruncatedEth => "truncated_eth",
            Stat::TruncatedVlan => "truncated_vlan",
            Stat::TruncatedIpv4 => "truncated_ipv4",
            Stat::BadIpv4Header => "bad_ipv4_header",
            Stat::BadIpv4Length => "bad_ipv4_length",
            Stat::TruncatedIpv6 => "truncated_ipv6",
            Stat::BadIpv6Header => "bad_ipv6_header",
            Stat::BadIpv6Length => "bad_ipv6_length",
            Stat::TruncatedTcp => "truncated_tcp",
            Stat::TruncatedUdp => "truncated_udp",
            Stat::TruncatedIcmp => "truncated_icmp",
            Stat::FlowMiss => "flow_miss",
            Stat::FlowStale => "flow_stale",
            Stat::IcmpErrorToBackend => "icmp_error_to_backend",
            Stat::NatForwarded => "nat_forwarded",
            Stat::NatReplied => "nat_replied",
            Stat::NatIcmpTranslated => "nat_icmp_translated",
            Stat::DropPoolExhausted => "drop_pool_exhausted",
            Stat::DropNatTableFull => "drop_nat_table_full",
            Stat::DropNatNoFlow => "drop_nat_no_flow",
            Stat::DropTtlExceeded => "drop_ttl_exceeded",
            Stat::DropNatUnavailable => "drop_nat_unavailable",
            Stat::NatPortReclaimed => "nat_port_reclaimed",
            Stat::NatRedirected => "nat_redirected",
            Stat::DropNoEgress => "drop_no_egress",
            Stat::FlowSetFull => "flow_set_full",
            Stat::NatSourceReused => "nat_source_reused",
            Stat::DropSourceDenied => "drop_source_denied",
            Stat::DropSourceNotAllowed => "drop_source_not_allowed",
            Stat::DropSourceLimited => "drop_source_limited",
            Stat::SourceUntracked => "source_untracked",
            Stat::SynCookieSent => "syn_cookie_sent",
            Stat::SynCookieOpened => "syn_cookie_opened",
            Stat::DropSynCookieInvalid => "drop_syn_cookie_invalid",
            Stat::SynCookieHandshake => "syn_cookie_handshake",
            Stat::SynCookieSynResent => "syn_cookie_syn_resent",
            Stat::DropSynCookieNoState => "drop_syn_cookie_no_state",
            Stat::DropConnLimited => "drop_conn_limited",
            Stat::ConnLimitReset => "conn_limit_reset",
            Stat::Count => "count",
        }
    }

    /// What the counter says happened to a packet, in a clause (`xlb explain` prints it).
    pub const fn meaning(self) -> &'static str {
        match self {
            Stat::PassNotVip => "not for a VIP: passed to the kernel untouched",
            Stat::PassNotIp => "not IPv4 or IPv6: passed to the kernel untouched",
            Stat::Forwarded => "sent to its backend",
            Stat::IcmpTooBigSent => "too big once encapsulated: answered with ICMP too-big",
            Stat::PassUnhashable => "a fragment or extension-header packet to a VIP address: passed by its policy",
            Stat::DropUnhashable => "a fragment or extension-header packet to a VIP address: dropped by its policy",
            Stat::DropNoBackend => "dropped: the VIP has no backend taking this flow",
            Stat::DropTooBig => "dropped: too big once encapsulated and may not be fragmented",
            Stat::DropNoTunnelSource => "dropped: no tunnel source address of the backend's family is configured",
            Stat::DropAdjustFailed => "dropped: the kernel refused to resize the frame",
            Stat::TruncatedEth
            | Stat::TruncatedVlan
            | Stat::TruncatedIpv4
            | Stat::TruncatedIpv6
            | Stat::TruncatedTcp
            | Stat::TruncatedUdp
            | Stat::TruncatedIcmp => "malformed (a header cut short): passed to the kernel untouched",
            Stat::BadIpv4Header | Stat::BadIpv4Length | Stat::BadIpv6Header | Stat::BadIpv6Length => {
                "malformed IP header: passed to the kernel untouched"
            }
            Stat::FlowMiss => "the connection table had no entry for the flow",
            Stat::FlowStale => "the connection table named a backend the VIP no longer has: hashed again",
            Stat::IcmpErrorToBackend => "an ICMP error about a flow, sent to the flow's backend",
            Stat::NatForwarded => "translated and sent to its backend",
            Stat::NatReplied => "a backend's reply, translated and sent to the client",
            Stat::NatIcmpTranslated => "an ICMP error about a NAT flow, translated and sent on",
            Stat::DropPoolExhausted => {
                "dropped: every source address and port of the pool is in use toward this backend"
            }
            Stat::DropNatTableFull => "dropped: the NAT table is full (node.nat_table_size)",
            Stat::DropNatNoFlow => "dropped: a TCP packet other than a SYN, of no known NAT flow",
            Stat::DropTtlExceeded => "dropped: its TTL or hop limit would reach 0",
            Stat::DropNatUnavailable => "dropped: the NAT program is not loaded",
            Stat::NatPortReclaimed => "took over the source of an expired NAT flow",
            Stat::NatRedirected => "leaves by another interface than it came in on",
            Stat::DropNoEgress => "dropped: it must leave by an interface xlb does not run on",
            Stat::FlowSetFull => {
                "its connection-table set is full of live flows: sent by the Maglev table, not recorded"
            }
            Stat::NatSourceReused => "reused a source an earlier flow of this backend released",
            Stat::DropSourceDenied => "dropped: its source is on a deny list (sources.deny)",
            Stat::DropSourceNotAllowed => "dropped: only allowed sources may reach the VIP (sources.allow_only)",
            Stat::DropSourceLimited => {
                "dropped: its source prefix opens new flows faster than sources.new_flows allows"
            }
            Stat::SourceUntracked => {
                "admitted uncounted: both bucket slots of its source prefix are held by limited prefixes"
            }
            Stat::SynCookieSent => "answered with a SYN cookie (syn_cookies): no pool port claimed yet",
            Stat::SynCookieOpened => "carried a valid SYN cookie: a pool port claimed and the SYN sent to the backend",
            Stat::DropSynCookieInvalid => "dropped: an ACK of no flow without a valid SYN cookie",
            Stat::SynCookieHandshake => "the backend's SYN-ACK of a cookie flow, answered with its ACK",
            Stat::SynCookieSynResent => "came before the backend answered a cookie flow's SYN: sent as that SYN again",
            Stat::DropSynCookieNoState => "dropped: a cookie flow whose sequence state is gone",
            Stat::DropConnLimited => "dropped: a new flow over the VIP's connection_limit",
            Stat::ConnLimitReset => "a SYN over the VIP's connection_limit, answered with a RST",
            Stat::Count => "",
        }
    }

    /// Whether this counter records a malformed packet (passed untouched to the kernel, which
    /// is the authority on what is not provably ours).
    pub const fn is_malformed(self) -> bool {
        matches!(
            self,
            Stat::TruncatedEth
                | Stat::TruncatedVlan
                | Stat::TruncatedIpv4
                | Stat::BadIpv4Header
                | Stat::BadIpv4Length
                | Stat::TruncatedIpv6
                | Stat::BadIpv6Header
                | Stat::BadIpv6Length
                | Stat::TruncatedTcp
                | Stat::TruncatedUdp
                | Stat::TruncatedIcmp
        )
    }

    /// Whether this counter is an outcome (each packet lands in exactly one).
    pub const fn is_outcome(self) -> bool {
        !matches!(
            self,
            Stat::FlowMiss
                | Stat::FlowStale
                | Stat::IcmpErrorToBackend
                | Stat::NatPortReclaimed
                | Stat::NatRedirected
                | Stat::FlowSetFull
                | Stat::NatSourceReused
                | Stat::SourceUntracked
                | Stat::Count
        )
    }

    /// Whether this outcome is a drop (XDP_DROP).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Stat::DropUnhashable
                | Stat::DropNoBackend
                | Stat::DropTooBig
                | Stat::DropNoTunnelSource
                | Stat::DropAdjustFailed
                | Stat::DropPoolExhausted
                | Stat::DropNatTableFull
                | Stat::DropNatNoFlow
                | Stat::DropTtlExceeded
                | Stat::DropNatUnavailable
                | Stat::DropNoEgress
                | Stat::DropSourceDenied
                | Stat::DropSourceNotAllowed
                | Stat::DropSourceLimited
                | Stat::DropSynCookieInvalid
                | Stat::DropSynCookieNoState
                | Stat::DropConnLimited
        )
    }
}

/// Counters of the backend-side decapsulation program (`DECAP_STATS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapStat {
    /// Not a tunnel packet for this host: passed untouched.
    Pass = 0,
    /// Outer header stripped; the inner packet goes up the stack.
    Decapsulated,
    /// A tunnel packet for this host whose inner header is cut short: dropped.
    DropMalformed,
    Count,
}

pub const DECAP_STAT_COUNT: u32 = DecapStat::Count as u32;
