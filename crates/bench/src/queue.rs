//! `bench queue`: jobs per second through the job queue port's JetStream
//! adapter (`store_nats::NatsJobQueue`), or through a minimal raw
//! `async-nats` client on the same stream settings, so that the two side by
//! side measure the port's overhead (`scripts/bench-queue.sh`).
//!
//! One run creates a fresh queue (a unique name) and measures three phases
//! on it, one after the other:
//! - **enqueue**: `jobs` jobs published by `producers` concurrent tasks,
//!   each publish awaited until JetStream acknowledges it (the port's
//!   `enqueue`; raw: `publish_with_headers(..).await?.await?` with the same
//!   `Nats-Msg-Id` and kind headers the port sends). No consumer runs.
//! - **drain**: `consumers` tasks take and ack the jobs just enqueued until
//!   all are done (the port's `next` + `Delivery::ack`; raw: a durable pull
//!   consumer's `messages()` stream, `--batch` messages per pull request,
//!   each message acked with `double_ack`, the acknowledgement the server
//!   confirms, as the port's `ack` is).
//! - **end to end**: `jobs` more jobs published by the producers while the
//!   consumers take and ack them; jobs/s from the first publish to the last
//!   ack, and the latency of each job from just before its publish to its
//!   confirmed ack (the payload's first 8 bytes carry the publish time).
//!
//! Both modes use the same stream (work-queue retention, file storage,
//! `replicas` copies, a 2 minute dedup window, subjects `<name>.job.*`) and
//! the same durable consumer (`store_nats::workers_config`: explicit acks,
//! the default queue policy's ack wait, max deliveries and back-off), the
//! settings `NatsJobQueue` creates. Each mode shares one
//! client connection between its producers and consumers, as a process of
//! the application does. The queue's streams are deleted at the end.

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use domain::ports::JobQueue;
use domain::QueueConfig;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store_nats::NatsJobQueue;
use tokio::sync::Notify;

/// The job kind every benchmark job carries.
const KIND: &str = "bench.noop";
/// Header carrying the job's kind (the port's `Scalestack-Kind`).
const KIND_HEADER: &str = "Scalestack-Kind";
/// Bytes of the payload that carry the publish time.
const STAMP_BYTES: usize = 8;
/// How long a run may take in all before it is abandoned.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Which client the run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueMode {
    /// The job queue port: `store_nats::NatsJobQueue`.
    Port,
    /// A minimal raw `async-nats` publisher and pull consumer.
    Raw,
}

/// What each job costs its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueJob {
    /// Nothing: the queue's own cost.
    Noop,
    /// The photo job's work: decode a JPEG of `--photo-width` x
    /// `--photo-height` and render every variant (`imaging::render_all`,
    /// what the worker runs between reading the original and storing the
    /// variants), on the blocking pool.
    Photo,
}

/// Options of `bench queue`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueArgs {
    /// NATS URL, or several separated by commas (a cluster).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// The port (`NatsJobQueue`) or a raw `async-nats` client.
    #[arg(long, value_enum, default_value_t = QueueMode::Port)]
    pub mode: QueueMode,
    /// Jobs per phase (enqueue then drain; end to end publishes as many again).
    #[arg(long, default_value_t = 20_000, value_parser = crate::parse_at_least_one_u64)]
    pub jobs: u64,
    /// Payload bytes per job (at least 8: the publish time rides in it).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Concurrent producer tasks.
    #[arg(long, default_value_t = 8, value_parser = crate::parse_at_least_one)]
    pub producers: usize,
    /// Concurrent consumer tasks.
    #[arg(long, default_value_t = 8, value_parser = crate::parse_at_least_one)]
    pub consumers: usize,
    /// Copies of the stream the run creates (1 to 5; 3 on a three-node cluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Raw mode: messages per pull request of each consumer's `messages()`
    /// stream (async-nats's default is 200). Ignored by the port, whose
    /// pulls are sized by its callers.
    #[arg(long, default_value_t = 200, value_parser = crate::parse_at_least_one)]
    pub batch: usize,
    /// The work each job costs its consumer, the same in both modes.
    #[arg(long, value_enum, default_value_t = QueueJob::Noop)]
    pub job: QueueJob,
    /// Width of the photo job's JPEG.
    #[arg(long, default_value_t = 1600, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub photo_width: u32,
    /// Height of the photo job's JPEG.
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub photo_height: u32,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    pub json: bool,
}

