//! The JetStream job queue on a real `nats-server`: the queue port's
//! conformance battery, and no acknowledged job lost when the server is
//! killed (`kill -9`) and restarted on its store.

use conformance::queue::{DepthCounts, QueueAdapter, Subject};
use domain::ports::JobQueue;
use domain::QueueConfig;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store_nats::NatsJobQueue;
use test_support::TestNats;
use tokio::time::Instant;

/// Every case gets its own queue (streams and consumer) on one server.
struct Nats {
    server: TestNats,
    queues: AtomicU32,
}

#[async_trait::async_trait(?Send)]
impl QueueAdapter for Nats {
    async fn fresh(&self, config: QueueConfig) -> Subject {
        let name = format!("q{}", self.queues.fetch_add(1, Ordering::Relaxed));
        let url = self.server.node.url();
        let queue = NatsJobQueue::connect(&url, &name, config).await.unwrap();
        let other = NatsJobQueue::connect(&url, &name, config).await.unwrap();
        Subject {
            queue: Arc::new(queue),
            other: Arc::new(other),
            guard: Box::new(()),
        }
    }

    /// JetStream's consumer counts a delivery backing off, or whose ack
    /// wait ran out, as pending: only ready + in flight is exact.
    fn depth_counts(&self) -> DepthCounts {
        DepthCounts::Total
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let adapter = Nats {
        server: TestNats::start().await,
        queues: AtomicU32::new(0),
    };
    conformance::queue::run_all(&adapter).await;
}

#[tokio::test]
async fn an_invalid_queue_name_is_refused_before_connecting() {
    // Nothing listens on port 1: the name is checked first.
    let err = NatsJobQueue::connect("nats://127.0.0.1:1", "a.b", QueueConfig::default())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("queue name"), "{err}");
}

/// Publishes jobs (each acknowledged by the server), acks some deliveries,
/// kills the server with SIGKILL and restarts it on the same port and
/// store: every job not acked is delivered (an acked one may come back:
/// at least once).
///
/// Sync policy: nats-server 2.9.10's default (it takes no `sync_interval`):
/// the store is written before each acknowledgement and fsynced every two
/// minutes, so this proves a crash of the server, not of the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_jobs_survive_a_kill_9_of_the_server() {
    let nats = TestNats::start().await;
    let config = QueueConfig::default();
    let url = nats.node.url();
    let q = NatsJobQueue::connect(&url, "jobs", config).await.unwrap();
    let mut published = BTreeSet::new();
    for i in 0..300u32 {
        published.insert(q.enqueue("photo", &i.to_be_bytes()).await.unwrap());
    }
    let mut acked = BTreeSet::new();
    for _ in 0..100 {
        let d = q.next().await.unwrap().expect("a published job");
        d.ack().await.unwrap();
        acked.insert(d.job().id);
    }
    // Delivered, never settled: must come back too.
    let held = q.next().await.unwrap().expect("a published job");

    let pid = nats.node.pid().expect("nats runs");
    nats.node.kill9().unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "nats-server {pid} survived SIGKILL"
    );
    drop(held);
    drop(q);
    nats.node.restart().await.unwrap();

    // A new client: the old one's ack wait is two minutes, so the held
    // delivery needs a consumer with a short one.
    let short = QueueConfig {
        ack_wait_ms: 500,
        ..config
    };
    let q = NatsJobQueue::connect(&url, "jobs", short).await.unwrap();
    let want: BTreeSet<i64> = published.difference(&acked).copied().collect();
    let mut got = BTreeSet::new();
    let mut acked_again = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until every job not acked came back and the queue is empty (jobs
    // acked before the crash may come back too, and be acked again).
    loop {
        match q.next().await {
            Ok(Some(d)) => {
                let id = d.job().id;
                assert!(published.contains(&id), "job {id} was never published");
                if acked.contains(&id) {
                    acked_again += 1;
                } else {
                    got.insert(id);
                }
                d.ack().await.unwrap();
            }
            Ok(None) if want.is_subset(&got) && is_empty(&q).await => break,
            Ok(None) | Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "after the restart {} of {} jobs came back, and the queue holds {:?}",
                    got.len(),
                    want.len(),
                    q.depth().await
                );
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
    }
    assert_eq!(got, want);
    // An ack confirmed before the crash may be lost with it (JetStream
    // removes the message in memory first): such a job runs again, which
    // at-least-once delivery allows.
    eprintln!(
        "{acked_again} of {} jobs acked before the crash came back",
        acked.len()
    );
}

async fn is_empty(q: &NatsJobQueue) -> bool {
    q.depth().await.is_ok_and(|d| d.ready + d.in_flight + d.dead == 0)
}

/// A job is published with its id as `Nats-Msg-Id`, so a publish repeated
/// inside the dedup window is stored once; a terminated job's copy in the
/// dead-letter stream keeps its kind, payload and last error.
#[tokio::test]
async fn publishes_are_deduplicated_and_dead_jobs_keep_their_error() {
    let nats = TestNats::start().await;
    let url = nats.node.url();
    let q = NatsJobQueue::connect(&url, "jobs", QueueConfig::default())
        .await
        .unwrap();
    let id = q.enqueue("photo", b"p").await.unwrap();

    // The same publish again, as a producer retrying after a lost ack.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.to_string().as_str());
    headers.insert("Scalestack-Kind", "photo");
    let ack = js
        .publish_with_headers(format!("jobs.job.{id}"), headers, "p".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate, "the repeated publish was stored");
    let d = q.depth().await.unwrap();
    assert_eq!(d.ready + d.in_flight, 1, "{d:?}");

    let delivery = q.next().await.unwrap().unwrap();
    assert_eq!(delivery.job().id, id);
    assert!(q.next().await.unwrap().is_none(), "stored twice");
    assert_eq!(q.dead_job(id).await.unwrap(), None);
    delivery.terminate("cannot decode:\nnot an image").await.unwrap();
    let dead = q.dead_job(id).await.unwrap().expect("dead-lettered");
    assert!(dead.died_at_ms.is_some());
    assert_eq!(
        dead,
        store_nats::DeadJob {
            id,
            kind: "photo".into(),
            payload: b"p".to_vec(),
            attempts: 1,
            last_error: "cannot decode: not an image".into(),
            died_at_ms: dead.died_at_ms,
        }
    );
    assert!(q.cancel(id).await.unwrap(), "a dead job is cancelled");
    assert_eq!(q.dead_job(id).await.unwrap(), None);
}

