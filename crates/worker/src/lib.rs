//! `scalestack worker`: claims photo jobs from the queue, renders the
//! variants into the blob store and marks the photo `ready`.
//!
//! Delivery is at least once, so handling is idempotent: variants are
//! overwritten with the same bytes, a photo already `ready` is acknowledged
//! without work, a photo that no longer exists is acknowledged and skipped.
//! A job that keeps failing is retried with the queue's back-off and
//! dead-lettered after its attempts, and its photo ends `failed`; a job that
//! crashed its worker (its ack wait ran out) counts that delivery as an
//! attempt, so a poison image cannot crash-loop the tier. While a job
//! renders, the worker tells the queue it is in progress, so a render longer
//! than the ack wait is not handed to a second worker.

mod metrics;

pub use metrics::WorkerMetrics;

use anyhow::Context;
use backends::{Backends, BackendsConfig, QueueTier};
use bytes::Bytes;
use domain::jobs::{ProcessPhoto, PROCESS_PHOTO};
use domain::ports::Delivery;
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
    /// Former home of the queue's ack wait (how long a delivered job stays
    /// hidden from other workers), kept so that existing files load: when
    /// set, it overrides `[queue] ack_wait_ms` for this worker's deliveries.
    /// Default unset (the queue's ack wait, 120 s unless configured).
    #[serde(default)]
    pub visibility_secs: Option<u64>,
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
            visibility_secs: None,
            poll_ms: default_poll_ms(),
            max_pixels: default_max_pixels(),
        }
    }
}

impl WorkerConfig {
    /// The backends to connect: `backends`, with the queue's ack wait
    /// replaced by the deprecated `settings.visibility_secs` if that is set.
    pub fn backends_with_ack_wait(&self) -> BackendsConfig {
        let mut backends = self.backends.clone();
        if let Some(secs) = self.settings.visibility_secs {
            let QueueTier::Embedded { config } = &mut backends.queue;
            config.ack_wait_ms = secs.saturating_mul(1000);
        }
        backends
    }
}

/// A failure that retrying cannot mend: the delivery is terminated (the job
/// dead-lettered now) instead of nacked.
#[derive(Debug)]
struct Permanent(&'static str);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Permanent {}

/// Runs `work`, telling the queue that `delivery` is in progress three
/// times per ack wait meanwhile, so a job that takes longer than the ack
/// wait is not delivered to another worker while this one is on it. A
/// failed report is logged and the work goes on (if the job is delivered
/// again meanwhile, this delivery's settlement is fenced off).
async fn in_progress_while<T>(delivery: &Delivery, work: impl Future<Output = T>) -> T {
    let period = delivery.ack_wait() / 3;
    if period.is_zero() {
        return work.await;
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticks.tick() => {
                if let Err(e) = delivery.in_progress().await {
                    tracing::warn!(error = %e, "could not report the job in progress");
                }
            }
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
    /// one outlived its ack wait): left to that one.
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

    /// Connects the backends of `config` (with the queue's ack wait taken
    /// from the deprecated `visibility_secs`, if set).
    pub async fn build(config: &WorkerConfig) -> anyhow::Result<Self> {
        let backends = Backends::connect(&config.backends_with_ack_wait()).await?;
        Ok(Worker::new(backends, config.settings.clone()))
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &Arc<WorkerMetrics> {
        &self.metrics
    }

    /// Takes and handles at most one job; `None` when the queue was empty.
    pub async fn run_once(&self) -> anyhow::Result<Option<Outcome>> {
        let Some(delivery) = self.backends.queue.next().await? else {
            return Ok(None);
        };
        let job = delivery.job();
        let span = tracing::info_span!("job", job_id = job.id, kind = %job.kind, attempt = job.attempt);
        let _enter = span.enter();
        // The job was enqueued right after its photo was written, perhaps
        // on a primary whose replicas have not replayed it yet.
        let work = domain::consistency::scope(Some(domain::consistency::PRIMARY_ONLY), self.handle(job));
        let (handled, _) = in_progress_while(&delivery, work).await;
        let outcome = match handled {
            Ok(outcome) => {
                delivery.ack().await?;
                tracing::info!(?outcome, "job done");
                outcome
            }
            Err(e) => {
                let error = format!("{e:#}");
                let settled = if e.is::<Permanent>() {
                    delivery.terminate(&error).await?
                } else {
                    delivery.nack(&error, None).await?
                };
                self.failed(job, &error, settled).await?
            }
        };
        self.metrics.job(outcome);
        Ok(Some(outcome))
    }

    /// What a failure of `job`, `settled` with the queue, comes to.
    async fn failed(&self, job: &Job, error: &str, settled: NackOutcome) -> anyhow::Result<Outcome> {
        match settled {
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
                if let Ok(p) = ProcessPhoto::from_payload(&job.payload) {
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
        let p = ProcessPhoto::from_payload(&job.payload).context("malformed payload")?;
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
            return Err(Permanent("attempts exhausted by deliveries that never finished").into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_former_visibility_key_still_sets_the_ack_wait() {
        let old: WorkerConfig = serde_json::from_str(
            r#"{"metrics_listen": "127.0.0.1:9201", "settings": {"concurrency": 2, "visibility_secs": 30}}"#,
        )
        .unwrap();
        assert_eq!(old.settings.visibility_secs, Some(30));
        let QueueTier::Embedded { config } = old.backends_with_ack_wait().queue;
        assert_eq!(config.ack_wait_ms, 30_000);

        let new: WorkerConfig = serde_json::from_str(
            r#"{"metrics_listen": "127.0.0.1:9201", "backends": {"queue": {"kind": "embedded", "ack_wait_ms": 5000}}}"#,
        )
        .unwrap();
        assert_eq!(new.settings, WorkerSettings::default());
        assert_eq!(
            new.backends_with_ack_wait(),
            new.backends,
            "unset: the queue's own"
        );
        let QueueTier::Embedded { config } = new.backends.queue;
        assert_eq!(config.ack_wait_ms, 5000);
    }
}
