//! The shop's business logic: what it does with each bus event, and the
//! order and delivery notifications its own API triggers.
//!
//! The chat protocol between the shop's apps and this server (all message
//! types are the shop's own; Switchboard never looks inside them):
//!
//! | type | how | from → to | body |
//! |---|---|---|---|
//! | `shop.chat.open` | c2s | customer → shop | `{"shop": "acme"}` |
//! | `shop.chat.message` | c2s | customer → shop | `{"shop": "acme", "text": "..."}` |
//! | `shop.chat.reply` | c2s | agent → shop | `{"customer": "cust-1", "text": "..."}` |
//! | `shop.chat.text` | send-as-user | customer ↔ agent | the text, as typed (and masked) |
//! | `shop.chat.assigned` | stored push | → customer | `{"shop", "agent"}` |
//! | `shop.chat.assigned` | stored push | → agent | `{"shop", "customer", "previous", "recent": [...]}` |
//! | `shop.chat.reassigned` | stored push | → customer | `{"shop", "agent", "previous"}` |
//! | `shop.chat.queued` | stored push | → customer | `{"shop"}`: no agent online; held until one is |
//! | `shop.chat.refused` | stored push | → sender | `{"to", "code", "reason"}`: Switchboard refused the text |
//! | `shop.chat.not_yours` | online-only push | → agent | `{"customer"}`: the reply was not relayed |
//! | `order.status` | stored push | → customer | `{"order", "status"}` |
//! | `delivery.offer` | online-only push | → couriers online now | `{"order", "details"}` |
//!
//! Every effect of an event carries a `client_msg_id` derived from the event
//! id, so handling an event twice (a redelivery after the shop restarted and
//! forgot it) stores nothing twice on Switchboard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::bus::{self, Claim, Event, SeenEvents};
use crate::config::ShopConfig;
use crate::desk::{Desk, Pending};
use crate::switchboard::{ApiError, Mode, Switchboard};

/// The message types of the table above.
pub mod kinds {
    pub const OPEN: &str = "shop.chat.open";
    pub const MESSAGE: &str = "shop.chat.message";
    pub const REPLY: &str = "shop.chat.reply";
    pub const TEXT: &str = "shop.chat.text";
    pub const ASSIGNED: &str = "shop.chat.assigned";
    pub const REASSIGNED: &str = "shop.chat.reassigned";
    pub const QUEUED: &str = "shop.chat.queued";
    pub const REFUSED: &str = "shop.chat.refused";
    pub const NOT_YOURS: &str = "shop.chat.not_yours";
    pub const ORDER_STATUS: &str = "order.status";
    pub const DELIVERY_OFFER: &str = "delivery.offer";
}

/// Messages of the previous agent's conversation handed to the next agent.
const RECENT: usize = 20;

/// Ids of handled events remembered for de-duplication.
const SEEN_CAPACITY: usize = 100_000;

