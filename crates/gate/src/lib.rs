//! switchboard-gate
