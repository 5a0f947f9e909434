//! What ringsq keeps on disk. For now the metadata file (`nsqd.dat`); the
//! disk queue behind `shard::queue::QueueBackend` comes with the disk issue.

pub mod metadata;