/// What became of one webhook request.
#[derive(Debug)]
pub enum Receipt {
    /// The signature is missing or wrong: 401, nothing done.
    BadSignature,
    /// Signed, but not an event (400).
    BadEvent(String),
    /// Handled now.
    Processed,
    /// Handled before (same id): nothing done again.
    Duplicate,
    /// Accepted, nothing to do (not the shop's business, or a client's
    /// malformed report, which a retry would not fix).
    Ignored(&'static str),
    /// The same event is being handled by another request: ask again later.
    Busy,
    /// Switchboard could not be asked: ask again later.
    Failed(ApiError),
}

/// Counters, for `GET /stats` and for people watching the example run.
#[derive(Debug, Default)]
pub struct Stats {
    pub processed: AtomicU64,
    pub duplicates: AtomicU64,
    pub ignored: AtomicU64,
    pub bad_signatures: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct StatsView {
    pub processed: u64,
    pub duplicates: u64,
    pub ignored: u64,
    pub bad_signatures: u64,
    pub failed: u64,
}

/// One shop's chats, as `GET /chats` shows them.
#[derive(Debug, Serialize)]
pub struct DeskView {
    pub shop: String,
    /// customer → agent.
    pub chats: Vec<ChatView>,
    /// Customers waiting for an agent, first come first.
    pub waiting: Vec<WaitingView>,
}

#[derive(Debug, Serialize)]
pub struct WaitingView {
    pub customer: String,
    /// Their messages held for the agent who takes the chat.
    pub held: usize,
}

#[derive(Debug, Serialize)]
pub struct ChatView {
    pub customer: String,
    pub agent: String,
}

/// What a handled event amounted to.
enum Handled {
    Done,
    Ignored(&'static str),
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Deserialize)]
struct Open {
    shop: String,
}

#[derive(Deserialize)]
struct Say {
    shop: String,
    text: String,
}

#[derive(Deserialize)]
struct Reply {
    customer: String,
    text: String,
}

/// The shop server's state.
pub struct Shop {
    sb: Switchboard,
    app: String,
    secret: Vec<u8>,
    /// One desk per shop. A tokio Mutex, held across the Switchboard calls
    /// of one decision: presence is read, people are told and the table
    /// changes with no other decision of that shop in between, so a
    /// customer's notices arrive in the order the table changed. Shops
    /// proceed in parallel; a shop with heavy traffic would lock per chat.
    desks: HashMap<String, Mutex<Desk>>,
    /// agent → shop (an agent serves one shop).
    agent_shop: HashMap<String, String>,
    couriers: Vec<String>,
    seen: SeenEvents,
    pub stats: Stats,
    /// Where phone notifications go.
    pub phones: crate::phones::Phones,
}

impl Shop {
    pub fn new(config: &ShopConfig) -> Result<Shop, String> {
        config.validate()?;
        let sb = Switchboard::new(&config.switchboard_url, &config.app, &config.api_key)?;
        let mut desks = HashMap::new();
        let mut agent_shop = HashMap::new();
        for r in &config.shops {
            for a in &r.agents {
                agent_shop.insert(a.clone(), r.shop.clone());
            }
            desks.insert(
                r.shop.clone(),
                Mutex::new(Desk::new(r.shop.clone(), r.agents.clone())),
            );
        }
        Ok(Shop {
            sb,
            app: config.app.clone(),
            secret: config.webhook_secret.clone().into_bytes(),
            desks,
            agent_shop,
            couriers: config.couriers.clone(),
            seen: SeenEvents::new(SEEN_CAPACITY),
            stats: Stats::default(),
            phones: crate::phones::Phones::default(),
        })
    }

    /// Takes one webhook request: checks the signature, de-duplicates by
    /// event id, handles the event.
    pub async fn receive(&self, signature: Option<&str>, body: &[u8]) -> Receipt {
        if !bus::verify(&self.secret, body, signature) {
            self.stats.bad_signatures.fetch_add(1, Ordering::Relaxed);
            return Receipt::BadSignature;
        }
        let event: Event = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => return Receipt::BadEvent(format!("not an event: {e}")),
        };
        let Ok(id) = event.id.parse::<u64>() else {
            return Receipt::BadEvent(format!("event id {:?} is not a number", event.id));
        };
        if event.app != self.app {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            return Receipt::Ignored("another app's event");
        }
        let ticket = match self.seen.claim(id) {
            Claim::New(ticket) => ticket,
            Claim::Done => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return Receipt::Duplicate;
            }
            Claim::Busy => return Receipt::Busy,
        };
        let span = tracing::info_span!("event", id, topic = %event.topic, uid = %event.uid);
        let handled = tracing::Instrument::instrument(self.handle(id, &event), span).await;
        match handled {
            Ok(Handled::Done) => {
                ticket.finish();
                self.stats.processed.fetch_add(1, Ordering::Relaxed);
                Receipt::Processed
            }
            Ok(Handled::Ignored(why)) => {
                ticket.finish();
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                Receipt::Ignored(why)
            }
            Err(e) if e.is_permanent() => {
                // Repeating would fail the same way and hold back this
                // user's later events: log it and move on.
                warn!(id, error = %e, "event dropped: Switchboard refused what it asked for");
                ticket.finish();
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                Receipt::Ignored("switchboard refused the request")
            }
            Err(e) => {
                // The ticket, dropped, releases the id for the redelivery.
                warn!(id, error = %e, "event failed; the bus will deliver it again");
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                Receipt::Failed(e)
            }
        }
    }

