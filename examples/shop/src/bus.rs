//! The receiving end of Switchboard's bus (docs/bus.md): checking a
//! webhook's signature, reading its event, and remembering which event ids
//! were already handled, since the bus delivers at least once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The header carrying `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";

/// Whether `header` is the signature of `body` with `secret`, compared in
/// constant time. Computed over the raw bytes, before any JSON parsing.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Some(signature) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// `sha256=<hex>` of `body`: what Switchboard sends (tests forge with it).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One event as the webhook carries it. Unknown fields are ignored, so a
/// newer Switchboard adding some does not break the shop.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// Decimal string of a 64-bit id (too big for a JavaScript number).
    pub id: String,
    /// `c2s`, `user.online`, `user.offline`, `message.stored`, `notification`.
    pub topic: String,
    pub app: String,
    /// The user the event is about (the sender of a c2s).
    pub uid: String,
    /// The c2s or message type; absent for online/offline.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub time_ms: i64,
    /// A c2s: the client's bytes as text, when they are UTF-8.
    #[serde(default)]
    pub body_text: Option<String>,
    /// Platform events: their details.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// What [`SeenEvents::claim`] found.
#[derive(Debug)]
pub enum Claim<'a> {
    /// Never seen: handle it, then [`Ticket::finish`]. A ticket dropped
    /// unfinished (a failure, a panic, a cancelled request) releases the id,
    /// so the bus's next delivery handles it afresh.
    New(Ticket<'a>),
    /// Already handled: answer 2xx and do nothing.
    Done,
    /// Being handled right now (a redelivery raced the first attempt):
    /// answer non-2xx so the bus asks again later.
    Busy,
}

/// The right to handle one event id; see [`Claim::New`].
#[derive(Debug)]
pub struct Ticket<'a> {
    seen: &'a SeenEvents,
    id: u64,
    finished: bool,
}

impl Ticket<'_> {
    /// The event was handled: later deliveries of it are duplicates.
    pub fn finish(mut self) {
        self.finished = true;
        self.seen.finish(self.id);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.seen.release(self.id);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Busy,
    Done,
}

/// The ids of handled events, the most recent `capacity` of them.
///
/// In memory, so a restart of the shop forgets them; that is why every
/// effect of an event is also idempotent on Switchboard's side (each push
/// and relay carries a `client_msg_id` derived from the event id). A real
/// shop would record the id in the same transaction as its business change.
#[derive(Debug)]
pub struct SeenEvents {
    // std Mutex: held for a map lookup, never across an await.
    inner: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    state: HashMap<u64, State>,
    /// Done ids, oldest first, to forget beyond `capacity`.
    done: VecDeque<u64>,
    capacity: usize,
}

impl SeenEvents {
    pub fn new(capacity: usize) -> SeenEvents {
        SeenEvents {
            inner: Mutex::new(Seen {
                state: HashMap::new(),
                done: VecDeque::new(),
                capacity: capacity.max(1),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts handling `id`, unless it is done or being handled.
    pub fn claim(&self, id: u64) -> Claim<'_> {
        let mut seen = self.lock();
        match seen.state.get(&id) {
            Some(State::Done) => Claim::Done,
            Some(State::Busy) => Claim::Busy,
            None => {
                seen.state.insert(id, State::Busy);
                Claim::New(Ticket {
                    seen: self,
                    id,
                    finished: false,
                })
            }
        }
    }

    fn finish(&self, id: u64) {
        let mut seen = self.lock();
        seen.state.insert(id, State::Done);
        seen.done.push_back(id);
        // Bounded: the bus redelivers within minutes, not after
        // `capacity` newer events.
        while seen.done.len() > seen.capacity {
            if let Some(old) = seen.done.pop_front() {
                seen.state.remove(&old);
            }
        }
    }

    fn release(&self, id: u64) {
        let mut seen = self.lock();
        if seen.state.get(&id) == Some(&State::Busy) {
            seen.state.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        // RFC 4231, test case 2.
        let sig = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(sign(b"Jefe", b"what do ya want for nothing?"), sig);
        assert!(verify(b"Jefe", b"what do ya want for nothing?", Some(sig)));
        assert!(!verify(b"Jeff", b"what do ya want for nothing?", Some(sig)));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", Some(sig)));
        assert!(!verify(b"Jefe", b"x", None));
        assert!(!verify(b"Jefe", b"x", Some("sha256=zz")));
        assert!(!verify(b"Jefe", b"x", Some("sha256=5bd")));
        assert!(!verify(b"Jefe", b"x", Some("md5=00")));
    }

    #[test]
    fn seen_events_claim_finish_release_and_forget() {
        let seen = SeenEvents::new(2);
        let Claim::New(ticket) = seen.claim(1) else {
            panic!("new")
        };
        assert!(matches!(seen.claim(1), Claim::Busy));
        drop(ticket); // failed: released
        let Claim::New(ticket) = seen.claim(1) else {
            panic!("released")
        };
        ticket.finish();
        assert!(matches!(seen.claim(1), Claim::Done));
        for id in [2, 3] {
            let Claim::New(ticket) = seen.claim(id) else {
                panic!("new")
            };
            ticket.finish();
        }
        // Capacity 2: the oldest done id is forgotten.
        assert!(matches!(seen.claim(1), Claim::New(_)));
        assert!(matches!(seen.claim(3), Claim::Done));
    }
}
