//! What the shard tells nsqlookupd and asks it (L5, L7). The lookup layer
//! implements it; a shard without nsqlookupd (unit tests) has none.

pub trait Announce {
    /// L5: a topic (`channel` None) or channel now exists.
    fn register(&self, topic: &str, channel: Option<&str>);

    /// L5: a topic (`channel` None) or channel was deleted.
    fn unregister(&self, topic: &str, channel: Option<&str>);

    /// L7: a topic was created at run time. True if it must hold its
    /// messages until the channels nsqlookupd knows of are created (the
    /// answer comes back through `Shard::channels_discovered`).
    fn request_channels(&self, topic: &str) -> bool;
}
