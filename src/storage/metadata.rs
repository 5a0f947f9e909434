//! `nsqd.dat` (D1, D2): the topics and channels that exist and whether they
//! are paused, in nsqd's JSON shape, so that nsqd and ringsq can take over
//! each other's data path. Ephemeral topics and channels are left out.
//!
//! Written atomically: a temp file, fsync, rename, fsync of the directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::NSQD_COMPAT_VERSION;
use crate::protocol::gojson::{self, null_as_default, null_as_empty_list, GoJsonError};
use crate::protocol::names::{is_ephemeral, is_valid_name};

pub const FILE_NAME: &str = "nsqd.dat";

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("failed to read metadata from {path} - {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse metadata in {path} - {source}")]
    Parse { path: PathBuf, source: GoJsonError },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

// Decoded as nsqd's loader does (Go's encoding/json): `null` or missing
// lists and names are empty, keys match in any case, unknown keys (the
// version among them) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ChannelMeta {
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub paused: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TopicMeta {
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub paused: bool,
    #[serde(deserialize_with = "null_as_empty_list")]
    pub channels: Vec<ChannelMeta>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetadataFile {
    #[serde(deserialize_with = "null_as_empty_list")]
    topics: Vec<TopicMeta>,
}

/// Reads `<data_path>/nsqd.dat`; no file means no topics, an empty one is an
/// error (nsqd's "unexpected end of JSON input"). Invalid names are skipped
/// with a warning, as nsqd does.
pub fn load(data_path: &Path) -> Result<Vec<TopicMeta>, MetadataError> {
    let path = data_path.join(FILE_NAME);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(MetadataError::Read { path, source }),
    };
    parse(&text).map_err(|source| MetadataError::Parse { path, source })
}

/// The topics of an `nsqd.dat`'s bytes, invalid names skipped.
pub fn parse(text: &[u8]) -> Result<Vec<TopicMeta>, GoJsonError> {
    let file: MetadataFile = gojson::from_slice(text)?;
    let mut topics = Vec::new();
    for mut t in file.topics {
        if !is_valid_name(t.name.as_bytes()) {
            tracing::warn!(topic = %t.name, "skipping creation of invalid topic");
            continue;
        }
        t.channels.retain(|c| {
            let ok = is_valid_name(c.name.as_bytes());
            if !ok {
                tracing::warn!(channel = %c.name, "skipping creation of invalid channel");
            }
            ok
        });
        topics.push(t);
    }
    Ok(topics)
}

/// Topics and channels with queue files but missing from nsqd.dat (a crash
/// before the metadata caught up) are restored too: their messages were
/// acknowledged. Ephemeral topics are not, as in nsqd.
pub fn add_queues_found_on_disk(topics: &mut Vec<TopicMeta>, dir: &Path) {
    for name in super::nsqd_import::queue_names(dir) {
        let (topic, channel) = match name.split_once(':') {
            Some((t, c)) => (t.to_string(), Some(c.to_string())),
            None => (name.clone(), None),
        };
        // An ephemeral topic's durable channel has files too, but nsqd never
        // restores an ephemeral topic (D12).
        if !is_valid_name(topic.as_bytes())
            || is_ephemeral(&topic)
            || channel
                .as_deref()
                .is_some_and(|c| !is_valid_name(c.as_bytes()))
        {
            continue;
        }
        let idx = match topics.iter().position(|t| t.name == topic) {
            Some(i) => i,
            None => {
                tracing::info!(topic = %topic, "restoring a topic found on disk but not in nsqd.dat");
                topics.push(TopicMeta {
                    name: topic.clone(),
                    ..TopicMeta::default()
                });
                topics.len() - 1
            }
        };
        if let Some(c) = channel {
            if !topics[idx].channels.iter().any(|m| m.name == c) {
                topics[idx].channels.push(ChannelMeta {
                    name: c,
                    paused: false,
                });
            }
        }
    }
}

/// The file's bytes exactly as nsqd 1.3.0 writes them (D1): struct field
/// order, and `null` for an empty list (Go marshals a nil slice so). Topics
/// are sorted by name (nsqd's map order is random).
pub fn render(topics: &[TopicMeta]) -> Vec<u8> {
    let mut sorted: Vec<&TopicMeta> = topics.iter().filter(|t| !is_ephemeral(&t.name)).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let topics: Vec<GoTopic> = sorted
        .into_iter()
        .map(|t| GoTopic {
            name: &t.name,
            paused: t.paused,
            channels: go_list(
                t.channels
                    .iter()
                    .filter(|c| !is_ephemeral(&c.name))
                    .map(|c| GoChannel {
                        name: &c.name,
                        paused: c.paused,
                    })
                    .collect(),
            ),
        })
        .collect();
    let file = GoMetadata {
        topics: go_list(topics),
        version: NSQD_COMPAT_VERSION,
    };
    serde_json::to_vec(&file).expect("structs of strings and bools always serialize")
}

