//! switchboard-backends