    async fn handle(&self, id: u64, event: &Event) -> Result<Handled> {
        let uid = event.uid.as_str();
        match (event.topic.as_str(), event.kind.as_str()) {
            ("c2s", kinds::OPEN) => match report::<Open>(event) {
                Some(r) => self.open(id, uid, &r.shop).await,
                None => Ok(Handled::Ignored("malformed chat.open")),
            },
            ("c2s", kinds::MESSAGE) => match report::<Say>(event) {
                Some(r) => self.customer_says(id, uid, &r.shop, &r.text).await,
                None => Ok(Handled::Ignored("malformed chat.message")),
            },
            ("c2s", kinds::REPLY) => match report::<Reply>(event) {
                Some(r) => self.agent_says(id, uid, &r.customer, &r.text).await,
                None => Ok(Handled::Ignored("malformed chat.reply")),
            },
            ("user.online", _) => self.agent_online(id, uid).await,
            ("user.offline", _) => self.agent_offline(id, uid).await,
            ("notification", _) => {
                let data = event.data.clone().unwrap_or_default();
                match serde_json::from_value::<crate::phones::Notification>(data) {
                    Ok(n) => {
                        self.phones.send(&n);
                        Ok(Handled::Done)
                    }
                    Err(_) => Ok(Handled::Ignored("malformed notification")),
                }
            }
            _ => Ok(Handled::Ignored("not the shop's business")),
        }
    }

    /// A customer opens a chat with a shop.
    async fn open(&self, id: u64, customer: &str, shop: &str) -> Result<Handled> {
        let Some(desk) = self.desks.get(shop) else {
            return Ok(Handled::Ignored("unknown shop"));
        };
        let mut desk = desk.lock().await;
        self.ensure_agent(&mut desk, id, customer).await?;
        Ok(Handled::Done)
    }

    /// Makes sure an online agent serves `customer`, or that they wait for
    /// one, and tells them which. Returns the agent.
    async fn ensure_agent(
        &self,
        desk: &mut Desk,
        id: u64,
        customer: &str,
    ) -> Result<Option<String>> {
        let online = self.sb.online(desk.agents()).await?;
        if let Some(agent) = desk.agent_of(customer).map(str::to_string)
            && online.contains(&agent)
        {
            // Served already (the chat opened again, on another device, say).
            let body = json!({"shop": desk.shop(), "agent": agent});
            self.tell(customer, kinds::ASSIGNED, &body, &format!("ev{id}"))
                .await?;
            return Ok(Some(agent));
        }
        // No agent, or one who left without the shop hearing of it yet.
        let previous = desk.agent_of(customer).map(str::to_string);
        match desk.pick(&online, previous.as_deref()) {
            Some(agent) => {
                self.hand_over(desk, id, customer, &agent).await?;
                Ok(Some(agent))
            }
            None => {
                self.queue(desk, id, customer).await?;
                Ok(None)
            }
        }
    }

    /// Gives `customer`'s chat to `agent`: the agent learns who and what was
    /// said to the previous agent, the customer learns who serves them now,
    /// and what the customer said while waiting reaches the agent.
    async fn hand_over(&self, desk: &mut Desk, id: u64, customer: &str, agent: &str) -> Result<()> {
        let shop = desk.shop().to_string();
        let previous = desk
            .previous_of(customer)
            .filter(|p| *p != agent)
            .map(str::to_string);
        let recent: Vec<Value> = match &previous {
            Some(p) => self
                .sb
                .recent(customer, p, RECENT)
                .await?
                .into_iter()
                .filter(|m| m.kind == kinds::TEXT)
                .map(|m| json!({"from": m.from.uid, "text": m.body, "time_ms": m.server_time_ms}))
                .collect(),
            None => Vec::new(),
        };
        // Tell first, change the table last: if a call fails, the bus
        // redelivers the event and the whole decision is made again.
        let cmid = format!("ev{id}:{customer}:{agent}");
        let to_agent =
            json!({"shop": shop, "customer": customer, "previous": previous, "recent": recent});
        self.tell(agent, kinds::ASSIGNED, &to_agent, &cmid).await?;
        let (kind, to_customer) = match &previous {
            Some(p) => (
                kinds::REASSIGNED,
                json!({"shop": shop, "agent": agent, "previous": p}),
            ),
            None => (kinds::ASSIGNED, json!({"shop": shop, "agent": agent})),
        };
        self.tell(customer, kind, &to_customer, &cmid).await?;
        for p in desk.pending_of(customer) {
            self.relay(customer, agent, &p.text, p.event_id).await?;
        }
        desk.assign(customer, agent);
        info!(shop, customer, agent, ?previous, "chat assigned");
        Ok(())
    }

