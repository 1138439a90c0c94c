//! `scalestack worker`: claims photo jobs from the queue, renders the
//! variants into the blob store and marks the photo `ready`.
//!
//! Delivery is at least once, so handling is idempotent: variants are
//! overwritten with the same bytes, a photo already `ready` is acknowledged
//! without work, a photo that no longer exists is acknowledged and skipped.
//! A photo deleted while its job renders leaves no variant behind: marking
//! it `ready` is the last step, and when that finds the row gone the worker
//! removes the variants it wrote (the web tier's delete may have removed
//! the photo's blobs before they were written).
//! A job that keeps failing is retried with the queue's back-off and
//! dead-lettered after its attempts, and its photo ends `failed`; a job that
//! crashed its worker (its ack wait ran out) counts that delivery as an
//! attempt, so a poison image cannot crash-loop the tier. While a job
//! renders, the worker tells the queue it is in progress, so a render longer
//! than the ack wait is not handed to a second worker.

mod metrics;

pub use metrics::WorkerMetrics;

use anyhow::Context;
use backends::{Backends, BackendsConfig};
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
use tracing::Instrument;

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
    /// Age after which a photo still `processing` without a recorded job is
    /// a stalled upload (its web server died between the row and the job),
    /// which the reconciler finishes. Longer than any upload takes. Default
    /// 600 s.
    #[serde(default = "default_stalled_upload_secs")]
    pub stalled_upload_secs: u64,
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
fn default_stalled_upload_secs() -> u64 {
    600
}

/// How often each worker process looks for stalled uploads.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);
/// Most stalled uploads one round finishes.
const RECONCILE_BATCH: usize = 100;

/// What one round of the reconciler did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Photos whose original was stored: given their job.
    pub requeued: usize,
    /// Photos without an original: removed (their upload never completed).
    pub removed: usize,
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
            stalled_upload_secs: default_stalled_upload_secs(),
        }
    }
}

impl WorkerConfig {
    /// The backends to connect: `backends`, with the queue's ack wait
    /// replaced by the deprecated `settings.visibility_secs` if that is set.
    pub fn backends_with_ack_wait(&self) -> BackendsConfig {
        let mut backends = self.backends.clone();
        if let Some(secs) = self.settings.visibility_secs {
            backends.queue.config_mut().ack_wait_ms = secs.saturating_mul(1000);
        }
        backends
    }
}

