//! The embedded blob store: one file per object under a root directory.
//!
//! Keys are [`BlobKey`]s, which cannot contain `..` or start with `/`, so no
//! key reaches outside the root. Writes go to a temporary file in the same
//! directory and are renamed into place, so a reader never sees half an
//! object and a crash never leaves one behind under its real name.

use async_trait::async_trait;
use bytes::Bytes;
use domain::ports::BlobStore;
use domain::{BackendError, BlobKey};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Objects as files under `root`.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// A store rooted at `root`, created if missing.
    pub async fn open(root: impl AsRef<Path>) -> Result<Self, BackendError> {
        let root = root.as_ref().to_path_buf();
        tokio::fs::create_dir_all(&root).await.map_err(io)?;
        Ok(LocalBlobStore { root })
    }

    fn path(&self, key: &BlobKey) -> PathBuf {
        self.root.join(key.as_str())
    }
}

fn io(e: std::io::Error) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, key: &BlobKey, bytes: Bytes) -> Result<(), BackendError> {
        let path = self.path(key);
        let dir = path.parent().expect("a key always has a file name");
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let write = async {
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(e) = write.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(e));
        }
        Ok(())
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, BackendError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(v) => Ok(Some(Bytes::from(v))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), BackendError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `BlobStore` port's battery, then what it leaves on disk: no
    /// temporary file (every case deletes what it wrote).
    #[tokio::test]
    async fn conforms_to_the_blob_store_port_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        let s = LocalBlobStore::open(&root).await.unwrap();
        conformance::blobs::run_all(&s).await;
        fn files(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    files(&p, out)
                } else {
                    out.push(p)
                }
            }
        }
        let mut left = vec![];
        files(&root, &mut left);
        assert!(left.is_empty(), "{left:?}");
    }
}