/// What `bench queue` reports; `--json` prints exactly these fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueReport {
    /// The client measured.
    pub mode: QueueMode,
    /// The work of each job.
    pub job: QueueJob,
    /// Jobs per phase.
    pub jobs: u64,
    /// Payload bytes per job.
    pub payload: usize,
    /// Producer tasks.
    pub producers: usize,
    /// Consumer tasks.
    pub consumers: usize,
    /// Stream copies.
    pub replicas: usize,
    /// Raw mode's messages per pull request (`null` for the port).
    pub batch: Option<usize>,
    /// Enqueue phase: jobs acknowledged by JetStream per second.
    pub enqueue_jobs_per_s: f64,
    /// Drain phase: jobs taken and acked per second from a full queue.
    pub drain_jobs_per_s: f64,
    /// End to end phase: jobs per second from the first publish to the last ack.
    pub e2e_jobs_per_s: f64,
    /// End to end phase: median latency from publish to confirmed ack, microseconds.
    pub e2e_p50_us: u64,
    /// End to end phase: 99th percentile of that latency, microseconds.
    pub e2e_p99_us: u64,
}

impl std::fmt::Display for QueueReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mode {:?}, job {:?}: {} jobs of {} B, {} producers, {} consumers, {} replica(s)",
            self.mode, self.job, self.jobs, self.payload, self.producers, self.consumers, self.replicas
        )?;
        writeln!(f, "  enqueue     {:>10.0} jobs/s", self.enqueue_jobs_per_s)?;
        writeln!(f, "  drain       {:>10.0} jobs/s", self.drain_jobs_per_s)?;
        write!(
            f,
            "  end to end  {:>10.0} jobs/s  p50 {:.3} ms  p99 {:.3} ms",
            self.e2e_jobs_per_s,
            self.e2e_p50_us as f64 / 1000.0,
            self.e2e_p99_us as f64 / 1000.0
        )
    }
}

impl QueueArgs {
    /// Checks the options that clap's parsers do not.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.payload >= STAMP_BYTES,
            "--payload must be at least {STAMP_BYTES} bytes (the publish time rides in it)"
        );
        anyhow::ensure!(
            (1..=5).contains(&self.replicas),
            "--replicas must be 1 to 5, not {}",
            self.replicas
        );
        Ok(())
    }
}

/// Runs `bench queue`; builds its own runtime, so call it from outside any.
pub fn run_queue(args: &QueueArgs) -> anyhow::Result<()> {
    args.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let report = runtime.block_on(async {
        tokio::time::timeout(RUN_TIMEOUT, measure(args))
            .await
            .map_err(|_| anyhow::anyhow!("the run took longer than {RUN_TIMEOUT:?}"))?
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// A fresh queue name: the mode, the process id and the time, so repeated
/// runs on one server never share a stream.
fn queue_name(mode: QueueMode) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let mode = match mode {
        QueueMode::Port => "port",
        QueueMode::Raw => "raw",
    };
    format!("bench_{mode}_{}_{micros}", std::process::id())
}

/// A payload of `len` bytes whose first 8 carry `stamp` (little endian).
fn stamped_payload(len: usize, stamp: u64) -> Vec<u8> {
    let mut payload = vec![b'x'; len.max(STAMP_BYTES)];
    payload[..STAMP_BYTES].copy_from_slice(&stamp.to_le_bytes());
    payload
}

/// The stamp a payload carries (`None` if it is too short).
fn stamp_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..STAMP_BYTES)?.try_into().ok()?))
}

/// Jobs per second (0 for an empty interval).
fn per_second(jobs: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        jobs as f64 / secs
    } else {
        0.0
    }
}

/// What one mode does: publish a job, run a consumer until told to stop.
#[derive(Clone)]
enum Client {
    Port(NatsJobQueue),
    Raw(Box<Raw>),
}

/// The raw client: one connection, the stream and its durable consumer.
#[derive(Clone)]
struct Raw {
    name: String,
    context: jetstream::Context,
    consumer: consumer::PullConsumer,
    next_id: Arc<AtomicU64>,
    batch: usize,
}

/// Shared by a phase's consumers: jobs acked, when to stop, latencies.
struct Progress {
    target: u64,
    acked: AtomicU64,
    done: Notify,
    epoch: Instant,
    latency: Mutex<Histogram<u64>>,
}

impl Progress {
    fn new(target: u64, epoch: Instant) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Progress {
            target,
            acked: AtomicU64::new(0),
            done: Notify::new(),
            epoch,
            // 1 µs to 1 h: `saturating_record` clamps rather than resizes.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).context("latency histogram")?,
            ),
        }))
    }

    /// Counts one confirmed ack of a job with `payload`; wakes the phase
    /// when the target is reached.
    fn acked(&self, payload: &[u8]) {
        if let Some(stamp) = stamp_of(payload) {
            let now = self.epoch.elapsed().as_nanos() as u64;
            let micros = now.saturating_sub(stamp) / 1000;
            if let Ok(mut h) = self.latency.lock() {
                h.saturating_record(micros.max(1));
            }
        }
        if self.acked.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
    }
}

