//! switchboard-api
