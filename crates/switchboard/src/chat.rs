//! `switchboard chat`: a terminal client built on the SDK.
//!
//! Interactive: type a line to send it to the current peer (a user, or a
//! group with `--group ID`), `/to UID` or `/group ID` to change it, `/quit`
//! to leave. Group messages show as `[#GROUP bob] body`. `/list` shows the
//! conversations with their unread counts, `/read` marks the current
//! conversation read (the peer sees `* read by ...`), `/typing` tells the
//! peer you are typing (a transient message: `* bob is typing...`),
//! `/recall` takes back the last message sent from this chat and `/edit
//! TEXT` changes its body (every party sees `* alice recalled message N`
//! or `* alice edited message N: TEXT`). With
//! `--json`, it is line-oriented for scripts: each stdin line is either
//! plain text (sent to `--to` or `--group`), one of the commands above, or
//! a JSON object `{"to": "bob", "body": "hi", "type": "text", "id": "..."}`
//! (or `"group": "ID"` instead of `"to"`; `"transient": true` sends it
//! transient), and every event is printed as one JSON object per line on
//! stdout (`message`, `group_message`, `online`, `read`, `typing`,
//! `recalled`, `edited`, `conversations`, `marked_read`, `sent`, ...).
//!
//! Exit code: 0 when stdin ends (or `/quit`) and every line was sent;
//! non-zero, with the reason on stderr, when the connection could not be
//! made, the session was ended by a kick, or a line was not sent. A push of
//! the app's business server shows as `[system APP] TYPE: body`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use switchboard::node_file::{self, NodeFile};
use switchboard_core::SYSTEM_UID;
use switchboard_sdk::{Client, ClientConfig, Event, Message, User, new_client_msg_id};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Args)]
pub struct ChatArgs {
    /// Server URL: tcp://host:port, tls://host:port, ws://host:port/ws or
    /// wss://host:port/ws. Default: the TCP listener of the node running on
    /// the data dir (its node.json), else tcp://127.0.0.1:9090.
    #[arg(long, env = "SWITCHBOARD_URL")]
    url: Option<String>,
    /// Your user id.
    #[arg(long)]
    uid: String,
    /// Your app.
    #[arg(long, default_value = "demo")]
    app: String,
    /// Login token; by default one is signed with the demo app's secret from --data-dir.
    #[arg(long, env = "SWITCHBOARD_TOKEN")]
    token: Option<String>,
    /// The running node's data directory (the demo app's secret, its
    /// node.json); default ./switchboard-data. Never created by this command.
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Who to talk to (uid in the same app, or app/uid).
    #[arg(long, conflicts_with = "group")]
    to: Option<String>,
    /// A group of your app to talk in: lines typed are posted to it. Group
    /// messages (of every group you are in) are printed either way.
    #[arg(long)]
    group: Option<String>,
    /// This device's id (a second device of the same user needs another
    /// one). Default: `cli-UID` interactive, `cli-json-UID` with --json, so
    /// a script and a person chatting as the same user don't kick each other.
    #[arg(long)]
    device: Option<String>,
    /// Platform reported at login.
    #[arg(long, default_value = "desktop")]
    platform: String,
    /// Line-oriented JSON output for scripts.
    #[arg(long)]
    json: bool,
    /// PEM file of the CA that signed the server's certificate (tls:// and wss://).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Sync from this sequence instead of the device's server-side cursor.
    #[arg(long)]
    since: Option<u64>,
}

impl ChatArgs {
    /// Line-oriented JSON mode (for scripts).
    pub fn json(&self) -> bool {
        self.json
    }

    /// The device id used when `--device` is not given: one per mode.
    fn default_device(&self) -> String {
        let mode = if self.json { "cli-json" } else { "cli" };
        format!("{mode}-{}", self.uid)
    }
}

fn parse_user(s: &str, default_app: &str) -> User {
    match s.split_once('/') {
        Some((app, uid)) => User {
            app: app.into(),
            uid: uid.into(),
        },
        None => User {
            app: default_app.into(),
            uid: s.into(),
        },
    }
}

/// Where a typed line goes.
#[derive(Clone)]
enum Peer {
    User(User),
    Group(String),
}

impl Peer {
    fn label(&self) -> String {
        match self {
            Peer::User(u) => format!("{}/{}", u.app, u.uid),
            Peer::Group(g) => format!("#{g}"),
        }
    }
}

