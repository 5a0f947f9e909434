//! The auth server's part of AUTH (A1, A2): the query string nsqd sends,
//! the reply it accepts, the permission check (T22) and AUTH's answer
//! (T21). No I/O here: `conn` sends the query and keeps the state.

use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use thiserror::Error;

use super::gojson::{self, null_as_default, null_as_empty_list, GoJsonError};
use super::names::go_quote;

/// Why an auth server's reply was refused; only logged (the client sees
/// `E_AUTH_FAILED AUTH failed`). Texts are nsqd's.
#[derive(Debug, Error)]
pub enum AuthReplyError {
    #[error("{0}")]
    Json(#[from] GoJsonError),
    #[error("unknown permission {0}")]
    UnknownPermission(String),
    #[error("unable to compile topic {} {source}", go_quote(.pattern.as_bytes()))]
    BadTopic {
        pattern: String,
        source: Box<regex::Error>,
    },
    #[error("unable to compile channel {} {source}", go_quote(.pattern.as_bytes()))]
    BadChannel {
        pattern: String,
        source: Box<regex::Error>,
    },
    #[error("invalid TTL {0} (must be >0)")]
    BadTtl(i64),
}

/// The reply as nsqd's `auth.State` decodes it (Go's key matching).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Reply {
    #[serde(deserialize_with = "null_as_default")]
    ttl: i64,
    #[serde(deserialize_with = "null_as_empty_list")]
    authorizations: Vec<ReplyAuthorization>,
    #[serde(deserialize_with = "null_as_default")]
    identity: String,
    #[serde(deserialize_with = "null_as_default")]
    identity_url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReplyAuthorization {
    #[serde(deserialize_with = "null_as_default")]
    topic: String,
    #[serde(deserialize_with = "null_as_empty_list")]
    channels: Vec<String>,
    #[serde(deserialize_with = "null_as_empty_list")]
    permissions: Vec<String>,
}

/// One entry of `authorizations`, its regexes compiled once (nsqd compiles
/// them on every check).
#[derive(Debug, Clone)]
pub struct Authorization {
    topic: Regex,
    channels: Vec<Regex>,
    publish: bool,
    subscribe: bool,
}

impl Authorization {
    /// A2: an empty channel asks for `publish` (and a channel regex that
    /// matches ""), any other for `subscribe`; regexes are unanchored.
    fn is_allowed(&self, topic: &str, channel: &str) -> bool {
        let permitted = if channel.is_empty() {
            self.publish
        } else {
            self.subscribe
        };
        permitted && self.topic.is_match(topic) && self.channels.iter().any(|c| c.is_match(channel))
    }
}

/// What the auth server granted a connection.
#[derive(Debug, Clone)]
pub struct AuthState {
    pub ttl: Duration,
    pub identity: String,
    pub identity_url: String,
    pub authorizations: Vec<Authorization>,
}

impl AuthState {
    pub fn is_allowed(&self, topic: &str, channel: &str) -> bool {
        self.authorizations
            .iter()
            .any(|a| a.is_allowed(topic, channel))
    }

    /// nsqd's `HasAuthorizations`: AUTH succeeded with something granted.
    pub fn has_authorizations(&self) -> bool {
        !self.authorizations.is_empty()
    }

