//! What a run cost: CPU seconds (utime + stime from `/proc/<pid>/stat`) of
//! the server under test (the node, or the peer's broker process), of the
//! generator itself, over the measured interval; CPU µs per message or
//! delivery; the server's RSS at the end.
//!
//! Throughput alone hides cost: on a 2-core machine the generator, the node
//! and the peer share the cores, so a figure of msgs/s says as much about the
//! generator as about the server. CPU per message is what an operator pays.

use std::path::Path;
use std::time::Instant;

use crate::stats::RunResult;
use crate::target::rss_of;

/// Clock ticks per second of `/proc/<pid>/stat`'s times. Linux reports them
/// in USER_HZ, which is 100 on every architecture it runs on (the kernel's
/// own HZ is hidden behind it), so no `sysconf` call is needed.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system, all threads) a process has used so far;
/// with `children`, plus those of its children it has waited for.
pub fn cpu_seconds(pid: u32, children: bool) -> Option<f64> {
    parse_stat(
        &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
        children,
    )
}

/// CPU seconds of this process (the generator), with its waited-for
/// children (the `connections` scenario's worker processes).
pub fn self_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id(), true)
}

/// utime + stime (+ cutime + cstime) of a `/proc/<pid>/stat` line, in seconds.
fn parse_stat(stat: &str, children: bool) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: the fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let tick = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    let mut ticks = tick(14)? + tick(15)?;
    if children {
        ticks += tick(16)? + tick(17)?;
    }
    Some(ticks as f64 / USER_HZ)
}

/// The pid of the process that listens on TCP `port` (IPv4 or IPv6): the
/// socket inode from `/proc/net/tcp{,6}`, then the process holding a file
/// descriptor on it. Finds a broker started elsewhere (RabbitMQ's
/// `beam.smp`, a system Mosquitto) without asking for its pid; `None` when
/// nothing listens there or its owner is not visible to this user.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && wanted.iter().any(|w| Path::new(w) == link)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Inodes of the sockets in LISTEN state (`0A`) on `port` in one
/// `/proc/net/tcp`-format table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let local_port = f.get(1)?.rsplit(':').next()?;
            (u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// CPU of the server processes and of the generator, from a start instant.
pub struct CpuMeter {
    pids: Vec<u32>,
    server0: Option<f64>,
    generator0: Option<f64>,
    t0: Instant,
}

impl CpuMeter {
    /// Starts measuring `pids` (a node, the nodes of a cluster, or a
    /// broker; empty when unknown: only the generator is measured).
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            pids: pids.to_vec(),
            server0: sum_cpu(pids),
            generator0: self_cpu_seconds(),
            t0: Instant::now(),
        }
    }

    /// Ends the interval and writes its figures into `r`: `interval_s`,
    /// `server_cpu_s`, `generator_cpu_s`, the server's cores busy on
    /// average, CPU µs per `unit` (`msg`, `delivery`, `conn`) for `count`
    /// of them, and `server_rss_end_bytes`.
    pub fn finish(self, r: &mut RunResult, count: u64, unit: &str) {
        let wall = self.t0.elapsed().as_secs_f64();
        r.metric("interval_s", round3(wall));
        let per = |cpu: f64| (count > 0).then(|| round3(cpu * 1e6 / count as f64));
        if let (Some(a), Some(b)) = (self.server0, sum_cpu(&self.pids)) {
            let cpu = (b - a).max(0.0);
            r.metric("server_cpu_s", round3(cpu));
            r.metric("server_cores", round3(cpu / wall.max(1e-9)));
            if let Some(v) = per(cpu) {
                r.metric(&format!("server_cpu_us_per_{unit}"), v);
            }
        }
        if let (Some(a), Some(b)) = (self.generator0, self_cpu_seconds()) {
            let cpu = (b - a).max(0.0);
            r.metric("generator_cpu_s", round3(cpu));
            if let Some(v) = per(cpu) {
                r.metric(&format!("generator_cpu_us_per_{unit}"), v);
            }
        }
        let rss: Option<u64> = (!self.pids.is_empty())
            .then(|| self.pids.iter().map(|p| rss_of(*p)).sum::<Option<u64>>())
            .flatten();
        if let Some(rss) = rss {
            r.metric("server_rss_end_bytes", rss as f64);
        }
    }
}

/// Total CPU seconds of several processes; `None` if any cannot be read.
fn sum_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_seconds(*p, false)).sum()
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The server's CPU µs per unit of a result: `(unit, µs)`.
pub fn server_cost(r: &RunResult) -> Option<(&str, f64)> {
    cost(r, "server_cpu_us_per_")
}

/// The generator's CPU µs per unit of a result: `(unit, µs)`.
pub fn generator_cost(r: &RunResult) -> Option<(&str, f64)> {
    cost(r, "generator_cpu_us_per_")
}

fn cost<'a>(r: &'a RunResult, prefix: &str) -> Option<(&'a str, f64)> {
    r.metrics
        .iter()
        .find_map(|(k, v)| k.strip_prefix(prefix).map(|unit| (unit, *v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_and_parentheses_in_the_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime ...
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 4 0";
        assert_eq!(parse_stat(line, false), Some(3.0));
        assert_eq!(parse_stat(line, true), Some(3.1));
        assert_eq!(parse_stat("garbage", false), None);
    }

    #[test]
    fn this_process_uses_cpu() {
        let a = self_cpu_seconds().expect("own /proc/<pid>/stat");
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let b = self_cpu_seconds().expect("own /proc/<pid>/stat");
        assert!(b > a, "{a} → {b}");
    }

    #[test]
    fn listening_socket_table() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                 0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 31337 1 0 100 0 0 10 0\n\
                 1: 0100007F:1628 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   107        0 31338 1 0 100 0 0 10 0\n\
                 2: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 999 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(t, 5672), vec![31337]);
        assert_eq!(listening_inodes(t, 80), vec![999]);
        assert!(listening_inodes(t, 1883).is_empty());
    }

    #[tokio::test]
    async fn finds_the_owner_of_a_listening_port() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
        drop(l);
        assert_eq!(pid_listening_on(port), None);
    }
}
