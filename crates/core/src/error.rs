//! Errors of the logic, each with a stable protocol code.

use switchboard_proto::code;

use crate::bus::BusError;
use crate::group::GroupRefusal;
use crate::hooks::ScreenError;
use crate::presence::PresenceError;
use crate::route::RouteError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum LogicError {
    #[error("invalid token: {0}")]
    TokenInvalid(String),
    #[error("token expired")]
    TokenExpired,
    #[error("unknown app {0}")]
    UnknownApp(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("users of app {from} may not message users of app {to}")]
    CrossAppForbidden { from: String, to: String },
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("internal error: {0}")]
    Internal(String),
    /// The before-send hook or the word filter refused the message.
    #[error("rejected: {0}")]
    Rejected(String),
    #[error(transparent)]
    Screen(#[from] ScreenError),
    /// No app message with this id that the caller may amend.
    #[error("no message {0} to recall or edit")]
    MessageNotFound(u64),
    #[error("only the sender may recall or edit a message")]
    NotMessageSender,
    /// The recall or edit window has passed (the text says which).
    #[error("{0}")]
    AmendWindowClosed(String),
    #[error("client_msg_id {0:?} already names another request; use a fresh one")]
    ClientMsgIdReused(String),
}

impl From<switchboard_proto::limits::LimitError> for LogicError {
    fn from(e: switchboard_proto::limits::LimitError) -> Self {
        LogicError::InvalidArgument(e.0)
    }
}

impl LogicError {
    /// The stable protocol code for this error.
    pub fn code(&self) -> u32 {
        match self {
            LogicError::TokenInvalid(_) => code::TOKEN_INVALID,
            LogicError::TokenExpired => code::TOKEN_EXPIRED,
            LogicError::UnknownApp(_) => code::UNKNOWN_APP,
            LogicError::InvalidArgument(_) => code::INVALID_ARGUMENT,
            LogicError::CrossAppForbidden { .. } => code::CROSS_APP_FORBIDDEN,
            LogicError::Forbidden(_) => code::FORBIDDEN,
            LogicError::Store(StoreError::Invalid(_)) => code::INVALID_ARGUMENT,
            LogicError::Store(StoreError::Recalled) => code::MESSAGE_RECALLED,
            LogicError::MessageNotFound(_) => code::MESSAGE_NOT_FOUND,
            LogicError::NotMessageSender => code::NOT_MESSAGE_SENDER,
            LogicError::AmendWindowClosed(_) => code::AMEND_WINDOW_CLOSED,
            LogicError::ClientMsgIdReused(_) => code::CLIENT_MSG_ID_REUSED,
            LogicError::Store(StoreError::Group(r)) => match r {
                GroupRefusal::NotFound => code::GROUP_NOT_FOUND,
                GroupRefusal::NotMember => code::NOT_GROUP_MEMBER,
                GroupRefusal::AdminsOnly => code::GROUP_ADMINS_ONLY,
                GroupRefusal::Full => code::GROUP_FULL,
            },
            LogicError::Store(_)
            | LogicError::Presence(_)
            | LogicError::Route(_)
            | LogicError::Bus(_) => code::UNAVAILABLE,
            LogicError::Internal(_) => code::INTERNAL,
            LogicError::Rejected(_) => code::REJECTED,
            LogicError::Screen(_) => code::HOOK_UNAVAILABLE,
        }
    }
}