/// The last entry received per conversation (the peer's `app/uid`, or
/// `#group`), for `/read`. std Mutex: held for an insert or a lookup.
type LastSeen = Arc<Mutex<HashMap<String, u64>>>;

/// The conversation an entry belongs to, as `/read` names it.
fn conversation_of(me: &User, m: &Message) -> String {
    if !m.group.is_empty() {
        return format!("#{}", m.group);
    }
    let from = m.from.clone().unwrap_or_default();
    let other = if from == *me {
        m.to.clone().unwrap_or_default()
    } else {
        from
    };
    format!("{}/{}", other.app, other.uid)
}

fn message_json(seq: Option<u64>, m: &Message) -> serde_json::Value {
    let from = m.from.clone().unwrap_or_default();
    let to = m.to.clone().unwrap_or_default();
    if let Some(r) = &m.read {
        let peer = r.peer.clone().unwrap_or_default();
        return json!({
            "event": "read",
            "seq": seq,
            "by": format!("{}/{}", from.app, from.uid),
            "peer": (!peer.uid.is_empty()).then(|| format!("{}/{}", peer.app, peer.uid)),
            "group": (!r.group.is_empty()).then_some(&r.group),
            "read_seq": r.seq,
            "read_msg_id": r.msg_id.to_string(),
        });
    }
    if let Some(a) = &m.amended {
        return json!({
            "event": if a.recalled { "recalled" } else { "edited" },
            "seq": seq,
            "by": format!("{}/{}", from.app, from.uid),
            "group": (!m.group.is_empty()).then_some(&m.group),
            "msg_id": a.msg_id.to_string(),
            "type": a.r#type,
            "body": String::from_utf8_lossy(&a.body),
            "edited_at_ms": a.edited_at_ms,
        });
    }
    if seq.is_none() && m.r#type == TYPING {
        return json!({
            "event": "typing",
            "from": format!("{}/{}", from.app, from.uid),
            "group": (!m.group.is_empty()).then_some(&m.group),
        });
    }
    let event = match seq {
        None => "online",
        Some(_) if !m.group.is_empty() => "group_message",
        Some(_) => "message",
    };
    json!({
        "event": event,
        "seq": seq,
        "group": (!m.group.is_empty()).then_some(&m.group),
        "msg_id": m.msg_id.to_string(),
        "from": format!("{}/{}", from.app, from.uid),
        "system": from.uid == SYSTEM_UID,
        "to": format!("{}/{}", to.app, to.uid),
        "type": m.r#type,
        "body": String::from_utf8_lossy(&m.body),
        "client_msg_id": m.client_msg_id,
        "server_time_ms": m.server_time_ms,
        "recalled": m.recalled,
        "edited_at_ms": m.edited_at_ms,
    })
}