/// A retry that crashed between its publish and its deletion of the dead
/// copy leaves the job in both streams (at least once, never lost): a
/// repeated retry of that dead copy is a duplicate publish (one job in the
/// work stream) that then clears the dead copy, and `cancel` removes the
/// job from both streams.
#[tokio::test]
async fn a_retry_that_crashed_midway_leaves_the_job_in_both_streams() {
    let nats = TestNats::start().await;
    let url = nats.node.url();
    let q = NatsJobQueue::connect(&url, "jobs", QueueConfig::default())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let dead_stream = js.get_stream("jobs_DEAD").await.unwrap();

    // The retry's publish, as `retry_dead` makes it, and then a crash.
    let crashed_retry = |id: i64| {
        let (js, dead_stream) = (js.clone(), dead_stream.clone());
        async move {
            let dead = dead_stream
                .get_last_raw_message_by_subject(&format!("jobs.dead.{id}"))
                .await
                .unwrap();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{id}-r{}", dead.sequence).as_str());
            headers.insert("Scalestack-Kind", "photo");
            js.publish_with_headers(format!("jobs.job.{id}"), headers, dead.payload)
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let dead_job = |payload: &'static [u8]| {
        let q = q.clone();
        async move {
            let id = q.enqueue("photo", payload).await.unwrap();
            let d = q.next().await.unwrap().unwrap();
            d.terminate("boom").await.unwrap();
            id
        }
    };
    let totals = || async {
        let d = q.depth().await.unwrap();
        (d.ready + d.in_flight, d.dead)
    };

    let a = dead_job(b"a").await;
    crashed_retry(a).await;
    assert_eq!(totals().await, (1, 1), "in both streams");
    assert_eq!(q.dead_jobs(10).await.unwrap()[0].id, a);
    assert!(q.retry_dead(a).await.unwrap(), "the retry repeated");
    assert_eq!(totals().await, (1, 0), "published twice");
    let d = q.next().await.unwrap().unwrap();
    assert_eq!(
        (d.job().id, d.job().attempt, d.job().payload.as_slice()),
        (a, 1, &b"a"[..])
    );
    d.ack().await.unwrap();
    assert_eq!(totals().await, (0, 0));

    let b = dead_job(b"b").await;
    crashed_retry(b).await;
    assert_eq!(totals().await, (1, 1));
    assert!(q.cancel(b).await.unwrap());
    assert_eq!(totals().await, (0, 0), "cancelled in one stream only");
    assert!(!q.retry_dead(b).await.unwrap());
}

/// The consumer holds the queue's retry policy (a user sees it in `nats
/// consumer info`): max deliveries = attempts + the one past the budget,
/// and a back-off of ack wait plus back-off per attempt. A job whose every
/// delivery dies, the last while no handle runs, is still dead-lettered:
/// JetStream's max-deliveries advisory waits in `<name>_SPENT` until a
/// handle's burier takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_spent_while_no_handle_listened_is_buried_by_the_next() {
    let nats = TestNats::start().await;
    let url = nats.node.url();
    let config = QueueConfig {
        max_attempts: 2,
        backoff_ms: 50,
        max_backoff_ms: 1000,
        ack_wait_ms: 300,
    };
    let q = NatsJobQueue::connect(&url, "spent", config).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut workers: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("spent")
        .await
        .unwrap()
        .get_consumer("spent_workers")
        .await
        .unwrap();
    let policy = &workers.info().await.unwrap().config;
    assert_eq!(policy.max_deliver, 3);
    assert_eq!(policy.backoff, vec![Duration::from_millis(350)]);

    let id = q.enqueue("photo", b"kills every worker").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 1..=3 {
        let d = loop {
            if let Some(d) = q.next().await.unwrap() {
                break d;
            }
            assert!(Instant::now() < deadline, "no delivery {attempt}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!((d.job().id, d.job().attempt), (id, attempt));
        drop(d); // the worker dies
    }
    drop(q); // and no handle is left to listen

    // Someone asks for work: JetStream notices the spent budget and
    // publishes its advisory, which the advisory stream keeps.
    let mut spent = js.get_stream("spent_SPENT").await.unwrap();
    while spent.info().await.unwrap().state.messages == 0 {
        let mut batch = workers
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(100))
            .messages()
            .await
            .unwrap();
        use futures_util::StreamExt;
        assert!(batch.next().await.is_none(), "delivered past its budget");
        assert!(Instant::now() < deadline, "no max-deliveries advisory");
    }

    let q = NatsJobQueue::connect(&url, "spent", config).await.unwrap();
    let dead = loop {
        if let Some(dead) = q.dead_job(id).await.unwrap() {
            break dead;
        }
        assert!(Instant::now() < deadline, "the spent job was never buried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (dead.attempts, dead.last_error.as_str(), dead.payload.as_slice()),
        (3, domain::DELIVERIES_SPENT, &b"kills every worker"[..])
    );
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready + d.in_flight, d.dead), (0, 1));
}
