//! nsqd's response envelope (H2): `X-NSQ-Content-Type` on every V1 answer,
//! raw bodies for strings, JSON for structs, `{"message": CODE}` for errors.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;

pub type Reply = Response<Full<Bytes>>;

const NSQ_CONTENT_TYPE: &str = "nsq; version=1.0";
const JSON: &str = "application/json; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

fn build(status: StatusCode, content_type: Option<&str>, v1: bool, body: Bytes) -> Reply {
    let mut b = Response::builder().status(status);
    if let Some(ct) = content_type {
        b = b.header("Content-Type", ct);
    }
    if v1 {
        b = b.header("X-NSQ-Content-Type", NSQ_CONTENT_TYPE);
    }
    b.body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// 200 with a raw string body (nsqd's `return "OK", nil`).
pub fn ok_text(body: impl Into<Bytes>) -> Reply {
    build(StatusCode::OK, Some(TEXT), true, body.into())
}

/// 200 with an empty body (nsqd's `return nil, nil`).
pub fn ok_empty() -> Reply {
    build(StatusCode::OK, Some(TEXT), true, Bytes::new())
}

/// 200 with a JSON body.
pub fn ok_json<T: Serialize>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => build(StatusCode::OK, Some(JSON), true, body.into()),
        Err(_) => super::error::HttpError::Internal.reply(),
    }
}

/// An error: `{"message":"<CODE>"}` with the status (see `HttpError`).
pub(super) fn error(status: u16, code: &str) -> Reply {
    let body = serde_json::json!({ "message": code }).to_string();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    build(status, Some(JSON), true, body.into())
}

/// A JSON body written out by hand (nsqd's TLS_REQUIRED answer, H3).
pub fn json_text(status: u16, body: String) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    build(status, Some(JSON), true, body.into())
}

/// Plain-text routes (`/ping`, debug): no V1 header.
pub fn plain(status: u16, body: impl Into<Bytes>) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    build(status, Some(TEXT), false, body.into())
}