/// Go's marshalling of a slice: `null` when empty.
fn go_list<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

// nsqd's structs, fields in its declaration order.
#[derive(Serialize)]
struct GoMetadata<'a> {
    topics: Option<Vec<GoTopic<'a>>>,
    version: &'a str,
}

#[derive(Serialize)]
struct GoTopic<'a> {
    name: &'a str,
    paused: bool,
    channels: Option<Vec<GoChannel<'a>>>,
}

#[derive(Serialize)]
struct GoChannel<'a> {
    name: &'a str,
    paused: bool,
}

/// Writes the metadata atomically.
pub fn persist(data_path: &Path, topics: &[TopicMeta]) -> Result<(), MetadataError> {
    let path = data_path.join(FILE_NAME);
    let tmp = data_path.join(format!("{FILE_NAME}.{}.tmp", fastrand::u32(..)));
    let write_err = |source| MetadataError::Write {
        path: path.clone(),
        source,
    };
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&render(topics))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(data_path)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        write_err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_skips_ephemeral_and_invalid() {
        let dir = std::env::temp_dir().join(format!("ringsq-meta-{}", fastrand::u64(..)));
        fs::create_dir_all(&dir).unwrap();
        let topics = vec![
            TopicMeta {
                name: "b".into(),
                paused: true,
                channels: vec![
                    ChannelMeta {
                        name: "c1".into(),
                        paused: false,
                    },
                    ChannelMeta {
                        name: "e#ephemeral".into(),
                        paused: false,
                    },
                ],
            },
            TopicMeta {
                name: "a".into(),
                paused: false,
                channels: vec![],
            },
            TopicMeta {
                name: "x#ephemeral".into(),
                paused: false,
                channels: vec![],
            },
        ];
        persist(&dir, &topics).unwrap();
        let text = fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(
            text,
            r#"{"topics":[{"name":"a","paused":false,"channels":null},{"name":"b","paused":true,"channels":[{"name":"c1","paused":false}]}],"version":"1.3.0"}"#
        );
        let loaded = load(&dir).unwrap();
        assert_eq!(
            String::from_utf8(render(&[])).unwrap(),
            r#"{"topics":null,"version":"1.3.0"}"#
        );
        assert_eq!(loaded.len(), 2);
        assert_eq!(
            loaded[1].channels,
            vec![ChannelMeta {
                name: "c1".into(),
                paused: false
            }]
        );
        fs::write(
            dir.join(FILE_NAME),
            r#"{"topics":[{"name":"bad!","channels":[]}]}"#,
        )
        .unwrap();
        assert!(load(&dir).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The shapes nsqd 1.3.0 writes or its loader accepts (D1, D2).
    #[test]
    fn loads_what_nsqd_loads() {
        let dir = std::env::temp_dir().join(format!("ringsq-meta-{}", fastrand::u64(..)));
        fs::create_dir_all(&dir).unwrap();
        let load_text = |text: &str| {
            fs::write(dir.join(FILE_NAME), text).unwrap();
            load(&dir)
        };
        let t = load_text(
            r#"{"topics":[{"name":"a","paused":true,"channels":null},{"name":"b","channels":[{"name":"c","paused":null},{"name":"bad!"}]}],"version":"1.3.0"}"#,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0].paused && t[0].channels.is_empty());
        assert_eq!(t[1].channels.len(), 1);
        assert_eq!(t[1].channels[0].name, "c");
        assert!(load_text(r#"{"topics":null,"version":"1.3.0"}"#)
            .unwrap()
            .is_empty());
        let t = load_text(r#"{"Topics":[{"Name":"x","extra":1}],"future":{}}"#).unwrap();
        assert_eq!(t[0].name, "x");
        let t = load_text(r#"{"topics":[null,{"name":null},{"name":"ok"}]}"#).unwrap();
        assert_eq!(t.len(), 1);
        let e = load_text("").unwrap_err().to_string();
        let path = dir.join(FILE_NAME);
        assert_eq!(
            e,
            format!(
                "failed to parse metadata in {} - unexpected end of JSON input",
                path.display()
            )
        );
        assert!(load_text(r#"{"topics":[{"name":5}]}"#).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