    /// AUTH's answer, as Go's json.Marshal writes it:
    /// `{"identity":..,"identity_url":..,"permission_count":N}`.
    pub fn ok_response(&self) -> Vec<u8> {
        let mut out = String::with_capacity(64 + self.identity.len() + self.identity_url.len());
        out.push_str("{\"identity\":");
        go_json_string(&mut out, &self.identity);
        out.push_str(",\"identity_url\":");
        go_json_string(&mut out, &self.identity_url);
        out.push_str(",\"permission_count\":");
        out.push_str(&self.authorizations.len().to_string());
        out.push('}');
        out.into_bytes()
    }
}

/// Decodes and validates an auth server's reply body (A2), in nsqd's
/// order: per authorization its permissions, topic and channel regexes,
/// then the TTL.
pub fn parse(body: &[u8]) -> Result<AuthState, AuthReplyError> {
    let reply: Reply = gojson::from_slice(body)?;
    let mut authorizations = Vec::with_capacity(reply.authorizations.len());
    for a in reply.authorizations {
        authorizations.push(compile(a)?);
    }
    if reply.ttl <= 0 {
        return Err(AuthReplyError::BadTtl(reply.ttl));
    }
    Ok(AuthState {
        ttl: Duration::from_secs(reply.ttl as u64),
        identity: reply.identity,
        identity_url: reply.identity_url,
        authorizations,
    })
}

fn compile(a: ReplyAuthorization) -> Result<Authorization, AuthReplyError> {
    let (mut publish, mut subscribe) = (false, false);
    for p in a.permissions {
        match p.as_str() {
            "publish" => publish = true,
            "subscribe" => subscribe = true,
            _ => return Err(AuthReplyError::UnknownPermission(p)),
        }
    }
    let topic = Regex::new(&a.topic).map_err(|e| AuthReplyError::BadTopic {
        source: Box::new(e),
        pattern: a.topic,
    })?;
    let mut channels = Vec::with_capacity(a.channels.len());
    for c in a.channels {
        match Regex::new(&c) {
            Ok(r) => channels.push(r),
            Err(e) => {
                return Err(AuthReplyError::BadChannel {
                    pattern: c,
                    source: Box::new(e),
                })
            }
        }
    }
    Ok(Authorization {
        topic,
        channels,
        publish,
        subscribe,
    })
}

/// What a query tells the auth server about the connection (A1).
#[derive(Debug, Clone, Copy)]
pub struct AuthQuery<'a> {
    /// Empty for a unix socket client.
    pub remote_ip: &'a str,
    pub tls: bool,
    /// The AUTH body, byte for byte.
    pub secret: &'a [u8],
    /// The client certificate's CN; empty without one.
    pub common_name: &'a str,
}

impl AuthQuery<'_> {
    /// Go's `url.Values.Encode`: keys sorted, values query-escaped.
    pub fn query_string(&self) -> String {
        let mut q = String::with_capacity(64 + self.secret.len() * 3);
        let tls = if self.tls { "true" } else { "false" };
        let pairs: [(&str, &[u8]); 4] = [
            ("common_name", self.common_name.as_bytes()),
            ("remote_ip", self.remote_ip.as_bytes()),
            ("secret", self.secret),
            ("tls", tls.as_bytes()),
        ];
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                q.push('&');
            }
            q.push_str(k);
            q.push('=');
            query_escape(&mut q, v);
        }
        q
    }

    /// The URL nsqd asks for at `address`: a full URL if it contains
    /// `://`, else `http://<address>/auth`, plus the query.
    pub fn url(&self, address: &str) -> String {
        if address.contains("://") {
            format!("{address}?{}", self.query_string())
        } else {
            format!("http://{address}/auth?{}", self.query_string())
        }
    }
}

