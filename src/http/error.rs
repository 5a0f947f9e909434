//! The HTTP API's errors (H2-H21): each is nsqd's `{"message":"<CODE>"}`
//! with its status, the HTTP counterpart of `protocol::ErrorCode`.

use thiserror::Error;

use super::reply::{self, Reply};
use crate::protocol::mpub::{LineTooLong, MpubError};
use crate::shard::AdminError;

/// One failure of an HTTP route; its `Display` is nsqd's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HttpError {
    /// H2: no such route.
    #[error("NOT_FOUND")]
    NotFound,
    /// H2: the route exists for other methods.
    #[error("METHOD_NOT_ALLOWED")]
    MethodNotAllowed,
    /// H6: a query string Go's `url.ParseQuery` rejects.
    #[error("INVALID_REQUEST")]
    InvalidRequest,
    /// H2, H6: the body could not be read.
    #[error("INTERNAL_ERROR")]
    Internal,
    #[error("MISSING_ARG_TOPIC")]
    MissingArgTopic,
    /// H6, H7, H14, H16: a bad topic name on the topic routes.
    #[error("INVALID_TOPIC")]
    InvalidTopic,
    /// H18, H19: a bad topic name on the channel routes.
    #[error("INVALID_ARG_TOPIC")]
    InvalidArgTopic,
    #[error("MISSING_ARG_CHANNEL")]
    MissingArgChannel,
    #[error("INVALID_ARG_CHANNEL")]
    InvalidArgChannel,
    #[error("TOPIC_NOT_FOUND")]
    TopicNotFound,
    #[error("CHANNEL_NOT_FOUND")]
    ChannelNotFound,
    /// H6, H7: a message (or an `/mpub` line) over `--max-msg-size`.
    #[error("MSG_TOO_BIG")]
    MsgTooBig,
    #[error("MSG_EMPTY")]
    MsgEmpty,
    #[error("INVALID_DEFER")]
    InvalidDefer,
    /// H6, H7: the topic could not take the messages.
    #[error("EXITING")]
    Exiting,
    /// H7: a body over `--max-body-size`.
    #[error("BODY_TOO_BIG")]
    BodyTooBig,
    /// H7: binary `/mpub`'s count is missing or out of range.
    #[error("BAD_BODY")]
    BadBody,
    /// H7: a binary `/mpub` message is missing, empty or too big.
    #[error("BAD_MESSAGE")]
    BadMessage,
    /// H21: a value that does not parse.
    #[error("INVALID_VALUE")]
    InvalidValue,
    /// H21: an empty or oversized value (nsqd answers 413 here).
    #[error("INVALID_VALUE")]
    ValueSize,
    /// H20, H21: no such option, or one that cannot be set.
    #[error("INVALID_OPTION")]
    InvalidOption,
}

impl HttpError {
    pub const fn status(self) -> u16 {
        match self {
            HttpError::NotFound | HttpError::TopicNotFound | HttpError::ChannelNotFound => 404,
            HttpError::MethodNotAllowed => 405,
            HttpError::Internal => 500,
            HttpError::Exiting => 503,
            HttpError::MsgTooBig
            | HttpError::BodyTooBig
            | HttpError::BadBody
            | HttpError::BadMessage
            | HttpError::ValueSize => 413,
            HttpError::InvalidRequest
            | HttpError::MissingArgTopic
            | HttpError::InvalidTopic
            | HttpError::InvalidArgTopic
            | HttpError::MissingArgChannel
            | HttpError::InvalidArgChannel
            | HttpError::MsgEmpty
            | HttpError::InvalidDefer
            | HttpError::InvalidValue
            | HttpError::InvalidOption => 400,
        }
    }

    pub fn reply(self) -> Reply {
        reply::error(self.status(), &self.to_string())
    }
}

impl From<AdminError> for HttpError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::TopicNotFound => HttpError::TopicNotFound,
            AdminError::ChannelNotFound => HttpError::ChannelNotFound,
        }
    }
}

/// H6, H7: nsqd answers every failed publish with 503 EXITING; the
/// cause is only logged.
pub fn publish_failed(cause: &dyn std::fmt::Display) -> HttpError {
    tracing::debug!(%cause, "http publish failed");
    HttpError::Exiting
}

/// H7: binary `/mpub` uses TCP's codes without `E_`, all with 413.
impl From<MpubError> for HttpError {
    fn from(e: MpubError) -> Self {
        match e {
            MpubError::CountMissing | MpubError::BadCount(_) => HttpError::BadBody,
            MpubError::SizeMissing(_)
            | MpubError::BadSize { .. }
            | MpubError::TooBig { .. }
            | MpubError::BodyMissing(_) => HttpError::BadMessage,
        }
    }
}

impl From<LineTooLong> for HttpError {
    fn from(_: LineTooLong) -> Self {
        HttpError::MsgTooBig
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_nsqds() {
        let cases = [
            (HttpError::NotFound, 404, "NOT_FOUND"),
            (HttpError::MethodNotAllowed, 405, "METHOD_NOT_ALLOWED"),
            (HttpError::InvalidArgChannel, 400, "INVALID_ARG_CHANNEL"),
            (HttpError::Exiting, 503, "EXITING"),
            (HttpError::BadMessage, 413, "BAD_MESSAGE"),
            (HttpError::ValueSize, 413, "INVALID_VALUE"),
            (HttpError::InvalidValue, 400, "INVALID_VALUE"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status(), e.to_string().as_str()), (status, code));
        }
    }
}
