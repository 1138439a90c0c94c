//! `scalestack worker`: claims photo jobs from the queue, renders the
//! variants into the blob store and marks the photo `ready`.
//!
//! Delivery is at least once, so handling is idempotent: variants are
//! overwritten with the same bytes, a photo already `ready` is acknowledged
//! without work, a photo that no longer exists is acknowledged and skipped.
//! A job that keeps failing is retried with back-off and dead-lettered after
//! its attempts, and its photo ends `failed`; a job that crashed its worker
//! (visibility timeout expired) counts that delivery as an attempt, so a
//! poison image cannot crash-loop the tier.

mod metrics;

pub use metrics::WorkerMetrics;

use anyhow::Context;
use app::{ProcessPhoto, PROCESS_PHOTO};
use backends::{Backends, BackendsConfig};
use bytes::Bytes;
use domain::{Job, NackOutcome, PhotoId, PhotoStatus, Variant};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Everything a worker process needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`. Default 127.0.0.1:9201.
    pub metrics_listen: SocketAddr,
    #[serde(default)]
    pub settings: WorkerSettings,
    #[serde(default)]
    pub backends: BackendsConfig,
}

/// Behaviour of every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Jobs processed at once by one process. Default 1.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a claimed job stays hidden from other workers. Default 120 s.
    #[serde(default = "default_visibility_secs")]
    pub visibility_secs: u64,
    /// Sleep between polls of an empty queue. Default 200 ms.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Largest image in pixels (the decoder's limit). Default 40 megapixels.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn default_concurrency() -> usize {
    1
}
fn default_visibility_secs() -> u64 {
    120
}
fn default_poll_ms() -> u64 {
    200
}
fn default_max_pixels() -> u64 {
    40_000_000
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9201)),
            settings: WorkerSettings::default(),
            backends: BackendsConfig::default(),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: default_concurrency(),
            visibility_secs: default_visibility_secs(),
            poll_ms: default_poll_ms(),
            max_pixels: default_max_pixels(),
        }
    }
}

/// What handling one job came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Variants written, photo `ready` (or it already was).
    Done,
    /// Nothing to do: the photo no longer exists.
    Skipped,
    /// Failed; will be delivered again.
    Retrying,
    /// Failed for the last time; photo marked `failed`.
    DeadLettered,
    /// Failed, but the job had already passed to another delivery (this
    /// one outlived its visibility timeout): left to that one.
    Stale,
}

/// A job consumer over connected backends.
#[derive(Clone)]
pub struct Worker {
    backends: Backends,
    settings: Arc<WorkerSettings>,
    metrics: Arc<WorkerMetrics>,
}

impl Worker {
    /// A worker over `backends`.
    pub fn new(backends: Backends, settings: WorkerSettings) -> Self {
        let metrics = Arc::new(WorkerMetrics::in_registry(&backends.metrics));
        Worker {
            backends,
            settings: Arc::new(settings),
            metrics,
        }
    }

    /// Connects the backends of `config`.
    pub async fn build(config: &WorkerConfig) -> anyhow::Result<Self> {
        let backends = Backends::connect(&config.backends).await?;
        Ok(Worker::new(backends, config.settings.clone()))
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &Arc<WorkerMetrics> {
        &self.metrics
    }

    /// Claims and handles at most one job; `None` when the queue was empty.
    pub async fn run_once(&self) -> anyhow::Result<Option<Outcome>> {
        let visibility = Duration::from_secs(self.settings.visibility_secs);
        let Some(job) = self.backends.queue.claim(visibility).await? else {
            return Ok(None);
        };
        let span = tracing::info_span!("job", job_id = job.id, kind = %job.kind, attempt = job.attempt);
        let _enter = span.enter();
        // The job was enqueued right after its photo was written, perhaps
        // on a primary whose replicas have not replayed it yet.
        let (handled, _) =
            domain::consistency::scope(Some(domain::consistency::PRIMARY_ONLY), self.handle(&job)).await;
        let outcome = match handled {
            Ok(outcome) => {
                self.backends.queue.ack(&job).await?;
                tracing::info!(?outcome, "job done");
                outcome
            }
            Err(e) => self.fail(&job, &format!("{e:#}")).await?,
        };
        self.metrics.job(outcome);
        Ok(Some(outcome))
    }

    async fn fail(&self, job: &Job, error: &str) -> anyhow::Result<Outcome> {
        match self.backends.queue.nack(job, error).await? {
            NackOutcome::Retry { delay_ms } => {
                tracing::warn!(error, delay_ms, "job failed; will retry");
                Ok(Outcome::Retrying)
            }
            NackOutcome::Stale => {
                tracing::warn!(
                    error,
                    "job failed, but another delivery owns it now; left to that one"
                );
                Ok(Outcome::Stale)
            }
            NackOutcome::DeadLettered => {
                tracing::error!(error, "job failed for the last time; dead-lettered");
                if let Ok(p) = serde_json::from_slice::<ProcessPhoto>(&job.payload) {
                    match self
                        .backends
                        .store
                        .set_photo_status(PhotoId(p.photo_id), PhotoStatus::Failed)
                        .await
                    {
                        Ok(()) | Err(domain::StoreError::NotFound) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(Outcome::DeadLettered)
            }
        }
    }

    async fn handle(&self, job: &Job) -> anyhow::Result<Outcome> {
        anyhow::ensure!(job.kind == PROCESS_PHOTO, "unknown job kind {:?}", job.kind);
        let p: ProcessPhoto = serde_json::from_slice(&job.payload).context("malformed payload")?;
        let id = PhotoId(p.photo_id);
        let b = &self.backends;
        let Some(photo) = b.store.photo(id).await? else {
            return Ok(Outcome::Skipped);
        };
        // Checked before the attempt budget: a slow last delivery may have
        // finished after its visibility timeout handed the job out again.
        if photo.status == PhotoStatus::Ready {
            return Ok(Outcome::Done);
        }
        if job.attempt > job.max_attempts {
            // The previous delivery never came back (the worker died in
            // it, e.g. on a poison image): stop here.
            anyhow::bail!("attempts exhausted by deliveries that never finished");
        }
        let original = b
            .blobs
            .get(&photo.original_key())
            .await?
            .context("original is missing from the blob store")?;
        let max_pixels = self.settings.max_pixels;
        // Decoding and filtering are CPU-bound: keep them off the reactor.
        let rendered = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(Variant, Vec<u8>)>> {
            let img = imaging::decode(&original, max_pixels)?;
            Variant::ALL
                .into_iter()
                .map(|v| Ok((v, imaging::render(&img, v)?)))
                .collect()
        })
        .await
        .context("render task panicked")??;
        for (variant, bytes) in rendered {
            b.blobs.put(&variant.blob_key(id), Bytes::from(bytes)).await?;
        }
        b.store.set_photo_status(id, PhotoStatus::Ready).await?;
        Ok(Outcome::Done)
    }

    /// Consumes jobs with `concurrency` loops until `shutdown` fires. A job
    /// in hand when it fires is finished before this returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let mut loops = Vec::new();
        for n in 0..self.settings.concurrency.max(1) {
            let worker = self.clone();
            let mut rx = rx.clone();
            loops.push(tokio::spawn(async move {
                let idle = Duration::from_millis(worker.settings.poll_ms);
                while !*rx.borrow() {
                    let pause = match worker.run_once().await {
                        Ok(Some(_)) => Duration::ZERO,
                        Ok(None) => idle,
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "worker loop error");
                            idle * 5
                        }
                    };
                    if !pause.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = rx.changed() => {}
                        }
                    }
                }
                tracing::info!(loop_index = n, "worker loop stopped");
            }));
        }
        for l in loops {
            let _ = l.await;
        }
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listen`.
    pub async fn serve_metrics(
        &self,
        listen: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let router = metrics::router(self.metrics.clone(), self.backends.clone());
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        }))
    }
}
