//! A transactional outbox in front of a broker: nothing is lost between the
//! SQL store and NATS.
//!
//! An upload writes its photo row, then its job. With the job in another
//! system, a crash or a broker outage between the two would leave the photo
//! `processing` forever. So a producer never talks to the broker: its
//! `enqueue` is a row in the SQL store's queue table (the same database as
//! the photo, committed before the upload is answered; it succeeds while
//! NATS is down), and a relay in every process that holds the tier moves
//! rows to the broker:
//!
//! 1. claim a row with the SQL queue's own lease (`next`: one relay per row;
//!    the lease of a relay that died runs out and another takes the row);
//! 2. publish it to JetStream with the row's id as the job's id and as its
//!    `Nats-Msg-Id`: a relay that published and died before step 3 is
//!    republished by the next one inside the broker's 2-minute dedup window
//!    (the lease, 30 s, is shorter), and stored once;
//! 3. ack the row (deleted from the table).
//!
//! While the broker is unreachable the relay keeps the row, retries with a
//! doubling back-off (100 ms to 5 s) and extends its lease meanwhile; rows
//! never die in the outbox (its attempt budget is unlimited). A relay is
//! woken at once by its own process's enqueues, and looks for other
//! processes' rows (a relay that died) every 500 ms.
//!
//! Consumers (`next`, `cancel`, `depth`, dead jobs) talk to the broker; a
//! job still in the outbox counts as ready in `depth`, and `cancel` removes
//! it from both places. A relay may hold a cancelled row (it claimed it
//! before the cancel): a cancel through the same handle is remembered, and
//! the relay does not publish such a job, or deletes it from the broker if
//! the cancel came while it was publishing. A cancel from another process racing a relay can leave
//! the job in the broker: its worker finds the photo gone and acks it
//! without work.

use async_trait::async_trait;
use domain::ports::{Delivery, JobQueue};
use domain::{BackendError, DeadJob, QueueConfig, QueueDepth};
use prometheus::{IntCounter, IntCounterVec, Opts};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store_nats::NatsJobQueue;
use tokio::sync::Notify;

/// The outbox's lease and attempts: a relay's lease runs 30 s (shorter than
/// the broker's dedup window, so a relay that died mid-publish is deduped),
/// and a row is never dead-lettered.
pub(crate) const OUTBOX_CONFIG: QueueConfig = QueueConfig {
    max_attempts: u32::MAX,
    backoff_ms: 100,
    max_backoff_ms: 5_000,
    ack_wait_ms: 30_000,
};

/// How often a relay looks for rows it was not woken for.
const POLL: Duration = Duration::from_millis(500);
/// Cancelled ids a handle remembers for its relay.
const REMEMBERED_CANCELS: usize = 1024;
/// Publish retries while the broker is down: doubling, 100 ms to 5 s.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The relay's counters (`scalestack_outbox_*`).
#[derive(Clone)]
pub struct RelayMetrics {
    /// Jobs published to the broker.
    relayed: IntCounter,
    /// Failed operations by step (`claim`, `publish`, `ack`).
    failures: IntCounterVec,
}

