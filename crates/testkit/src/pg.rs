//! A PRIVATE PostgreSQL server for tests that stop and restart their
//! database (backend-down tests), and the URL of the shared one.
//!
//! [`PrivatePostgres::start`] runs `initdb` and `pg_ctl` from the local
//! PostgreSQL installation (`/usr/lib/postgresql/<newest>/bin`, or `pg_ctl`
//! on `PATH`) on a free port of 127.0.0.1, with its data and socket in a
//! temporary directory. PostgreSQL refuses to run as root, so when the test
//! runs as root the server runs as the `postgres` system user. Trust
//! authentication; user `postgres`, database `postgres`. [`stop`] is
//! `pg_ctl stop -m immediate` (like a crash: committed data survives),
//! [`start_again`] brings it back on the same port and data. Dropping the
//! value stops the server and deletes its files.
//!
//! [`stop`]: PrivatePostgres::stop
//! [`start_again`]: PrivatePostgres::start_again

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shared test server's URL: `SWITCHBOARD_TEST_POSTGRES`, or the local
/// server every developer machine and CI runs.
pub fn shared_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A PostgreSQL server owned by one test.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// `(uid, gid)` to run as, when the test runs as root.
    run_as: Option<(u32, u32)>,
    running: bool,
    // Last: removed after the server stopped.
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates a cluster in a temporary directory and starts it. Panics with
    /// the reason (and the server log) when it cannot: a test that needs it
    /// can't run without it.
    pub fn start() -> PrivatePostgres {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, pg_ctl) not found in \
                 /usr/lib/postgresql/*/bin or on PATH"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("switchboard-pg-")
            .tempdir()
            .expect("temporary directory for a private PostgreSQL");
        let run_as = running_as_root().then(postgres_user).map(|u| {
            u.unwrap_or_else(|| {
                panic!("running as root and there is no `postgres` user to run PostgreSQL as")
            })
        });
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the private PostgreSQL directory");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        let mut pg = PrivatePostgres {
            bin,
            data,
            log,
            port: 0,
            run_as,
            running: false,
            dir,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output();
        check("initdb", out, None);
        // A port bound and released just now is free unless someone takes it
        // in between: try a few.
        for attempt in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                return pg;
            }
            eprintln!(
                "private PostgreSQL did not start on port {} (attempt {attempt})",
                pg.port
            );
        }
        panic!(
            "private PostgreSQL did not start; its log:\n{}",
            std::fs::read_to_string(&pg.log).unwrap_or_default()
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the data, the socket and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server at once (`-m immediate`: no checkpoint, clients cut
    /// off, committed transactions recovered at the next start).
    pub fn stop(&mut self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        check("pg_ctl stop", out, Some(&self.log));
        self.running = false;
    }

    /// Starts the stopped server again, same port and data.
    pub fn start_again(&mut self) {
        assert!(
            self.try_start(),
            "private PostgreSQL did not restart on port {}; its log:\n{}",
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn try_start(&mut self) -> bool {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on -c synchronous_commit=on",
            self.port,
            self.dir.path().display()
        );
        let ok = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .output()
            .is_ok_and(|o| o.status.success());
        self.running = ok;
        ok
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        // The server must not inherit the test's cwd (it may be unreadable
        // for the postgres user).
        cmd.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
            cmd.env("HOME", self.dir.path());
        }
        cmd
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

fn check(what: &str, out: std::io::Result<Output>, log: Option<&Path>) {
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{what} failed ({}):\n{}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            log.and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default()
        ),
        Err(e) => panic!("{what} could not run: {e}"),
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`, else the directory of
/// `pg_ctl` on `PATH`.
fn find_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("pg_ctl").is_file() && p.join("initdb").is_file())
    })
}

fn running_as_root() -> bool {
    // The owner of /proc/self is this process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `(uid, gid)` of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == "postgres").then_some(())?;
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