    /// No agent of the shop is online: the customer waits.
    async fn queue(&self, desk: &mut Desk, id: u64, customer: &str) -> Result<()> {
        let body = json!({"shop": desk.shop()});
        self.tell(
            customer,
            kinds::QUEUED,
            &body,
            &format!("ev{id}:{customer}:queued"),
        )
        .await?;
        desk.enqueue(customer);
        info!(
            shop = desk.shop(),
            customer, "no agent online; customer waits"
        );
        Ok(())
    }

    /// A customer writes to a shop: to their agent, or held while they wait.
    async fn customer_says(
        &self,
        id: u64,
        customer: &str,
        shop: &str,
        text: &str,
    ) -> Result<Handled> {
        let Some(desk) = self.desks.get(shop) else {
            return Ok(Handled::Ignored("unknown shop"));
        };
        let mut desk = desk.lock().await;
        let agent = match desk.agent_of(customer) {
            // No presence check per message: when the agent leaves, the
            // user.offline event hands the chat over, with what was said.
            Some(agent) => Some(agent.to_string()),
            // An agent coming online takes the waiting customers.
            None if desk.is_waiting(customer) => None,
            // A first message opens the chat.
            None => self.ensure_agent(&mut desk, id, customer).await?,
        };
        let Some(agent) = agent else {
            let held = Pending {
                event_id: id,
                text: text.into(),
            };
            if let Some(dropped) = desk.hold(customer, held) {
                warn!(
                    customer,
                    event = dropped.event_id,
                    "waiting too long; oldest held message dropped"
                );
            }
            return Ok(Handled::Done);
        };
        self.relay(customer, &agent, text, id).await
    }

    /// An agent answers a customer: relayed only if the customer is theirs.
    async fn agent_says(
        &self,
        id: u64,
        agent: &str,
        customer: &str,
        text: &str,
    ) -> Result<Handled> {
        let Some(desk) = self.agent_shop.get(agent).and_then(|s| self.desks.get(s)) else {
            return Ok(Handled::Ignored("not an agent"));
        };
        let desk = desk.lock().await;
        if desk.agent_of(customer) != Some(agent) {
            // Online-only: a note for the agent's screen now, not history.
            let note = json!({"customer": customer});
            self.sb
                .push(
                    &[agent.to_string()],
                    kinds::NOT_YOURS,
                    &note,
                    Mode::OnlineOnly,
                    None,
                )
                .await?;
            return Ok(Handled::Ignored("not the customer's agent"));
        }
        self.relay(agent, customer, text, id).await
    }

    /// An agent came online: the shop's waiting customers get agents.
    async fn agent_online(&self, id: u64, agent: &str) -> Result<Handled> {
        let Some(desk) = self.agent_shop.get(agent).and_then(|s| self.desks.get(s)) else {
            return Ok(Handled::Ignored("not an agent"));
        };
        let mut desk = desk.lock().await;
        let waiting = desk.waiting();
        if waiting.is_empty() {
            return Ok(Handled::Done);
        }
        let online = self.sb.online(desk.agents()).await?;
        for customer in waiting {
            let Some(next) = desk.pick(&online, None) else {
                break;
            };
            self.hand_over(&mut desk, id, &customer, &next).await?;
        }
        Ok(Handled::Done)
    }

    /// An agent's device left: if the agent is gone (no device online),
    /// their customers go to other online agents of the shop, or wait.
    async fn agent_offline(&self, id: u64, agent: &str) -> Result<Handled> {
        let Some(desk) = self.agent_shop.get(agent).and_then(|s| self.desks.get(s)) else {
            return Ok(Handled::Ignored("not an agent"));
        };
        let mut desk = desk.lock().await;
        let customers = desk.customers_of(agent);
        if customers.is_empty() {
            return Ok(Handled::Done);
        }
        // Presence, not the event, decides: the agent may have another
        // device online, or be back already (events arrive after the fact).
        let online = self.sb.online(desk.agents()).await?;
        if online.iter().any(|a| a == agent) {
            return Ok(Handled::Done);
        }
        for customer in customers {
            match desk.pick(&online, Some(agent)) {
                Some(next) => self.hand_over(&mut desk, id, &customer, &next).await?,
                None => self.queue(&mut desk, id, &customer).await?,
            }
        }
        Ok(Handled::Done)
    }

