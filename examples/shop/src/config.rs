//! What the shop server needs to know: where Switchboard is, its app and
//! keys, and its people (each shop's support agents, the couriers). Flags
//! and `SHOP_*` environment variables (clap), or filled in by a test.

use std::collections::HashSet;

/// One shop and its support agents, in the order ties are broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    pub shop: String,
    pub agents: Vec<String>,
}

impl std::str::FromStr for Roster {
    type Err = String;

    /// `acme=agent-1,agent-2`.
    fn from_str(s: &str) -> Result<Roster, String> {
        let (shop, agents) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected SHOP=AGENT[,AGENT...]"))?;
        let shop = shop.trim().to_string();
        let agents: Vec<String> = agents
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if shop.is_empty() || agents.is_empty() {
            return Err(format!("{s:?}: a shop needs a name and at least one agent"));
        }
        Ok(Roster { shop, agents })
    }
}

/// The shop server's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ShopConfig {
    /// Base URL of Switchboard's HTTP API.
    #[arg(
        long,
        env = "SHOP_SWITCHBOARD_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub switchboard_url: String,
    /// The Switchboard app the shop's users belong to.
    #[arg(long, env = "SHOP_APP", default_value = "shop")]
    pub app: String,
    /// The app's `api_key` (sent as `Authorization: Bearer`).
    #[arg(long, env = "SHOP_API_KEY")]
    pub api_key: String,
    /// The `secret` of the app's webhook that points here: every event's
    /// `X-Switchboard-Signature` is checked against it.
    #[arg(long, env = "SHOP_WEBHOOK_SECRET")]
    pub webhook_secret: String,
    /// A shop and its support agents, `SHOP=AGENT,AGENT` (repeat the flag;
    /// in the variable, separate shops with `;`).
    #[arg(
        long = "shop",
        env = "SHOP_SHOPS",
        value_delimiter = ';',
        required = true
    )]
    pub shops: Vec<Roster>,
    /// The couriers delivery offers go to (comma-separated).
    #[arg(long, env = "SHOP_COURIERS", value_delimiter = ',')]
    pub couriers: Vec<String>,
}

impl ShopConfig {
    /// Checks what clap can't: non-empty keys, each agent in one shop only.
    pub fn validate(&self) -> Result<(), String> {
        if self.api_key.is_empty() {
            return Err("the API key is empty".into());
        }
        if self.webhook_secret.is_empty() {
            // An unsigned webhook would let anyone on the network move chats around.
            return Err("the webhook secret is empty".into());
        }
        let mut shops = HashSet::new();
        let mut agents = HashSet::new();
        for r in &self.shops {
            if !shops.insert(&r.shop) {
                return Err(format!("shop {:?} is listed twice", r.shop));
            }
            for a in &r.agents {
                if !agents.insert(a) {
                    return Err(format!("agent {a:?} is in more than one shop"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roster_parses() {
        let r: Roster = "acme= agent-1, agent-2,".parse().unwrap();
        assert_eq!(r.shop, "acme");
        assert_eq!(r.agents, ["agent-1", "agent-2"]);
        assert!("acme".parse::<Roster>().is_err());
        assert!("acme=".parse::<Roster>().is_err());
        assert!("=a".parse::<Roster>().is_err());
    }

    #[test]
    fn an_agent_serves_one_shop() {
        let config = ShopConfig {
            switchboard_url: "http://127.0.0.1:8080".into(),
            app: "shop".into(),
            api_key: "k".into(),
            webhook_secret: "s".into(),
            shops: vec!["a=x,y".parse().unwrap(), "b=y".parse().unwrap()],
            couriers: vec![],
        };
        assert!(config.validate().unwrap_err().contains("\"y\""));
    }
}
