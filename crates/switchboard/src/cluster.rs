//! Builds presence, route and bus from the configuration: in-process for a
//! single node (the default), or Redis and NATS (JetStream) for a cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_backends::jetstream_bus::{JetStreamBus, JetStreamConfig};
use switchboard_backends::nats_route::{self, NatsRoute};
use switchboard_backends::redis_presence::{RedisPresence, RedisPresenceConfig};
use switchboard_core::{Bus, Hub, HubPresence, LocalRoute, OutboxBus, Presence, Route, Store};

use crate::config::Config;

/// The client for `url`, made once per URL.
async fn nats_client(
    made: &mut Vec<(String, async_nats::Client)>,
    url: &str,
    node: &str,
) -> anyhow::Result<async_nats::Client> {
    if let Some((_, c)) = made.iter().find(|(u, _)| u == url) {
        return Ok(c.clone());
    }
    let c = nats_route::connect(url, node).await?;
    made.push((url.to_string(), c.clone()));
    Ok(c)
}

/// The presence, route and bus of a node.
pub struct Backends {
    pub presence: Arc<dyn Presence>,
    pub route: Arc<dyn Route>,
    pub bus: Arc<dyn Bus>,
    redis: Option<Arc<RedisPresence>>,
}

impl Backends {
    /// Builds what `config` asks for. Redis and NATS are not waited for:
    /// they connect in the background, and until they answer requests that
    /// need them fail with UNAVAILABLE and `/readyz` names them.
    pub async fn build(
        config: &Config,
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Backends> {
        let mut redis = None;
        let presence: Arc<dyn Presence> = match config.presence.backend.as_str() {
            // One node: its hub holds every connection there is.
            "memory" => Arc::new(HubPresence::new(hub.clone(), config.node.clone())),
            "redis" => {
                let p = &config.presence;
                let r = Arc::new(
                    RedisPresence::connect(RedisPresenceConfig {
                        urls: p.urls.clone(),
                        cluster: p.cluster,
                        node: config.node.clone(),
                        prefix: p.prefix.clone(),
                        ttl: Duration::from_secs(p.ttl_secs),
                        heartbeat: Duration::from_secs(p.heartbeat_secs),
                        ..RedisPresenceConfig::default()
                    })
                    .context("cannot set up the redis presence")?,
                );
                redis = Some(r.clone());
                r
            }
            other => bail!("unknown presence backend {other:?} (known: memory, redis)"),
        };

        // One NATS connection serves the route and the bus when they share a URL.
        let mut nats: Vec<(String, async_nats::Client)> = Vec::new();
        let route: Arc<dyn Route> = match config.route.backend.as_str() {
            "local" => Arc::new(LocalRoute::new(hub.clone())),
            "nats" => {
                let client = nats_client(&mut nats, &config.route.url, &config.node).await?;
                Arc::new(
                    NatsRoute::start(
                        client,
                        &config.route.prefix,
                        &config.node,
                        hub.clone(),
                        presence.clone(),
                    )
                    .await
                    .context("cannot set up the NATS route")?,
                )
            }
            other => bail!("unknown route backend {other:?} (known: local, nats)"),
        };

        let bus: Arc<dyn Bus> = match config.bus.backend.as_str() {
            "outbox" => Arc::new(OutboxBus::new(store)),
            "jetstream" => {
                let b = &config.bus;
                let client = nats_client(&mut nats, &b.url, &config.node).await?;
                Arc::new(
                    JetStreamBus::new(
                        client,
                        JetStreamConfig {
                            stream: b.stream.clone(),
                            prefix: b.prefix.clone(),
                            duplicate_window: Duration::from_secs(b.dedupe_window_secs),
                            max_age: Duration::from_secs(b.max_age_secs),
                            replicas: b.replicas,
                            ..JetStreamConfig::default()
                        },
                    )
                    .context("cannot set up the JetStream bus")?,
                )
            }
            other => bail!("unknown bus backend {other:?} (known: outbox, jetstream)"),
        };
        Ok(Backends {
            presence,
            route,
            bus,
            redis,
        })
    }

    /// On a clean shutdown, after the connections closed: drops this node's
    /// presence heartbeat so nothing is routed here any more.
    pub async fn close(&self) {
        if let Some(r) = &self.redis {
            r.shutdown().await;
        }
    }
}
