//! `shop client`: a customer, agent or courier in a terminal, on the Rust
//! SDK — the part of the shop's mobile apps that talks to Switchboard.
//!
//! - customer: opens a chat with `--shop` (c2s `shop.chat.open`); every line
//!   typed is a `shop.chat.message` to that shop.
//! - agent: a line `CUSTOMER: text` answers that customer (c2s
//!   `shop.chat.reply`); a line without `CUSTOMER:` answers the customer who
//!   wrote or was assigned last.
//! - courier: only listens (order offers arrive while online).
//!
//! Every message received is printed as one line: `[from] type body`, with
//! `(live)` for online-only pushes.

use anyhow::Context;
use serde_json::json;
use shop::service::kinds;
use switchboard_sdk::{Client, ClientConfig, Event, Message};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Role {
    Customer,
    Agent,
    Courier,
}

#[derive(clap::Args)]
pub struct ClientArgs {
    /// Who you are.
    #[arg(long = "as", value_enum)]
    role: Role,
    /// Switchboard's client URL (tcp://, ws://.../ws).
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "tcp://127.0.0.1:9090")]
    url: String,
    /// Your login token (`switchboard token --app shop --uid ... --secret ...`).
    #[arg(long, env = "SHOP_TOKEN")]
    token: String,
    /// This device's id: the same id again resumes where it left off.
    #[arg(long, default_value = "terminal")]
    device: String,
    /// Customer: the shop to chat with.
    #[arg(long, required_if_eq("role", "customer"))]
    shop: Option<String>,
}

fn describe(m: &Message, live: bool) -> String {
    let from = m.from.as_ref().map(|u| u.uid.as_str()).unwrap_or_default();
    let from = if from.is_empty() { "shop" } else { from };
    format!(
        "{}[{from}] {} {}",
        if live { "(live) " } else { "" },
        m.r#type,
        String::from_utf8_lossy(&m.body)
    )
}

/// For an agent: the customer a message is about, to answer by default.
fn customer_of(m: &Message) -> Option<String> {
    match m.r#type.as_str() {
        kinds::TEXT => m.from.as_ref().map(|u| u.uid.clone()),
        kinds::ASSIGNED => serde_json::from_slice::<serde_json::Value>(&m.body)
            .ok()?
            .get("customer")?
            .as_str()
            .map(str::to_string),
        _ => None,
    }
}

pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let config = ClientConfig::new(args.url.clone(), args.token.clone())
        .with_device_id(args.device.clone())
        .with_platform("terminal");
    let (client, mut events) = Client::connect(config).await.context("cannot connect")?;
    let me = client.user();
    println!("connected as {}/{} ({:?})", me.app, me.uid, args.role);

    // The agent's default addressee, updated by what arrives. std Mutex:
    // held for a clone or an assignment, never across an await.
    let last_customer = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let printer = {
        let last_customer = last_customer.clone();
        let me = me.uid.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Message { message, .. } => {
                        if let Some(c) = customer_of(&message).filter(|c| *c != me) {
                            *last_customer.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                        }
                        println!("{}", describe(&message, false));
                    }
                    Event::Online { message } => println!("{}", describe(&message, true)),
                    Event::Disconnected { reason } => println!("* disconnected ({reason})"),
                    Event::Kicked { code, reason } => println!("* kicked ({code}) {reason}"),
                    Event::Closed => break,
                    _ => {}
                }
            }
        })
    };

    if let (Role::Customer, Some(shop)) = (args.role, &args.shop) {
        client
            .c2s(kinds::OPEN, json!({"shop": shop}).to_string())
            .await
            .context("could not open the chat")?;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let report = match (args.role, &args.shop) {
            (Role::Customer, Some(shop)) => {
                Some((kinds::MESSAGE, json!({"shop": shop, "text": line})))
            }
            (Role::Agent, _) => {
                let (to, text) = match line.split_once(':') {
                    Some((c, t)) if !c.trim().is_empty() && !c.contains(' ') => {
                        (Some(c.trim().to_string()), t.trim())
                    }
                    _ => (
                        last_customer
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone(),
                        line,
                    ),
                };
                match to {
                    Some(c) => Some((kinds::REPLY, json!({"customer": c, "text": text}))),
                    None => {
                        eprintln!("! to whom? write CUSTOMER: text");
                        None
                    }
                }
            }
            _ => {
                eprintln!("! couriers only listen");
                None
            }
        };
        if let Some((kind, body)) = report
            && let Err(e) = client.c2s(kind, body.to_string()).await
        {
            eprintln!("! not sent: {e}");
        }
    }
    client.close().await;
    let _ = printer.await;
    Ok(())
}
