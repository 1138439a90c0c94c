//! The job queue tier (`[queue]`): a table of the SQL store (the embedded
//! default), or NATS JetStream behind a transactional outbox in the SQL
//! store (`outbox.rs`).

mod outbox;

pub use self::outbox::{OutboxQueue, RelayMetrics};

use crate::sql::SqlEngine;
use domain::ports::JobQueue;
use domain::QueueConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The job queue tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueTier {
    /// A table of the SQL store (whichever engine `[sql]` chose) with a
    /// visibility timeout.
    Embedded {
        #[serde(flatten)]
        config: QueueConfig,
    },
    /// NATS JetStream (`store_nats::NatsJobQueue`): producers write jobs to
    /// the SQL store's queue table, which every process holding this tier
    /// relays to the broker (see [`OutboxQueue`]); consumers take them from
    /// the broker.
    Nats {
        /// One client URL or several, comma-separated. Always set in a
        /// resolved configuration (a topology without it runs NATS under
        /// `up`).
        #[serde(default)]
        url: Option<String>,
        /// The queue's name: its streams are `<name>` and `<name>_DEAD`.
        /// Default `jobs`.
        #[serde(default = "default_queue_name")]
        name: String,
        /// Copies JetStream keeps of each stream (1, or 3 on a three-node
        /// cluster). Default: 1 (in a topology: one per node `up` runs).
        #[serde(default)]
        replicas: Option<usize>,
        #[serde(flatten)]
        config: QueueConfig,
    },
}

/// The default queue name, `jobs`.
pub fn default_queue_name() -> String {
    "jobs".into()
}

impl Default for QueueTier {
    fn default() -> Self {
        QueueTier::Embedded {
            config: QueueConfig::default(),
        }
    }
}

impl QueueTier {
    /// The retry policy, whichever the engine.
    pub fn config(&self) -> QueueConfig {
        match self {
            QueueTier::Embedded { config } | QueueTier::Nats { config, .. } => *config,
        }
    }

    /// The retry policy, to change it.
    pub fn config_mut(&mut self) -> &mut QueueConfig {
        match self {
            QueueTier::Embedded { config } | QueueTier::Nats { config, .. } => config,
        }
    }
}

/// Builds the `JobQueue` port the tier names (for NATS: connects, and
/// starts this process's outbox relay, which runs as long as the runtime).
pub async fn build(
    tier: &QueueTier,
    sql: &SqlEngine,
    registry: &telemetry::Registry,
) -> anyhow::Result<Arc<dyn JobQueue>> {
    match tier {
        QueueTier::Embedded { config } => Ok(sql.queue(*config)),
        QueueTier::Nats {
            url,
            name,
            replicas,
            config,
        } => {
            let url = url
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("queue: kind = \"nats\" needs a url"))?;
            let broker = store_nats::NatsJobQueue::connect_with(url, name, *config, replicas.unwrap_or(1))
                .await
                .map_err(|e| anyhow::anyhow!("queue: {e}"))?;
            let outbox = sql.queue(outbox::OUTBOX_CONFIG);
            let metrics = RelayMetrics::register(&registry.component("scalestack_outbox"))?;
            Ok(Arc::new(OutboxQueue::start(outbox, broker, metrics)))
        }
    }
}
