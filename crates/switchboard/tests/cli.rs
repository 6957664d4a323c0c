//! The `switchboard` binary as a user runs it: `serve` in one directory,
//! `token`, `api-key` and `chat` pointed at it (or not), `config`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// The binary, with no `SWITCHBOARD_*` variable of the caller's leaking in.
fn switchboard(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") {
            c.env_remove(k);
        }
    }
    c.current_dir(cwd);
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `serve` child on ephemeral ports; killed on drop.
struct Node {
    child: Child,
    data_dir: PathBuf,
    stderr: PathBuf,
    tcp: String,
    http: String,
}

impl Node {
    fn start(data_dir: &Path) -> Node {
        let log = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let stderr = log.keep().unwrap();
        let _ = std::fs::remove_file(data_dir.join("node.json"));
        let child = switchboard(data_dir.parent().unwrap())
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--tcp",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let node: serde_json::Value = loop {
            if let Ok(b) = std::fs::read(data_dir.join("node.json"))
                && let Ok(v) = serde_json::from_slice(&b)
            {
                break v;
            }
            assert!(Instant::now() < deadline, "serve did not write node.json");
            std::thread::sleep(Duration::from_millis(50));
        };
        Node {
            child,
            data_dir: data_dir.to_path_buf(),
            stderr,
            tcp: node["tcp"].as_str().unwrap().to_string(),
            http: node["http"].as_str().unwrap().to_string(),
        }
    }

    fn api_key(&self) -> String {
        let out = run({
            let mut c = switchboard(&self.data_dir);
            c.arg("api-key").arg("--data-dir").arg(&self.data_dir);
            c
        });
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    /// POSTs JSON to the HTTP API; the whole response.
    fn post(&self, path: &str, key: &str, body: &str) -> String {
        let mut s = std::net::TcpStream::connect(&self.http).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// A `chat` child whose stdout lines arrive on a channel; killed on drop.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Chat {
    fn start(node: &Node, args: &[&str]) -> Chat {
        let mut child = switchboard(&node.data_dir)
            .arg("chat")
            .args(args)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Chat {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Types a line.
    fn say(&mut self, line: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// Waits for a stdout line containing `needle`.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Waits for the process to end: its status and stderr.
    fn exit(&mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            assert!(
                Instant::now() < deadline,
                "chat did not exit; saw {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn commands_without_the_nodes_data_dir_fail_saying_what_to_do_and_create_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let elsewhere = cwd.path().join("not-a-node");
    let commands: [&[&str]; 4] = [
        &["token", "--uid", "alice"],
        &["api-key"],
        &["api-key", "--admin"],
        &["chat", "--uid", "alice", "--json"],
    ];
    for args in commands {
        let out = run({
            let mut c = switchboard(cwd.path());
            c.args(args);
            c
        });
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}",
            text(&out.stdout)
        );
        assert!(
            err.contains("--data-dir") && err.contains("SWITCHBOARD_DATA_DIR"),
            "{args:?}: {err}"
        );
        // The same through the flag and the variable, naming the directory.
        let out = run({
            let mut c = switchboard(cwd.path());
            c.args(args).arg("--data-dir").arg(&elsewhere);
            c
        });
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("not-a-node"),
            "{}",
            text(&out.stderr)
        );
        let out = run({
            let mut c = switchboard(cwd.path());
            c.args(args).env("SWITCHBOARD_DATA_DIR", &elsewhere);
            c
        });
        assert!(!out.status.success());
    }
    // Nothing was created: no secret anyone could sign with.
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn commands_find_the_running_node_by_its_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("switchboard-data");
    let node = Node::start(&data_dir);
    let secret = std::fs::read(data_dir.join("demo.secret")).unwrap();

    // ./switchboard-data, --data-dir and SWITCHBOARD_DATA_DIR all find it.
    let mut tokens = Vec::new();
    for how in 0..3 {
        let mut c = switchboard(root.path());
        c.args(["token", "--uid", "alice"]);
        match how {
            0 => {}
            1 => {
                c.current_dir(std::env::temp_dir())
                    .arg("--data-dir")
                    .arg(&data_dir);
            }
            _ => {
                c.current_dir(std::env::temp_dir())
                    .env("SWITCHBOARD_DATA_DIR", &data_dir);
            }
        }
        let out = run(c);
        assert!(out.status.success(), "{}", text(&out.stderr));
        tokens.push(text(&out.stdout).trim().to_string());
    }
    assert!(tokens.iter().all(|t| t.len() > 20));
    assert_eq!(std::fs::read(data_dir.join("demo.secret")).unwrap(), secret);

    // chat with no --url reaches the node on its ephemeral port (node.json)
    // and logs in with the token signed from the node's secret.
    let mut chat = Chat::start(&node, &["--uid", "alice", "--json"]);
    let line = chat.expect("\"connected\"");
    assert!(line.contains("demo/alice"), "{line}");
    drop(chat.stdin.take());
    let (status, err) = chat.exit();
    assert!(status.success(), "{err}");
    assert!(!node.tcp.is_empty());

    // A line the server refuses is reported, and the exit code says so.
    let mut chat = Chat::start(&node, &["--uid", "alice", "--json"]);
    chat.expect("\"connected\"");
    writeln!(
        chat.stdin.as_mut().unwrap(),
        r#"{{"to": "elsewhere/bob", "body": "x"}}"#
    )
    .unwrap();
    chat.expect("\"error\"");
    drop(chat.stdin.take());
    let (status, err) = chat.exit();
    assert!(!status.success(), "a refused line exited 0");
    assert!(err.contains("1 line(s) not sent"), "{err}");
}

#[test]
fn json_and_interactive_chat_of_one_user_coexist_and_a_kick_exits_non_zero() {
    let root = tempfile::tempdir().unwrap();
    let node = Node::start(&root.path().join("data"));

    let mut person = Chat::start(&node, &["--uid", "alice", "--to", "bob"]);
    person.expect("* online");
    let mut script = Chat::start(&node, &["--uid", "alice", "--json"]);
    script.expect("\"connected\"");
    // A second script with the same (default) device id replaces the first.
    let mut second = Chat::start(&node, &["--uid", "alice", "--json"]);
    second.expect("\"connected\"");
    script.expect("\"kicked\"");
    let (status, err) = script.exit();
    assert!(!status.success(), "a kicked chat exited 0");
    assert!(err.contains("KICK_REPLACED"), "{err}");
    // The person's chat was never replaced by either script.
    assert!(
        person.child.try_wait().unwrap().is_none(),
        "{:?}",
        person.seen
    );
    writeln!(person.stdin.as_mut().unwrap(), "/quit").unwrap();
    let (status, err) = person.exit();
    assert!(status.success(), "{err}");
    assert!(
        !person.seen.iter().any(|l| l.contains("kicked")),
        "{:?}",
        person.seen
    );
}

#[test]
fn a_stored_push_shows_the_system_sender_and_its_type() {
    let root = tempfile::tempdir().unwrap();
    let node = Node::start(&root.path().join("data"));
    let mut person = Chat::start(&node, &["--uid", "bob"]);
    person.expect("* online");
    let mut script = Chat::start(&node, &["--uid", "bob", "--json"]);
    script.expect("\"connected\"");

    let answer = node.post(
        "/v1/apps/demo/push",
        &node.api_key(),
        r#"{"to": ["bob"], "type": "order.status", "body": "shipped"}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let line = person.expect("shipped");
    assert_eq!(line, "[system demo] order.status: shipped");
    let line = script.expect("shipped");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["system"], true, "{line}");
    assert_eq!(v["type"], "order.status", "{line}");
}

#[test]
fn serve_prints_no_storage_engine_chatter_at_the_default_level() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = root.path().join("data");
    // The second start recovers the store a kill -9 left: the engine's
    // busiest start-up.
    drop(Node::start(&data_dir));
    let node = Node::start(&data_dir);
    let log = std::fs::read_to_string(&node.stderr).unwrap();
    assert!(log.contains("switchboard serving"), "{log}");
    let chatter: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fjall") || l.contains("lsm_tree"))
        .collect();
    assert!(chatter.is_empty(), "{chatter:#?}");
}

#[test]
fn config_example_passes_config_check_and_a_typo_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run({
        let mut c = switchboard(dir.path());
        c.args(["config", "example"]);
        c
    });
    assert!(out.status.success(), "{}", text(&out.stderr));
    let example = text(&out.stdout);
    assert!(example.contains("[gate]\n") && example.contains("max_frame_bytes = 65536"));
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &example).unwrap();
    let out = run({
        let mut c = switchboard(dir.path());
        c.args(["config", "check"]).arg(&good);
        c
    });
    assert!(out.status.success(), "{}", text(&out.stderr));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[listen]\nhttp = \"127.0.0.1:8080\"\n\n[store]\nbakend = \"sqlite\"\n",
    )
    .unwrap();
    let out = run({
        let mut c = switchboard(dir.path());
        c.args(["config", "check"]).arg(&bad);
        c
    });
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("{}:5:", bad.display())), "{err}");
    assert!(err.contains("bakend"), "{err}");
}