/// Chats until stdin ends or `/quit` (exit 0), or until the client stops on
/// its own: a kick that ends the session (another device took this one's
/// id, too many devices, an operator's kick, the token refused on
/// reconnect). That is an error, with the reason, so the exit code is
/// non-zero; so is any failure to start.
pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    // Read only for what a given token or URL leaves unknown.
    let data_dir = || node_file::find_data_dir(args.data_dir.as_deref());
    let token = match &args.token {
        Some(t) => t.clone(),
        None => {
            let secret = switchboard::server::demo_secret(&data_dir()?)?;
            switchboard_core::auth::issue_token(&secret, &args.app, &args.uid, 24 * 3600)?
        }
    };
    let node = match (&args.url, data_dir()) {
        (None, Ok(dir)) => NodeFile::read(&dir)?,
        _ => None,
    };
    let url = match (&args.url, node) {
        (Some(u), _) => u.clone(),
        (None, Some(node)) => node.tcp_url(),
        (None, None) => "tcp://127.0.0.1:9090".into(),
    };
    let device = args.device.clone().unwrap_or_else(|| args.default_device());
    let mut config = ClientConfig::new(url.clone(), token)
        .with_platform(args.platform.clone())
        .with_device_id(device)
        .with_since(args.since);
    if let Some(ca) = &args.ca {
        config = config.with_root_certs_pem(
            std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?,
        );
    }
    let (client, mut events) = Client::connect(config)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let json_out = args.json;
    let mut peer = match (&args.to, &args.group) {
        (Some(t), _) => Some(Peer::User(parse_user(t, &args.app))),
        (None, Some(g)) => Some(Peer::Group(g.clone())),
        (None, None) => None,
    };
    if !json_out {
        println!(
            "connected as {}/{}; type a message and press enter (/to UID, /group ID, /quit)",
            args.app, args.uid
        );
        match &peer {
            None => println!("no peer yet: use /to UID or /group ID"),
            Some(Peer::Group(g)) => println!("talking in group {g}"),
            Some(Peer::User(_)) => {}
        }
    }

    let me = User {
        app: args.app.clone(),
        uid: args.uid.clone(),
    };
    let last_seen: LastSeen = Arc::default();
    let seen = last_seen.clone();
    let me_printer = me.clone();
    // Ends with the reason the client stopped by itself (None: we closed it).
    let mut printer = tokio::spawn(async move {
        let mut kicked = None;
        while let Some(ev) = events.recv().await {
            if let Event::Message { seq, message } | Event::GroupMessage { seq, message, .. } = &ev
                && message.read.is_none()
                && message.amended.is_none()
            {
                let key = conversation_of(&me_printer, message);
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, *seq);
            }
            print_event(&ev, json_out);
            match ev {
                Event::Kicked { code, reason } => kicked = Some((code, reason)),
                Event::Disconnected { .. } | Event::Connected { .. } => kicked = None,
                Event::Closed => return Some(kicked),
                _ => {}
            }
        }
        None
    });

    // Lines that were not sent: the chat goes on, the exit code says so.
    let mut failed = 0usize;
    // What /recall and /edit act on.
    let mut last_sent: Option<u64> = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            stopped = &mut printer => return Err(stop_error(stopped.ok().flatten())),
        };
        let Some(line) = line else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("/to ") {
            peer = Some(Peer::User(parse_user(rest.trim(), &args.app)));
            continue;
        }
        if let Some(rest) = line.strip_prefix("/group ") {
            peer = Some(Peer::Group(rest.trim().to_string()));
            continue;
        }
        if line == "/quit" {
            break;
        }
        if line == "/list" {
            if let Err(e) = list_conversations(&client, json_out).await {
                report(json_out, format!("cannot list conversations: {e}"));
                failed += 1;
            }
            continue;
        }
        if line == "/recall" || line.starts_with("/edit ") || line == "/edit" {
            let Some(msg_id) = last_sent else {
                report(json_out, "nothing sent yet to recall or edit".into());
                failed += 1;
                continue;
            };
            let done = match line.strip_prefix("/edit") {
                Some(text) => client.edit(msg_id, text.trim().to_owned()).await,
                None => client.recall(msg_id).await,
            };
            let what = if line == "/recall" {
                "recalled"
            } else {
                "edited"
            };
            match done {
                Ok(ack) if json_out => println!(
                    "{}",
                    json!({"event": what, "msg_id": msg_id.to_string(), "seq": ack.seq,
                           "notice_msg_id": ack.msg_id.to_string(), "duplicate": ack.duplicate})
                ),
                Ok(_) => println!("* {what} message {msg_id}"),
                Err(e) => {
                    report(json_out, format!("not {what}: {e}"));
                    failed += 1;
                }
            }
            continue;
        }
        if line == "/read" || line == "/typing" {
            let Some(to) = peer.clone() else {
                report(json_out, "no peer: use /to UID or /group ID".into());
                failed += 1;
                continue;
            };
            let done = if line == "/typing" {
                match &to {
                    Peer::User(u) => client.send_transient(u.clone(), TYPING, "").await,
                    Peer::Group(g) => client.send_group_transient(g.clone(), TYPING, "").await,
                }
                .map(|r| json!({"event": "typing_sent", "devices_reached": r.devices_reached}))
            } else {
                mark_read(&client, &to, &last_seen).await
            };
            match done {
                Ok(v) if json_out => println!("{v}"),
                Ok(_) => {}
                Err(e) => {
                    report(json_out, format!("{} failed: {e}", &line[1..]));
                    failed += 1;
                }
            }
            continue;
        }
        let mut transient = false;
        let (to, kind, body, id) = if json_out && line.starts_with('{') {
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    report(json_out, format!("bad JSON line: {e}"));
                    failed += 1;
                    continue;
                }
            };
            let to = match (v["to"].as_str(), v["group"].as_str()) {
                (Some(t), _) => Some(Peer::User(parse_user(t, &args.app))),
                (None, Some(g)) => Some(Peer::Group(g.to_string())),
                (None, None) => peer.clone(),
            };
            transient = v["transient"].as_bool().unwrap_or(false);
            let kind = v["type"].as_str().unwrap_or("text").to_string();
            let body = v["body"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v["body"].to_string());
            (to, kind, body, v["id"].as_str().map(str::to_string))
        } else {
            (peer.clone(), "text".to_string(), line.to_string(), None)
        };
        let Some(to) = to else {
            report(
                json_out,
                "no peer: use /to UID or /group ID (or \"to\" or \"group\" in the JSON line)"
                    .into(),
            );
            failed += 1;
            continue;
        };
        if transient {
            let sent = match &to {
                Peer::User(u) => client.send_transient(u.clone(), kind, body).await,
                Peer::Group(g) => client.send_group_transient(g.clone(), kind, body).await,
            };
            match sent {
                Ok(r) if json_out => println!(
                    "{}",
                    json!({"event": "sent_transient", "msg_id": r.msg_id.to_string(),
                           "devices_reached": r.devices_reached})
                ),
                Ok(_) => {}
                Err(e) => {
                    report(json_out, format!("not sent: {e}"));
                    failed += 1;
                }
            }
            continue;
        }
        let id = id.unwrap_or_else(new_client_msg_id);
        let body = body.into_bytes();
        let sent = match &to {
            Peer::User(u) => client.send_with_id(id, u.clone(), kind, body).await,
            Peer::Group(g) => client.send_group_with_id(id, g.clone(), kind, body).await,
        };
        if let Ok(r) = &sent {
            last_sent = Some(r.msg_id);
        }
        match sent {
            Ok(r) if json_out => {
                let mut v = json!({"event": "sent", "client_msg_id": r.client_msg_id,
                       "msg_id": r.msg_id.to_string(), "seq": r.seq, "duplicate": r.duplicate});
                match &to {
                    Peer::User(_) => v["to"] = to.label().into(),
                    Peer::Group(g) => v["group"] = g.clone().into(),
                }
                println!("{v}");
            }
            Ok(_) => {}
            Err(e) => {
                report(json_out, format!("not sent: {e}"));
                failed += 1;
            }
        }
    }
    client.close().await;
    // A stop of the client's own before ours (a kick) still counts.
    if let Ok(Some(Some(kick))) = printer.await {
        return Err(stop_error(Some(Some(kick))));
    }
    if failed > 0 {
        anyhow::bail!("{failed} line(s) not sent");
    }
    Ok(())
}

