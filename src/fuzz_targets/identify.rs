//! IDENTIFY's JSON body (T13-T17) through `apply_identify`, with the
//! server's compression options on or off: no panic, and what it accepts
//! stays inside nsqd's ranges.

use std::ffi::OsString;
use std::sync::OnceLock;
use std::time::Duration;

use super::Choices;
use crate::config::Options;
use crate::protocol::identify::{apply_identify, ClientSettings, StreamCompression};

/// nsqd's defaults, parsed once.
pub(crate) fn default_options() -> &'static Options {
    static OPTS: OnceLock<Options> = OnceLock::new();
    OPTS.get_or_init(
        || match Options::parse_from_args([OsString::from("ringsqd")]) {
            Ok(o) => o,
            Err(e) => panic!("default options do not parse: {e}"),
        },
    )
}

pub fn identify(data: &[u8]) {
    let mut c = Choices::new(data);
    let flags = c.byte();
    let mut opts = default_options().clone();
    opts.deflate = flags & 1 == 0;
    opts.snappy = flags & 2 == 0;
    opts.max_deflate_level = c.pick(&[6, 1, 9]);
    let body = c.rest();
    let mut settings = ClientSettings::defaults(&opts, "127.0.0.1");
    let Ok(outcome) = apply_identify(body, &opts, &mut settings) else {
        return;
    };
    if let Some(hb) = settings.heartbeat_interval {
        assert!(hb >= Duration::from_secs(1) && hb <= opts.max_heartbeat_interval);
    }
    assert!(settings.output_buffer_timeout <= opts.max_output_buffer_timeout);
    assert!(settings.output_buffer_size as i64 <= opts.max_output_buffer_size);
    assert!(settings.sample_rate <= 99);
    assert!(settings.msg_timeout <= opts.max_msg_timeout.max(opts.msg_timeout));
    match outcome.compression {
        Some(StreamCompression::Deflate { level }) => {
            assert!(opts.deflate && (1..=9).contains(&level))
        }
        Some(StreamCompression::Snappy) => assert!(opts.snappy),
        None => {}
    }
    if outcome.response != b"OK" {
        let v: serde_json::Value = match serde_json::from_slice(&outcome.response) {
            Ok(v) => v,
            Err(e) => panic!("IDENTIFY answered with bad JSON: {e}"),
        };
        assert!(v.get("max_rdy_count").is_some());
    }
}