#[test]
fn chat_lists_unread_marks_read_shows_typing_and_recalls() {
    let root = tempfile::tempdir().unwrap();
    let node = Node::start(&root.path().join("data"));
    let mut bob = Chat::start(&node, &["--uid", "bob", "--to", "alice", "--json"]);
    bob.expect("\"connected\"");
    let mut alice = Chat::start(&node, &["--uid", "alice", "--to", "bob"]);
    alice.expect("* online");
    alice.say("hello bob");
    alice.say("are you there?");
    bob.expect("are you there?");
    bob.say("/list");
    let line = bob.expect("\"conversations\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["total_unread"], 2, "{line}");
    assert_eq!(v["conversations"][0]["peer"], "demo/alice", "{line}");
    assert_eq!(
        v["conversations"][0]["last_body"], "are you there?",
        "{line}"
    );
    bob.say("/read");
    bob.expect("\"marked_read\"");
    alice.expect("* bob read the conversation with alice");
    bob.say("/list");
    let line = bob.expect("\"conversations\"");
    assert!(line.contains("\"total_unread\":0"), "{line}");
    bob.say("/typing");
    let line = bob.expect("\"typing_sent\"");
    assert!(line.contains("\"devices_reached\":1"), "{line}");
    alice.expect("* bob is typing...");
    // Alice edits, then recalls, her last message: bob sees both.
    alice.say("/edit are you there now?");
    alice.expect("* edited message");
    let line = bob.expect("\"edited\"");
    assert!(line.contains("are you there now?"), "{line}");
    alice.say("/recall");
    alice.expect("* recalled message");
    let line = bob.expect("\"recalled\"");
    assert!(line.contains("\"body\":\"\""), "{line}");
}
