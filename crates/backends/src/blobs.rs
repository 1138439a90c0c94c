//! The blob store tier (`[blobs]`): files under a local directory.

use anyhow::Context;
use domain::ports::BlobStore;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The blob store tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BlobsTier {
    /// Files under `dir`, default `<data_dir>/blobs`.
    Embedded {
        #[serde(default)]
        dir: Option<PathBuf>,
    },
}

impl Default for BlobsTier {
    fn default() -> Self {
        BlobsTier::Embedded { dir: None }
    }
}

/// Builds the `BlobStore` port the tier names (creating its directory).
pub async fn build(tier: &BlobsTier, data_dir: &Path) -> anyhow::Result<Arc<dyn BlobStore>> {
    match tier {
        BlobsTier::Embedded { dir } => {
            let dir = dir.clone().unwrap_or_else(|| data_dir.join("blobs"));
            let store = blob::LocalBlobStore::open(&dir)
                .await
                .with_context(|| format!("opening blob directory {}", dir.display()))?;
            Ok(Arc::new(store))
        }
    }
}
