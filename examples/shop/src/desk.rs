//! One shop's support desk: the assignment table (which agent serves which
//! customer) and the queue of customers waiting for an agent. Pure state and
//! decisions, no I/O: the caller asks Switchboard who is online and tells
//! people; the desk only remembers and chooses.

use std::collections::{BTreeMap, VecDeque};

/// Customer messages kept for a waiting customer, until an agent takes the
/// chat. Past it the oldest is dropped (and logged by the caller): a
/// customer typing into a desk with nobody on it for that long is told so.
pub const MAX_PENDING: usize = 50;

/// A customer message not relayed yet: nobody was online to take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The bus event that carried it (relays are idempotent on it).
    pub event_id: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiting {
    customer: String,
    /// The agent who served them before they had to wait, if any.
    previous: Option<String>,
    pending: VecDeque<Pending>,
}

#[derive(Debug)]
pub struct Desk {
    shop: String,
    /// The shop's agents, in the order that breaks ties.
    agents: Vec<String>,
    /// customer → agent.
    chats: BTreeMap<String, String>,
    /// Customers with no agent, first come first served.
    waiting: VecDeque<Waiting>,
}

impl Desk {
    pub fn new(shop: impl Into<String>, agents: Vec<String>) -> Desk {
        Desk {
            shop: shop.into(),
            agents,
            chats: BTreeMap::new(),
            waiting: VecDeque::new(),
        }
    }

    pub fn shop(&self) -> &str {
        &self.shop
    }

    pub fn agents(&self) -> &[String] {
        &self.agents
    }

    /// The agent serving `customer`, if any.
    pub fn agent_of(&self, customer: &str) -> Option<&str> {
        self.chats.get(customer).map(String::as_str)
    }

    /// The customers `agent` serves, in uid order.
    pub fn customers_of(&self, agent: &str) -> Vec<String> {
        self.chats
            .iter()
            .filter(|(_, a)| *a == agent)
            .map(|(c, _)| c.clone())
            .collect()
    }

    fn load(&self, agent: &str) -> usize {
        self.chats.values().filter(|a| *a == agent).count()
    }

    /// The agent to give a chat to: of this shop's agents in `online`, but
    /// not `except`, the one serving the fewest customers; the roster order
    /// breaks ties.
    pub fn pick(&self, online: &[String], except: Option<&str>) -> Option<String> {
        self.agents
            .iter()
            .filter(|a| online.contains(a) && Some(a.as_str()) != except)
            .min_by_key(|a| self.load(a))
            .cloned()
    }

    /// The agent who served `customer` last: the current one, or the one
    /// before the customer had to wait.
    pub fn previous_of(&self, customer: &str) -> Option<&str> {
        self.agent_of(customer).or_else(|| {
            self.waiting
                .iter()
                .find(|w| w.customer == customer)
                .and_then(|w| w.previous.as_deref())
        })
    }

    /// The messages `customer` sent while waiting, oldest first.
    pub fn pending_of(&self, customer: &str) -> Vec<Pending> {
        self.waiting
            .iter()
            .find(|w| w.customer == customer)
            .map(|w| w.pending.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `agent` now serves `customer`, who stops waiting (and whose held
    /// messages, see [`Desk::pending_of`], are forgotten).
    pub fn assign(&mut self, customer: &str, agent: &str) {
        self.chats.insert(customer.into(), agent.into());
        self.waiting.retain(|w| w.customer != customer);
    }

    /// `customer` waits for an agent (no agent serves them meanwhile).
    pub fn enqueue(&mut self, customer: &str) {
        let previous = self.chats.remove(customer);
        if !self.is_waiting(customer) {
            self.waiting.push_back(Waiting {
                customer: customer.into(),
                previous,
                pending: VecDeque::new(),
            });
        }
    }

    pub fn is_waiting(&self, customer: &str) -> bool {
        self.waiting.iter().any(|w| w.customer == customer)
    }

    /// Keeps a waiting customer's message for the agent who takes the chat.
    /// Returns the message dropped to make room, if the queue was full.
    pub fn hold(&mut self, customer: &str, message: Pending) -> Option<Pending> {
        self.enqueue(customer);
        let w = self.waiting.iter_mut().find(|w| w.customer == customer)?;
        if w.pending.iter().any(|p| p.event_id == message.event_id) {
            return None;
        }
        w.pending.push_back(message);
        if w.pending.len() > MAX_PENDING {
            w.pending.pop_front()
        } else {
            None
        }
    }

    /// Waiting customers, first come first.
    pub fn waiting(&self) -> Vec<String> {
        self.waiting.iter().map(|w| w.customer.clone()).collect()
    }

    /// Waiting customers with the number of messages held for each.
    pub fn waiting_held(&self) -> Vec<(String, usize)> {
        self.waiting
            .iter()
            .map(|w| (w.customer.clone(), w.pending.len()))
            .collect()
    }

    /// Every (customer, agent) pair, in customer order.
    pub fn chats(&self) -> impl Iterator<Item = (&str, &str)> {
        self.chats.iter().map(|(c, a)| (c.as_str(), a.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn picks_the_least_loaded_online_agent() {
        let mut d = Desk::new("acme", s(&["a1", "a2", "a3"]));
        let online = s(&["a2", "a3"]);
        assert_eq!(d.pick(&online, None).as_deref(), Some("a2"));
        d.assign("c1", "a2");
        assert_eq!(d.pick(&online, None).as_deref(), Some("a3"));
        d.assign("c2", "a3");
        assert_eq!(d.pick(&online, None).as_deref(), Some("a2"));
        assert_eq!(d.pick(&online, Some("a2")).as_deref(), Some("a3"));
        assert_eq!(d.pick(&s(&["a2"]), Some("a2")), None);
        // Someone online who is not this shop's agent is never picked.
        assert_eq!(d.pick(&s(&["stranger"]), None), None);
        assert_eq!(d.customers_of("a2"), ["c1"]);
        assert_eq!(d.agent_of("c2"), Some("a3"));
    }

    #[test]
    fn waiting_customers_keep_their_messages_until_assigned() {
        let mut d = Desk::new("acme", s(&["a1"]));
        d.assign("c1", "a1");
        d.enqueue("c1");
        assert_eq!(d.agent_of("c1"), None);
        assert_eq!(d.previous_of("c1"), Some("a1"));
        assert_eq!(d.waiting(), ["c1"]);
        let m = |id: u64| Pending {
            event_id: id,
            text: format!("m{id}"),
        };
        assert_eq!(d.hold("c1", m(1)), None);
        assert_eq!(d.hold("c1", m(1)), None, "a redelivery is kept once");
        assert_eq!(d.hold("c2", m(2)), None);
        assert_eq!(d.waiting(), ["c1", "c2"]);
        assert_eq!(d.pending_of("c1"), [m(1)]);
        d.assign("c1", "a1");
        assert_eq!(d.pending_of("c1"), []);
        assert_eq!(d.waiting(), ["c2"]);
        assert_eq!(d.previous_of("c2"), None);
        for id in 3..2 + MAX_PENDING as u64 {
            assert_eq!(d.hold("c2", m(id)), None);
        }
        assert_eq!(d.hold("c2", m(1000)), Some(m(2)), "full: the oldest goes");
        assert_eq!(d.pending_of("c2").len(), MAX_PENDING);
        assert_eq!(d.pending_of("c2")[0], m(3));
    }
}
