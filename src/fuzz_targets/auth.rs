//! The auth server's reply (A2): any bytes decode to a grant or an error,
//! never a panic; a grant has a positive TTL, answers permission checks
//! for any names, and its AUTH response body is valid JSON that repeats
//! the identity.

use crate::protocol::auth;

pub fn auth(data: &[u8]) {
    let Ok(state) = auth::parse(data) else {
        return;
    };
    assert!(!state.ttl.is_zero(), "a grant with no TTL");
    for (topic, channel) in [("t", ""), ("t", "c"), ("", ""), ("a.b#ephemeral", "x_y")] {
        let allowed = state.is_allowed(topic, channel);
        assert!(
            !allowed || state.has_authorizations(),
            "allowed with no grant"
        );
    }
    let body = state.ok_response();
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => panic!(
            "AUTH response is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        ),
    };
    assert_eq!(
        value.get("identity").and_then(|v| v.as_str()),
        Some(state.identity.as_str()),
        "identity not repeated"
    );
}