/// A failure that retrying cannot mend: the delivery is terminated (the job
/// dead-lettered now) instead of nacked.
#[derive(Debug)]
struct Permanent(String);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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
    /// Nothing to do: the photo no longer exists (deleted before the job,
    /// or while it rendered: whatever it wrote is removed).
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
        // The uploading request's id, so `ctl logs --request-id` follows
        // it here.
        let request_id = (job.kind == domain::jobs::PROCESS_PHOTO)
            .then(|| ProcessPhoto::from_payload(&job.payload).ok()?.request_id)
            .flatten()
            .unwrap_or_default();
        let span = tracing::info_span!("job", job_id = job.id, kind = %job.kind, attempt = job.attempt, request_id = %request_id);
        // Instrumented, not entered: a span entered across an await would
        // label whatever else runs on this thread meanwhile (the requests
        // of a web server sharing the runtime, in tests) with this job.
        self.settle(&delivery).instrument(span).await
    }

    /// Handles the job of `delivery` and settles it with the queue.
    async fn settle(&self, delivery: &Delivery) -> anyhow::Result<Option<Outcome>> {
        let job = delivery.job();
        // The job was enqueued right after its photo was written, perhaps
        // on a primary whose replicas have not replayed it yet.
        let work = domain::consistency::scope(Some(domain::consistency::PRIMARY_ONLY), self.handle(job));
        let (handled, _) = in_progress_while(delivery, work).await;
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
        if job.kind != PROCESS_PHOTO {
            return Err(Permanent(format!("unknown job kind {:?}", job.kind)).into());
        }
        let p = ProcessPhoto::from_payload(&job.payload)
            .map_err(|e| Permanent(format!("malformed payload: {e}")))?;
        let id = PhotoId(p.photo_id);
        let b = &self.backends;
        let Some(photo) = b.store.photo(id).await? else {
            // Deleted. An earlier delivery may have written variants after
            // the web tier removed the photo's blobs and then died before
            // it could clean up: removing them again is harmless (ids are
            // never reused) and leaves nothing behind.
            self.remove_variants(id).await?;
            return Ok(Outcome::Skipped);
        };
        // Checked before the attempt budget: a slow earlier delivery may
        // have finished after its ack wait handed the job out again.
        if photo.status == PhotoStatus::Ready {
            return Ok(Outcome::Done);
        }
        if job.attempt > job.max_attempts {
            // The queue's delivery past the budget: the last one never came
            // back (the worker died in it, e.g. on a poison image). Do not
            // run it again: fail the photo and dead-letter the job.
            return Err(Permanent("attempts exhausted by deliveries that never finished".into()).into());
        }
        let Some(original) = b.blobs.get(&photo.original_key()).await? else {
            // The web tier deletes the row first, then the blobs: a missing
            // original with the row gone now is a deletion, not a failure.
            if b.store.photo(id).await?.is_none() {
                return Ok(Outcome::Skipped);
            }
            anyhow::bail!("original is missing from the blob store");
        };
        let max_pixels = self.settings.max_pixels;
        // Decoding and filtering are CPU-bound: keep them off the reactor.
        let rendered = tokio::task::spawn_blocking(move || imaging::render_all(&original, max_pixels))
            .await
            .context("render task panicked")??;
        for (variant, bytes) in rendered {
            b.blobs.put(&variant.blob_key(id), Bytes::from(bytes)).await?;
        }
        match b.store.set_photo_status(id, PhotoStatus::Ready).await {
            Ok(()) => Ok(Outcome::Done),
            Err(domain::StoreError::NotFound) => {
                // Deleted while rendering: the delete may have removed the
                // photo's blobs before these were written, so they are this
                // worker's to remove. (A failure here is retried: the next
                // delivery finds the photo gone and removes them.)
                tracing::info!(
                    photo_id = id.0,
                    "photo deleted while rendering; removing its variants"
                );
                self.remove_variants(id).await?;
                Ok(Outcome::Skipped)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every variant of photo `id` (missing ones are no error).
    async fn remove_variants(&self, id: PhotoId) -> anyhow::Result<()> {
        for variant in Variant::ALL {
            self.backends.blobs.delete(&variant.blob_key(id)).await?;
        }
        Ok(())
    }

    /// Finishes the uploads that stalled before `before_ms`: photos still
    /// `processing` without a recorded job, whose web server died between
    /// the photo's row and its job (it never answered 202), or could not
    /// record the job's id. One whose original is stored gets a job (a
    /// second one, if its first exists unrecorded, is harmless: the worker
    /// is idempotent); one without an original never finished uploading and
    /// is removed.
    pub async fn reconcile_stalled_uploads(&self, before_ms: i64) -> anyhow::Result<Reconciled> {
        let b = &self.backends;
        let mut done = Reconciled::default();
        for photo in b.store.stalled_uploads(before_ms, RECONCILE_BATCH).await? {
            let id = photo.id;
            if b.blobs.get(&photo.original_key()).await?.is_some() {
                let payload = ProcessPhoto {
                    photo_id: id.0,
                    request_id: None,
                }
                .to_payload();
                let job = b.queue.enqueue(PROCESS_PHOTO, &payload).await?;
                match b.store.record_photo_job(id, job).await {
                    Ok(()) => done.requeued += 1,
                    // Deleted meanwhile by its owner.
                    Err(domain::StoreError::NotFound) => {
                        b.queue.cancel(job).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
                tracing::warn!(
                    photo_id = id.0,
                    job_id = job,
                    "stalled upload: its job was missing, enqueued now"
                );
            } else {
                b.store.delete_photo(id).await?;
                done.removed += 1;
                tracing::warn!(photo_id = id.0, "stalled upload without its original: removed");
            }
        }
        self.metrics.reconciled(done);
        Ok(done)
    }

    /// Runs [`Worker::reconcile_stalled_uploads`] every minute (the first
    /// round after a random part of it, so workers started together spread
    /// out), for uploads older than `stalled_upload_secs`.
    async fn reconcile_forever(self) {
        let spread = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| f64::from(d.subsec_nanos()) / 1e9)
            .unwrap_or(0.5);
        let mut pause = RECONCILE_EVERY.mul_f64(spread);
        loop {
            tokio::time::sleep(pause).await;
            pause = RECONCILE_EVERY;
            let grace =
                i64::try_from(self.settings.stalled_upload_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            let before = domain::now_millis().saturating_sub(grace);
            if let Err(e) = self.reconcile_stalled_uploads(before).await {
                tracing::warn!(error = %format!("{e:#}"), "reconciling stalled uploads");
            }
        }
    }

    /// Consumes jobs with `concurrency` loops until `shutdown` fires. A job
    /// in hand when it fires is finished before this returns. Meanwhile the
    /// reconciler finishes stalled uploads.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let reconciler = tokio::spawn(self.clone().reconcile_forever());
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
        reconciler.abort();
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
    use async_trait::async_trait;
    use backends::QueueConfig;
    use domain::ports::BlobStore;
    use domain::{BackendError, BlobKey, NewPhoto, Username};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::sync::{Notify, Semaphore};

    /// The real blob store, with a gate that holds the first variant write
    /// until the test opens it (so a delete can land mid-job, exactly there).
    struct Gated {
        inner: Arc<dyn BlobStore>,
        variant_puts: AtomicUsize,
        reached: Notify,
        open: Semaphore,
    }

    #[async_trait]
    impl BlobStore for Gated {
        async fn put(&self, key: &BlobKey, bytes: Bytes) -> Result<(), BackendError> {
            if key.as_str().starts_with("variants/") && self.variant_puts.fetch_add(1, SeqCst) == 0 {
                self.reached.notify_one();
                let _ = self.open.acquire().await.expect("never closed");
            }
            self.inner.put(key, bytes).await
        }
        async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, BackendError> {
            self.inner.get(key).await
        }
        async fn delete(&self, key: &BlobKey) -> Result<(), BackendError> {
            self.inner.delete(key).await
        }
    }

    /// Embedded backends in `dir` whose blob store is [`Gated`].
    async fn gated_backends(dir: &tempfile::TempDir) -> (Backends, Arc<Gated>) {
        let config = BackendsConfig {
            data_dir: dir.path().to_path_buf(),
            queue: backends::QueueTier::Embedded {
                config: QueueConfig::default(),
            },
            ..Default::default()
        };
        let real = Backends::connect(&config).await.unwrap();
        let gated = Arc::new(Gated {
            inner: real.blobs.clone(),
            variant_puts: AtomicUsize::new(0),
            reached: Notify::new(),
            open: Semaphore::new(0),
        });
        let backends = Backends {
            blobs: gated.clone(),
            ..real
        };
        (backends, gated)
    }

    /// A photo stored as the web tier stores it: row, original, job, and
    /// the job recorded on the row.
    async fn upload(b: &Backends) -> PhotoId {
        let name = Username::parse("owner").unwrap();
        let owner = match b.store.user_by_name(&name).await.unwrap() {
            Some(u) => u.id,
            None => b.store.create_user(&name, "h").await.unwrap(),
        };
        let photo = b
            .store
            .create_photo(&NewPhoto {
                owner_id: owner,
                caption: None,
                format: domain::ImageFormat::Jpeg,
                width: 64,
                height: 48,
            })
            .await
            .unwrap();
        let bytes = Bytes::from(imaging::samples::jpeg(64, 48));
        b.blobs.put(&photo.original_key(), bytes).await.unwrap();
        let payload = ProcessPhoto {
            photo_id: photo.id.0,
            request_id: None,
        }
        .to_payload();
        let job = b.queue.enqueue(PROCESS_PHOTO, &payload).await.unwrap();
        b.store.record_photo_job(photo.id, job).await.unwrap();
        photo.id
    }

    /// The web tier's delete, in its order: the row, the jobs, the blobs.
    async fn delete(b: &Backends, id: PhotoId) {
        let gone = b.store.delete_photo(id).await.unwrap().expect("it existed");
        for job in &gone.jobs {
            b.queue.cancel(*job).await.unwrap();
        }
        for key in gone.blob_keys() {
            b.blobs.delete(&key).await.unwrap();
        }
    }

    async fn blobs_of(b: &Backends, id: PhotoId) -> Vec<String> {
        let mut keys = vec![domain::original_key(id, domain::ImageFormat::Jpeg)];
        keys.extend(Variant::ALL.into_iter().map(|v| v.blob_key(id)));
        let mut left = vec![];
        for key in keys {
            if b.blobs.get(&key).await.unwrap().is_some() {
                left.push(key.as_str().to_owned());
            }
        }
        left
    }

    #[tokio::test]
    async fn a_photo_deleted_while_rendering_leaves_no_variant_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (b, gate) = gated_backends(&dir).await;
        let id = upload(&b).await;
        let w = Worker::new(b.clone(), WorkerSettings::default());
        let run = tokio::spawn({
            let w = w.clone();
            async move { w.run_once().await.unwrap() }
        });
        // The worker has rendered and is about to write its first variant.
        gate.reached.notified().await;
        delete(&b, id).await;
        assert!(blobs_of(&b, id).await.is_empty());
        // It writes every variant after the delete removed the blobs...
        gate.open.add_permits(1);
        assert_eq!(run.await.unwrap(), Some(Outcome::Skipped));
        assert_eq!(gate.variant_puts.load(SeqCst), Variant::ALL.len());
        // ...and removes them once it finds the row gone.
        assert_eq!(blobs_of(&b, id).await, Vec::<String>::new(), "orphan blobs");
        assert!(b.store.photo(id).await.unwrap().is_none(), "not brought back");
        assert_eq!(b.queue.depth().await.unwrap(), Default::default());
        assert_eq!(w.metrics().jobs("skipped"), 1);
    }

    #[tokio::test]
    async fn a_job_whose_photo_is_gone_is_acked_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (b, gate) = gated_backends(&dir).await;
        let w = Worker::new(b.clone(), WorkerSettings::default());
        // The row goes, but the job stays (its cancellation failed, or it
        // was never recorded on the row).
        let id = upload(&b).await;
        b.store.delete_photo(id).await.unwrap().expect("it existed");
        assert_eq!(w.run_once().await.unwrap(), Some(Outcome::Skipped));
        assert_eq!(b.queue.depth().await.unwrap(), Default::default(), "acked");
        // Row and original gone, job still there: skipped too, not retried
        // as a missing original.
        let id = upload(&b).await;
        let gone = b.store.delete_photo(id).await.unwrap().expect("it existed");
        for key in gone.blob_keys() {
            b.blobs.delete(&key).await.unwrap();
        }
        assert_eq!(w.run_once().await.unwrap(), Some(Outcome::Skipped));
        assert_eq!(b.queue.depth().await.unwrap(), Default::default(), "acked");
        // And a cancelled job is never delivered at all.
        let id = upload(&b).await;
        delete(&b, id).await;
        assert_eq!(w.run_once().await.unwrap(), None);

        assert_eq!(gate.variant_puts.load(SeqCst), 0, "nothing was written");
        assert_eq!(w.metrics().jobs("skipped"), 2);
    }

    #[test]
    fn the_former_visibility_key_still_sets_the_ack_wait() {
        let old: WorkerConfig = serde_json::from_str(
            r#"{"metrics_listen": "127.0.0.1:9201", "settings": {"concurrency": 2, "visibility_secs": 30}}"#,
        )
        .unwrap();
        assert_eq!(old.settings.visibility_secs, Some(30));
        let config = old.backends_with_ack_wait().queue.config();
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
        let config = new.backends.queue.config();
        assert_eq!(config.ack_wait_ms, 5000);
    }
}
