//! switchboard-sdk