/// Go's `url.QueryEscape`: unreserved bytes as they are, space as `+`,
/// everything else `%XX`.
fn query_escape(out: &mut String, raw: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in raw {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
}

/// A JSON string as Go's encoding/json writes it (Go 1.22 on, as the
/// reference nsqd is built): HTML characters and U+2028/U+2029 escaped,
/// control characters as `\u00XX` except \b \f \n \r \t.
fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: &str) -> AuthState {
        parse(json.as_bytes()).expect("valid reply")
    }

    fn refused(json: &str) -> String {
        parse(json.as_bytes()).expect_err("refused").to_string()
    }

    #[test]
    fn regexes_are_unanchored_and_publish_needs_an_empty_channel_match() {
        let s = state(
            r#"{"ttl":60,"authorizations":[
                {"topic":"abc","channels":["ch"],"permissions":["subscribe"]},
                {"topic":"^pub$","channels":[".*"],"permissions":["publish"]},
                {"topic":"nochan","channels":["x"],"permissions":["publish"]}]}"#,
        );
        assert!(s.is_allowed("xabcx", "a-ch-b"));
        assert!(!s.is_allowed("xabcx", "other"));
        assert!(!s.is_allowed("abc", ""), "subscribe only");
        assert!(s.is_allowed("pub", ""));
        assert!(!s.is_allowed("pub", "c"), "publish only");
        assert!(!s.is_allowed("pubx", ""));
        assert!(!s.is_allowed("nochan", ""), "no channel regex matches \"\"");
        assert_eq!(s.ttl, Duration::from_secs(60));
    }

    #[test]
    fn keys_fold_and_nulls_are_zero_as_in_go() {
        let s = state(
            r#"{"TTL":5,"Identity":"me","IDENTITY_URL":null,"extra":1,
                "authorizations":[{"Topic":"t","channels":null,"permissions":null}]}"#,
        );
        assert_eq!((s.identity.as_str(), s.identity_url.as_str()), ("me", ""));
        assert!(s.has_authorizations());
        assert!(!s.is_allowed("t", ""));
        assert!(!state(r#"{"ttl":1,"authorizations":null}"#).has_authorizations());
    }

    #[test]
    fn refusals_read_as_nsqds() {
        assert_eq!(refused(r#"{"ttl":0}"#), "invalid TTL 0 (must be >0)");
        assert_eq!(refused(r#"{}"#), "invalid TTL 0 (must be >0)");
        assert_eq!(refused(r#"{"ttl":-3}"#), "invalid TTL -3 (must be >0)");
        assert_eq!(
            refused(r#"{"ttl":1,"authorizations":[{"topic":"t","permissions":["admin"]}]}"#),
            "unknown permission admin"
        );
        assert!(
            refused(r#"{"ttl":1,"authorizations":[{"topic":"(","permissions":[]}]}"#)
                .starts_with("unable to compile topic \"(\" ")
        );
        assert!(refused(
            r#"{"ttl":1,"authorizations":[{"topic":"t","channels":["a","[z"],"permissions":[]}]}"#
        )
        .starts_with("unable to compile channel \"[z\" "));
        // The permission check comes before the TTL check.
        assert_eq!(
            refused(r#"{"ttl":0,"authorizations":[{"permissions":["x"]}]}"#),
            "unknown permission x"
        );
        for bad in [
            "",
            "{",
            "[]",
            r#"{"ttl":"5"}"#,
            r#"{"ttl":1.5}"#,
            "not json",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ok_response_is_gos_json() {
        let s = state(
            r#"{"ttl":1,"identity":"a<b>&\"c\"\n","identity_url":"http://x/?a=1&b=2","authorizations":[{},{}]}"#,
        );
        assert_eq!(
            String::from_utf8(s.ok_response()).expect("utf-8"),
            r#"{"identity":"a\u003cb\u003e\u0026\"c\"\n","identity_url":"http://x/?a=1\u0026b=2","permission_count":2}"#
        );
    }

    #[test]
    fn control_characters_escape_as_the_reference_nsqd() {
        let s = state("{\"ttl\":1,\"identity\":\"a\\bb\\fc\\u0001\\u2028<\"}");
        assert_eq!(
            String::from_utf8(s.ok_response()).expect("utf-8"),
            r#"{"identity":"a\bb\fc\u0001\u2028\u003c","identity_url":"","permission_count":0}"#
        );
    }

    #[test]
    fn query_is_gos_url_values_encode() {
        let q = AuthQuery {
            remote_ip: "127.0.0.1",
            tls: false,
            secret: b"a b+c/~*\xff",
            common_name: "",
        };
        assert_eq!(
            q.query_string(),
            "common_name=&remote_ip=127.0.0.1&secret=a+b%2Bc%2F~%2A%FF&tls=false"
        );
        assert_eq!(
            q.url("127.0.0.1:4181"),
            format!("http://127.0.0.1:4181/auth?{}", q.query_string())
        );
        assert_eq!(
            q.url("http://h:1/x/y"),
            format!("http://h:1/x/y?{}", q.query_string())
        );
        let tls = AuthQuery {
            tls: true,
            common_name: "cn x",
            ..q
        };
        assert!(tls.query_string().starts_with("common_name=cn+x&"));
        assert!(tls.query_string().ends_with("&tls=true"));
    }
}
