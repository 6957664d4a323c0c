//! `<data_dir>/node.json`: what a running `serve` tells the other commands
//! (`token`, `api-key`, `chat`) about itself, and how those commands find
//! the node's data dir. They only read: a command that created a secret of
//! its own would sign tokens the node refuses (`TOKEN_INVALID`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The file's name in the data dir.
pub const NODE_FILE: &str = "node.json";
/// Where `serve` keeps its data with no configuration, and where the other
/// commands look with no `--data-dir` / `SWITCHBOARD_DATA_DIR`.
pub const DEFAULT_DATA_DIR: &str = "./switchboard-data";

/// A running node, as `serve` wrote it at start (removed at a clean stop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    pub pid: u32,
    /// The TCP listener's address (binary frames).
    pub tcp: SocketAddr,
    /// The HTTP listener's address (API, `/ws`).
    pub http: SocketAddr,
    /// Whether both listeners speak TLS (`tls://`, `wss://`).
    pub tls: bool,
}

impl NodeFile {
    /// Writes the file (replacing a stale one of an earlier run).
    pub fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(NODE_FILE);
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads the file, `None` when there is none (no node started there).
    pub fn read(data_dir: &Path) -> anyhow::Result<Option<NodeFile>> {
        let path = data_dir.join(NODE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a node file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Removes the file at a clean stop; a missing file is fine.
    pub fn remove(data_dir: &Path) {
        let _ = std::fs::remove_file(data_dir.join(NODE_FILE));
    }

    /// The URL a client on this machine reaches the TCP listener at: an
    /// unspecified bind address (`0.0.0.0`, `::`) is reached on loopback.
    pub fn tcp_url(&self) -> String {
        let mut addr = self.tcp;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("{}://{addr}", if self.tls { "tls" } else { "tcp" })
    }
}

/// The data dir of the node a command talks to: `given` (from `--data-dir`
/// or `SWITCHBOARD_DATA_DIR`) or `./switchboard-data`. It must be one a
/// `serve` has run in (it holds `node.json` or the demo secret); otherwise
/// the error says how to point the command at the right one.
pub fn find_data_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = given.map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), Path::to_path_buf);
    let has_node = dir.join(NODE_FILE).is_file();
    let has_secret = dir.join(crate::server::DEMO_SECRET_FILE).is_file();
    if has_node || has_secret {
        return Ok(dir);
    }
    let how = "pass the data dir `switchboard serve` prints (--data-dir DIR, or set \
               SWITCHBOARD_DATA_DIR), or run this command in the directory where the node runs";
    if given.is_some() {
        bail!(
            "{} is not the data dir of a Switchboard node (no {NODE_FILE} or demo secret in it); {how}",
            dir.display()
        )
    }
    bail!(
        "no Switchboard node's data dir here (looked in {}); {how}",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reaches_unspecified_addresses_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeFile::read(dir.path()).unwrap(), None);
        let node = NodeFile {
            pid: 7,
            tcp: "0.0.0.0:9090".parse().unwrap(),
            http: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
        };
        node.write(dir.path()).unwrap();
        assert_eq!(NodeFile::read(dir.path()).unwrap(), Some(node.clone()));
        assert_eq!(node.tcp_url(), "tcp://127.0.0.1:9090");
        NodeFile::remove(dir.path());
        assert_eq!(NodeFile::read(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_dir_without_a_node_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = find_data_dir(Some(dir.path())).unwrap_err().to_string();
        assert!(
            e.contains("--data-dir") && e.contains("SWITCHBOARD_DATA_DIR"),
            "{e}"
        );
        crate::server::ensure_demo_secret(dir.path()).unwrap();
        assert_eq!(find_data_dir(Some(dir.path())).unwrap(), dir.path());
    }
}