/// The type of the transient message `/typing` sends, and that is shown
/// as "typing...".
const TYPING: &str = "typing";

/// Marks the conversation with `to` read up to its last entry received.
async fn mark_read(
    client: &Client,
    to: &Peer,
    last_seen: &LastSeen,
) -> Result<serde_json::Value, switchboard_sdk::SdkError> {
    let key = match to {
        Peer::User(u) => format!("{}/{}", u.app, u.uid),
        Peer::Group(g) => format!("#{g}"),
    };
    let seq = last_seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .copied();
    let Some(seq) = seq else {
        return Ok(json!({"event": "marked_read", "conversation": key, "seq": null}));
    };
    match to {
        Peer::User(u) => client.mark_read(u.clone(), seq).await?,
        Peer::Group(g) => client.mark_group_read(g.clone(), seq).await?,
    };
    Ok(json!({"event": "marked_read", "conversation": key, "seq": seq}))
}

/// Prints the first page of the conversation list.
async fn list_conversations(
    client: &Client,
    json_out: bool,
) -> Result<(), switchboard_sdk::SdkError> {
    let list = client.conversations("", 0).await?;
    if json_out {
        let conversations: Vec<serde_json::Value> = list
            .conversations
            .iter()
            .map(|c| {
                let last = c.last.as_ref().and_then(|p| p.message.as_ref());
                json!({
                    "peer": c.peer.as_ref().map(|p| format!("{}/{}", p.app, p.uid)),
                    "group": (!c.group.is_empty()).then_some(&c.group),
                    "unread": c.unread,
                    "read_seq": c.read_seq,
                    "last_seq": c.last.as_ref().map(|p| p.seq),
                    "last_body": last.map(|m| String::from_utf8_lossy(&m.body).into_owned()),
                    "last_time_ms": c.last_time_ms,
                    "peer_read_msg_id": (c.peer_read_msg_id > 0).then(|| c.peer_read_msg_id.to_string()),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"event": "conversations", "total_unread": list.total_unread,
                   "conversations": conversations})
        );
        return Ok(());
    }
    println!("* {} unread", list.total_unread);
    for c in &list.conversations {
        let who = match &c.peer {
            Some(p) => p.uid.clone(),
            None => format!("#{}", c.group),
        };
        let last = c
            .last
            .as_ref()
            .and_then(|p| p.message.as_ref())
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .unwrap_or_default();
        let read = if c.peer_read_msg_id > 0
            && c.last
                .as_ref()
                .and_then(|p| p.message.as_ref())
                .map(|m| m.msg_id)
                == Some(c.peer_read_msg_id)
        {
            " (read)"
        } else {
            ""
        };
        println!("  {who:<20} {:>4} unread  {last}{read}", c.unread);
    }
    Ok(())
}

/// Why the client stopped by itself, as the command's error.
fn stop_error(stopped: Option<Option<(u32, String)>>) -> anyhow::Error {
    match stopped {
        Some(Some((code, reason))) => anyhow::anyhow!(
            "kicked: {} ({code}) {reason}",
            switchboard_proto::code::name(code)
        ),
        _ => anyhow::anyhow!("the connection closed"),
    }
}

fn report(json_out: bool, error: String) {
    if json_out {
        println!("{}", json!({"event": "error", "error": error}));
    } else {
        eprintln!("! {error}");
    }
}

fn print_event(ev: &Event, json_out: bool) {
    if json_out {
        let v = match ev {
            Event::Connected {
                user,
                timeline_head,
            } => {
                json!({"event": "connected", "user": format!("{}/{}", user.app, user.uid), "timeline_head": timeline_head})
            }
            Event::Message { seq, message } | Event::GroupMessage { seq, message, .. } => {
                message_json(Some(*seq), message)
            }
            Event::Online { message } => message_json(None, message),
            Event::GroupLeft { group, code } => json!({"event": "group_left", "group": group,
                "code": code, "name": switchboard_proto::code::name(*code)}),
            Event::Disconnected { reason } => {
                json!({"event": "disconnected", "reason": reason.to_string()})
            }
            Event::Kicked { code, reason } => {
                json!({"event": "kicked", "code": code, "reason": reason})
            }
            Event::Closed => json!({"event": "closed"}),
            _ => return,
        };
        println!("{v}");
        return;
    }
    match ev {
        Event::Connected { timeline_head, .. } => {
            println!("* online (timeline at {timeline_head})")
        }
        Event::Message { message, .. }
        | Event::GroupMessage { message, .. }
        | Event::Online { message } => {
            let from = message.from.clone().unwrap_or_default();
            let body = String::from_utf8_lossy(&message.body);
            if let Some(a) = &message.amended {
                if a.recalled {
                    println!("* {} recalled message {}", from.uid, a.msg_id);
                } else {
                    println!(
                        "* {} edited message {}: {}",
                        from.uid,
                        a.msg_id,
                        String::from_utf8_lossy(&a.body)
                    );
                }
            } else if message.recalled {
                println!("[{}] (message recalled)", from.uid);
            } else if let Some(r) = &message.read {
                let with = match &r.peer {
                    Some(p) if r.group.is_empty() => p.uid.clone(),
                    _ => format!("#{}", r.group),
                };
                println!(
                    "* {} read the conversation with {with} up to message {}",
                    from.uid, r.msg_id
                );
            } else if matches!(ev, Event::Online { .. }) && message.r#type == TYPING {
                if message.group.is_empty() {
                    println!("* {} is typing...", from.uid);
                } else {
                    println!("* {} is typing in #{}...", from.uid, message.group);
                }
            } else if !message.group.is_empty() {
                println!("[#{} {}] {body}", message.group, from.uid);
            } else if from.uid == SYSTEM_UID {
                // A push of the app's business server (s2c): no user sent it.
                println!("[system {}] {}: {body}", from.app, message.r#type);
            } else if message.edited_at_ms != 0 {
                println!("[{}] {body} (edited)", from.uid);
            } else {
                println!("[{}] {body}", from.uid);
            }
        }
        Event::Disconnected { reason } => println!("* disconnected ({reason}); reconnecting"),
        Event::Kicked { code, reason } => println!(
            "* kicked: {} ({code}) {reason}",
            switchboard_proto::code::name(*code)
        ),
        Event::GroupLeft { group, code } => println!(
            "* no longer in group {group}: {} ({code})",
            switchboard_proto::code::name(*code)
        ),
        Event::Closed => println!("* closed"),
        _ => {}
    }
}
