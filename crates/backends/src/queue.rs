//! The job queue tier (`[queue]`): today a table of the SQL store; the
//! queue chooses its engine on its own, so a broker is a new variant here.

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
}

impl Default for QueueTier {
    fn default() -> Self {
        QueueTier::Embedded {
            config: QueueConfig::default(),
        }
    }
}

/// Builds the `JobQueue` port the tier names.
pub fn build(tier: &QueueTier, sql: &SqlEngine) -> anyhow::Result<Arc<dyn JobQueue>> {
    match tier {
        QueueTier::Embedded { config } => Ok(sql.queue(*config)),
    }
}
