//! The protocol's error codes (T10-T12), with nsqd's code strings in one place.

use thiserror::Error;

/// The `E_*` codes nsqd 1.3.0 sends in error frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Invalid,
    BadBody,
    BadTopic,
    BadChannel,
    BadMessage,
    PubFailed,
    MpubFailed,
    DpubFailed,
    FinFailed,
    ReqFailed,
    TouchFailed,
    IdentifyFailed,
    SubFailed,
    AuthFailed,
    AuthFirst,
    AuthDisabled,
    AuthError,
    Unauthorized,
    BadProtocol,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "E_INVALID",
            ErrorCode::BadBody => "E_BAD_BODY",
            ErrorCode::BadTopic => "E_BAD_TOPIC",
            ErrorCode::BadChannel => "E_BAD_CHANNEL",
            ErrorCode::BadMessage => "E_BAD_MESSAGE",
            ErrorCode::PubFailed => "E_PUB_FAILED",
            ErrorCode::MpubFailed => "E_MPUB_FAILED",
            ErrorCode::DpubFailed => "E_DPUB_FAILED",
            ErrorCode::FinFailed => "E_FIN_FAILED",
            ErrorCode::ReqFailed => "E_REQ_FAILED",
            ErrorCode::TouchFailed => "E_TOUCH_FAILED",
            ErrorCode::IdentifyFailed => "E_IDENTIFY_FAILED",
            ErrorCode::SubFailed => "E_SUB_FAILED",
            ErrorCode::AuthFailed => "E_AUTH_FAILED",
            ErrorCode::AuthFirst => "E_AUTH_FIRST",
            ErrorCode::AuthDisabled => "E_AUTH_DISABLED",
            ErrorCode::AuthError => "E_AUTH_ERROR",
            ErrorCode::Unauthorized => "E_UNAUTHORIZED",
            ErrorCode::BadProtocol => "E_BAD_PROTOCOL",
        }
    }

    /// T11: only FIN, REQ and TOUCH failures leave the connection open.
    pub const fn is_fatal(self) -> bool {
        !matches!(
            self,
            ErrorCode::FinFailed | ErrorCode::ReqFailed | ErrorCode::TouchFailed
        )
    }
}

/// An error a client caused: sent as an error frame `"<CODE> <text>"`,
/// then the connection is closed if the code is fatal.
///
/// The text is bytes: nsqd echoes what the client sent (an unknown command
/// name, say) byte for byte, valid UTF-8 or not.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{} {}", code.as_str(), String::from_utf8_lossy(text))]
pub struct ClientError {
    pub code: ErrorCode,
    pub text: Vec<u8>,
}

impl ClientError {
    pub fn new(code: ErrorCode, text: impl Into<Vec<u8>>) -> Self {
        ClientError {
            code,
            text: text.into(),
        }
    }

    pub fn invalid(text: impl Into<Vec<u8>>) -> Self {
        Self::new(ErrorCode::Invalid, text)
    }

    pub fn is_fatal(&self) -> bool {
        self.code.is_fatal()
    }

    /// The error frame's body: `<CODE> <text>`.
    pub fn to_frame_body(&self) -> Vec<u8> {
        let code = self.code.as_str().as_bytes();
        let mut body = Vec::with_capacity(code.len() + 1 + self.text.len());
        body.extend_from_slice(code);
        body.push(b' ');
        body.extend_from_slice(&self.text);
        body
    }
}