    /// Relays a chat line as `from` to `to`: stored in their conversation,
    /// pushed to both users' devices, masked by the app's word filter.
    async fn relay(&self, from: &str, to: &str, text: &str, event_id: u64) -> Result<Handled> {
        let cmid = format!("ev{event_id}");
        match self.sb.send_as(from, to, kinds::TEXT, text, &cmid).await {
            Ok(_) => Ok(Handled::Done),
            Err(e) if e.is_permanent() => {
                // Refused (the word filter in reject mode, the before-send
                // hook, too long): the sender should know.
                let reason = json!({"to": to, "code": e.code(), "reason": e.to_string()});
                self.tell(from, kinds::REFUSED, &reason, &format!("{cmid}:refused"))
                    .await?;
                Ok(Handled::Ignored("switchboard refused the text"))
            }
            Err(e) => Err(e),
        }
    }

    /// A stored notice to one user, idempotent on `client_msg_id`.
    async fn tell(&self, uid: &str, kind: &str, body: &Value, client_msg_id: &str) -> Result<()> {
        self.sb
            .push_one(uid, kind, body, client_msg_id)
            .await
            .map(drop)
    }

    /// Pushes an order's new status to its customer, stored: a customer
    /// offline now gets it when their app syncs.
    pub async fn order_status(
        &self,
        order: &str,
        customer: &str,
        status: &str,
    ) -> Result<crate::switchboard::PushResult> {
        let body = json!({"order": order, "status": status});
        // One notice per (order, status), however often the order system retries.
        let cmid = format!("order-{order}-{status}");
        self.sb
            .push_one(customer, kinds::ORDER_STATUS, &body, &cmid)
            .await
    }

    /// Offers a delivery to the couriers online now, and only to them: an
    /// offer is worthless to a courier who sees it later. Returns the
    /// couriers reached and the devices reached.
    pub async fn offer_delivery(
        &self,
        order: &str,
        details: &Value,
    ) -> Result<(Vec<String>, usize)> {
        if self.couriers.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let body = json!({"order": order, "details": details});
        let results = self
            .sb
            .push(
                &self.couriers,
                kinds::DELIVERY_OFFER,
                &body,
                Mode::OnlineOnly,
                None,
            )
            .await?;
        let reached = results
            .iter()
            .filter(|r| r.devices_reached > 0)
            .map(|r| r.uid.clone())
            .collect();
        Ok((reached, results.iter().map(|r| r.devices_reached).sum()))
    }

    /// Every shop's chats and waiting customers.
    pub async fn desks(&self) -> Vec<DeskView> {
        let mut shops: Vec<&String> = self.desks.keys().collect();
        shops.sort();
        let mut out = Vec::new();
        for shop in shops {
            let Some(desk) = self.desks.get(shop) else {
                continue;
            };
            let desk = desk.lock().await;
            out.push(DeskView {
                shop: shop.clone(),
                chats: desk
                    .chats()
                    .map(|(c, a)| ChatView {
                        customer: c.into(),
                        agent: a.into(),
                    })
                    .collect(),
                waiting: desk
                    .waiting_held()
                    .into_iter()
                    .map(|(customer, held)| WaitingView { customer, held })
                    .collect(),
            });
        }
        out
    }

    pub fn stats(&self) -> StatsView {
        let s = &self.stats;
        StatsView {
            processed: s.processed.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            ignored: s.ignored.load(Ordering::Relaxed),
            bad_signatures: s.bad_signatures.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
        }
    }
}

/// A c2s report's JSON body; `None` when the client sent something else.
fn report<T: serde::de::DeserializeOwned>(event: &Event) -> Option<T> {
    serde_json::from_str(event.body_text.as_deref()?).ok()
}