impl RelayMetrics {
    /// Registers `relayed_total` and `failures_total{step}` in `registry`.
    pub fn register(registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let relayed = IntCounter::new("relayed_total", "Jobs moved from the SQL outbox to the broker")?;
        let failures = IntCounterVec::new(
            Opts::new(
                "failures_total",
                "Outbox relay failures by step (claim, publish, ack)",
            ),
            &["step"],
        )?;
        registry.register(Box::new(relayed.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(RelayMetrics { relayed, failures })
    }
}

/// The job queue port over an outbox (a SQL queue) and a broker.
/// Dropping it stops its relay.
pub struct OutboxQueue {
    outbox: Arc<dyn JobQueue>,
    broker: NatsJobQueue,
    wake: Arc<Notify>,
    cancelled: Cancelled,
    relay: tokio::task::AbortHandle,
}

/// The last ids cancelled through a handle.
type Cancelled = Arc<Mutex<VecDeque<i64>>>;

impl OutboxQueue {
    /// The port, and its relay started on the current runtime.
    pub fn start(outbox: Arc<dyn JobQueue>, broker: NatsJobQueue, metrics: RelayMetrics) -> Self {
        let wake = Arc::new(Notify::new());
        let cancelled = Cancelled::default();
        let relay = tokio::spawn(relay(
            outbox.clone(),
            broker.clone(),
            wake.clone(),
            cancelled.clone(),
            metrics,
        ))
        .abort_handle();
        OutboxQueue {
            outbox,
            broker,
            wake,
            cancelled,
            relay,
        }
    }

    /// The broker behind the outbox.
    pub fn broker(&self) -> &NatsJobQueue {
        &self.broker
    }
}

impl Drop for OutboxQueue {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// Moves rows from the outbox to the broker, for as long as the runtime runs.
async fn relay(
    outbox: Arc<dyn JobQueue>,
    broker: NatsJobQueue,
    wake: Arc<Notify>,
    cancelled: Cancelled,
    metrics: RelayMetrics,
) {
    let mut failing_since_logged = false;
    loop {
        let delivery = match outbox.next().await {
            Ok(Some(d)) => d,
            Ok(None) => {
                let _ = tokio::time::timeout(POLL, wake.notified()).await;
                continue;
            }
            Err(e) => {
                metrics.failures.with_label_values(&["claim"]).inc();
                tracing::warn!(error = %e, "outbox: cannot claim a job");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let job = delivery.job().clone();
        let is_cancelled = || {
            cancelled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&job.id)
        };
        let mut wait = RETRY_FIRST;
        let mut waited = Duration::ZERO;
        let mut published = false;
        // Until published, or cancelled meanwhile (while the broker was
        // refusing, say): then it is not published at all.
        while !is_cancelled() {
            match broker.publish_job(job.id, &job.kind, &job.payload).await {
                Ok(()) => {
                    published = true;
                    break;
                }
                Err(e) => {
                    metrics.failures.with_label_values(&["publish"]).inc();
                    if !failing_since_logged {
                        tracing::warn!(job_id = job.id, error = %e, "outbox: the broker refuses jobs; they wait in the SQL store");
                        failing_since_logged = true;
                    }
                    tokio::time::sleep(wait).await;
                    waited += wait;
                    wait = (wait * 2).min(RETRY_MAX);
                    // Keep the lease while we wait (a third of it at most).
                    if waited >= OUTBOX_CONFIG.ack_wait() / 3 {
                        waited = Duration::ZERO;
                        let _ = delivery.in_progress().await;
                    }
                }
            }
        }
        if failing_since_logged {
            tracing::info!("outbox: the broker takes jobs again");
            failing_since_logged = false;
        }
        if published {
            metrics.relayed.inc();
        }
        if published && is_cancelled() {
            // Cancelled while we published: the cancel may have looked in
            // the broker before the job got there.
            if let Err(e) = broker.cancel(job.id).await {
                tracing::warn!(job_id = job.id, error = %e, "outbox: a cancelled job reached the broker and stays there");
            }
        }
        if let Err(e) = delivery.ack().await {
            // Published already: the row comes back after its lease and is
            // published again, which the broker's dedup window absorbs.
            metrics.failures.with_label_values(&["ack"]).inc();
            tracing::warn!(job_id = job.id, error = %e, "outbox: relayed job not acked");
        }
    }
}

#[async_trait]
impl JobQueue for OutboxQueue {
    async fn enqueue(&self, kind: &str, payload: &[u8]) -> Result<i64, BackendError> {
        let id = self.outbox.enqueue(kind, payload).await?;
        self.wake.notify_one();
        Ok(id)
    }

    async fn next(&self) -> Result<Option<Delivery>, BackendError> {
        self.broker.next().await
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let waiting = self.outbox.depth().await?;
        let mut depth = self.broker.depth().await?;
        depth.ready += waiting.ready + waiting.in_flight;
        Ok(depth)
    }

    async fn cancel(&self, job: i64) -> Result<bool, BackendError> {
        {
            let mut cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
            if cancelled.len() == REMEMBERED_CANCELS {
                cancelled.pop_front();
            }
            cancelled.push_back(job);
        }
        let in_outbox = self.outbox.cancel(job).await?;
        let in_broker = self.broker.cancel(job).await?;
        Ok(in_outbox || in_broker)
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, BackendError> {
        self.broker.dead_jobs(limit).await
    }

    async fn retry_dead(&self, id: i64) -> Result<bool, BackendError> {
        self.broker.retry_dead(id).await
    }
}