async fn connect(args: &QueueArgs, name: &str) -> anyhow::Result<(Client, jetstream::Context)> {
    match args.mode {
        QueueMode::Port => {
            let queue = NatsJobQueue::connect_with(&args.url, name, QueueConfig::default(), args.replicas)
                .await
                .context("opening the port's queue")?;
            // A second connection, only to delete the streams at the end.
            let admin = jetstream::new(
                async_nats::connect(&args.url)
                    .await
                    .with_context(|| format!("connecting to {}", args.url))?,
            );
            Ok((Client::Port(queue), admin))
        }
        QueueMode::Raw => {
            let client = async_nats::connect(&args.url)
                .await
                .with_context(|| format!("connecting to {}", args.url))?;
            let context = jetstream::new(client);
            // The settings NatsJobQueue::connect_with creates.
            let work = context
                .get_or_create_stream(stream::Config {
                    name: name.to_owned(),
                    subjects: vec![format!("{name}.job.*")],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    num_replicas: args.replicas,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .context("creating the stream")?;
            let consumer = work
                .create_consumer(store_nats::workers_config(name, &QueueConfig::default()))
                .await
                .context("creating the consumer")?;
            let raw = Raw {
                name: name.to_owned(),
                context: context.clone(),
                consumer,
                next_id: Arc::new(AtomicU64::new(1)),
                batch: args.batch,
            };
            Ok((Client::Raw(Box::new(raw)), context))
        }
    }
}

impl Client {
    /// Publishes one job and waits for JetStream's acknowledgement.
    async fn publish(&self, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Client::Port(queue) => {
                queue.enqueue(KIND, &payload).await.context("enqueue")?;
            }
            Client::Raw(raw) => {
                let id = raw.next_id.fetch_add(1, Ordering::Relaxed);
                let mut headers = HeaderMap::new();
                headers.insert(KIND_HEADER, KIND);
                headers.insert("Nats-Msg-Id", id.to_string().as_str());
                raw.context
                    .publish_with_headers(format!("{}.job.{id}", raw.name), headers, payload.into())
                    .await
                    .context("publish")?
                    .await
                    .context("publish ack")?;
            }
        }
        Ok(())
    }

    /// Takes jobs, does their `work` and acks them, forever (the phase
    /// aborts it when done).
    async fn consume(self, current: Current, work: Work) -> anyhow::Result<()> {
        let progress = || current.lock().map(|p| p.clone()).ok();
        match self {
            Client::Port(queue) => loop {
                if let Some(delivery) = queue.next().await.context("next")? {
                    work.run().await?;
                    delivery.ack().await.context("ack")?;
                    if let Some(p) = progress() {
                        p.acked(&delivery.job().payload);
                    }
                }
            },
            Client::Raw(raw) => {
                let mut messages = raw
                    .consumer
                    .stream()
                    .max_messages_per_batch(raw.batch)
                    .messages()
                    .await
                    .context("pulling")?;
                while let Some(message) = messages.next().await {
                    let message = message.map_err(|e| anyhow::anyhow!("pulling: {e}"))?;
                    work.run().await?;
                    message
                        .double_ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                    if let Some(p) = progress() {
                        p.acked(&message.payload);
                    }
                }
                anyhow::bail!("the pull stream ended")
            }
        }
    }
}

/// The work of one job (see [`QueueJob`]).
#[derive(Clone)]
enum Work {
    Noop,
    /// The JPEG to render.
    Photo(Arc<Vec<u8>>),
}

impl Work {
    async fn run(&self) -> anyhow::Result<()> {
        if let Work::Photo(original) = self {
            let original = original.clone();
            tokio::task::spawn_blocking(move || imaging::render_all(&original, u64::MAX))
                .await
                .context("render task")?
                .context("rendering the photo")?;
        }
        Ok(())
    }
}

/// Publishes `jobs` jobs from `producers` tasks, each taking the next
/// number until none is left; the payload stamped with the time since
/// `epoch`.
async fn produce(client: &Client, args: &QueueArgs, epoch: Instant) -> anyhow::Result<()> {
    let taken = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.producers {
        let (client, taken, jobs, len) = (client.clone(), taken.clone(), args.jobs, args.payload);
        tasks.spawn(async move {
            while taken.fetch_add(1, Ordering::Relaxed) < jobs {
                let stamp = epoch.elapsed().as_nanos() as u64;
                client.publish(stamped_payload(len, stamp)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("producer task")??;
    }
    Ok(())
}

/// The phase the consumers count for: swapped between phases, read at
/// each ack (a job of the next phase cannot arrive before the swap).
type Current = Arc<Mutex<Arc<Progress>>>;

/// Waits until `progress` reaches its target, or fails if a consumer does.
async fn wait_done(
    progress: &Progress,
    consumers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let done = progress.done.notified();
    tokio::pin!(done);
    if progress.acked.load(Ordering::Relaxed) >= progress.target {
        return Ok(());
    }
    tokio::select! {
        _ = &mut done => Ok(()),
        failed = consumers.join_next() => match failed {
            Some(Ok(Err(e))) => Err(e.context("consumer")),
            Some(Err(e)) => Err(anyhow::Error::new(e).context("consumer task")),
            _ => anyhow::bail!("a consumer stopped"),
        },
    }
}

/// Creates the queue, runs the three phases, deletes the streams.
async fn measure(args: &QueueArgs) -> anyhow::Result<QueueReport> {
    let name = queue_name(args.mode);
    let (client, admin) = connect(args, &name).await?;
    let result = phases(&client, args).await;
    // Best effort: a failed run still tries to leave the server clean.
    for stream in [name.clone(), format!("{name}_DEAD"), format!("{name}_SPENT")] {
        let _ = admin.delete_stream(&stream).await;
    }
    result
}

async fn phases(client: &Client, args: &QueueArgs) -> anyhow::Result<QueueReport> {
    let work = match args.job {
        QueueJob::Noop => Work::Noop,
        QueueJob::Photo => Work::Photo(Arc::new(imaging::samples::jpeg(
            args.photo_width,
            args.photo_height,
        ))),
    };
    let epoch = Instant::now();

    let start = Instant::now();
    produce(client, args, epoch).await?;
    let enqueue = start.elapsed();

    // The consumers run through both next phases: stopping a raw pull
    // stream in between would leave its pull requests open on the server,
    // which could hand the next phase's jobs to nobody.
    let drain_progress = Progress::new(args.jobs, epoch)?;
    let current: Current = Arc::new(Mutex::new(drain_progress.clone()));
    let mut consumers = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..args.consumers {
        consumers.spawn(client.clone().consume(current.clone(), work.clone()));
    }
    let drained = wait_done(&drain_progress, &mut consumers).await;
    let drain = start.elapsed();
    if let Err(e) = drained {
        consumers.abort_all();
        return Err(e);
    }

    let e2e_progress = Progress::new(args.jobs, epoch)?;
    *current
        .lock()
        .map_err(|_| anyhow::anyhow!("phase lock poisoned"))? = e2e_progress.clone();
    let start = Instant::now();
    let producing = {
        let (client, args) = (client.clone(), args.clone());
        tokio::spawn(async move { produce(&client, &args, epoch).await })
    };
    let finished = wait_done(&e2e_progress, &mut consumers).await;
    let e2e = start.elapsed();
    consumers.abort_all();
    finished?;
    producing.await.context("producers")??;

    let latency = e2e_progress
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency histogram poisoned"))?
        .clone();
    Ok(QueueReport {
        mode: args.mode,
        job: args.job,
        jobs: args.jobs,
        payload: args.payload,
        producers: args.producers,
        consumers: args.consumers,
        replicas: args.replicas,
        batch: (args.mode == QueueMode::Raw).then_some(args.batch),
        enqueue_jobs_per_s: per_second(args.jobs, enqueue),
        drain_jobs_per_s: per_second(args.jobs, drain),
        e2e_jobs_per_s: per_second(args.jobs, e2e),
        e2e_p50_us: latency.value_at_quantile(0.5),
        e2e_p99_us: latency.value_at_quantile(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_its_stamp() {
        let p = stamped_payload(64, 123_456_789);
        assert_eq!(p.len(), 64);
        assert_eq!(stamp_of(&p), Some(123_456_789));
        assert_eq!(stamp_of(&p[..7]), None);
        // Never shorter than the stamp.
        assert_eq!(stamped_payload(0, 5).len(), STAMP_BYTES);
    }

    #[test]
    fn rates_of_empty_intervals_are_zero() {
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
        assert_eq!(per_second(10, Duration::from_millis(500)), 20.0);
    }

    #[test]
    fn queue_names_are_valid_and_distinct() {
        let a = queue_name(QueueMode::Port);
        let b = queue_name(QueueMode::Raw);
        assert_ne!(a, b);
        for n in [a, b] {
            assert!(n.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'), "{n}");
        }
    }

    #[test]
    fn options_are_checked() {
        let mut args = QueueArgs {
            url: "nats://127.0.0.1:4222".into(),
            mode: QueueMode::Raw,
            jobs: 10,
            payload: 8,
            producers: 1,
            consumers: 1,
            replicas: 3,
            batch: 1,
            job: QueueJob::Noop,
            photo_width: 16,
            photo_height: 16,
            json: false,
        };
        assert!(args.validate().is_ok());
        args.payload = 7;
        assert!(args.validate().is_err());
        args.payload = 8;
        args.replicas = 6;
        assert!(args.validate().is_err());
    }
}
