//! The NATS queue tier behind its transactional outbox, on a real
//! `nats-server` and the embedded SQL store: jobs enqueued while the broker
//! is down are accepted, and every one is delivered once it is back.

use backends::{Backends, BackendsConfig, QueueConfig, QueueTier};
use std::collections::BTreeSet;
use std::time::Duration;
use test_support::TestNats;

async fn backends(dir: &std::path::Path, url: String) -> Backends {
    let config = BackendsConfig {
        data_dir: dir.to_owned(),
        queue: QueueTier::Nats {
            url: Some(url),
            name: "jobs".into(),
            replicas: None,
            config: QueueConfig::default(),
        },
        ..Default::default()
    };
    Backends::connect(&config).await.expect("connecting the backends")
}

/// Waits until nothing waits or runs (the relay acks its outbox row just
/// after the broker took the job, so a drained queue may show it a moment).
async fn wait_empty(b: &Backends) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let depth = b.queue.depth().await;
        match &depth {
            Ok(d) if (d.ready, d.in_flight) == (0, 0) => return,
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => panic!("the queue never emptied: {depth:?}"),
        }
    }
}

/// Takes deliveries until `want` distinct jobs were acked (at most 60 s).
async fn drain(b: &Backends, want: usize) -> Vec<i64> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.iter().collect::<BTreeSet<_>>().len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {want} jobs delivered",
            seen.len()
        );
        match b.queue.next().await {
            Ok(Some(d)) => {
                seen.push(d.job().id);
                d.ack().await.unwrap();
            }
            Ok(None) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    seen
}

#[tokio::test]
async fn jobs_enqueued_while_the_broker_is_down_are_delivered_once_it_is_back() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let b = backends(dir.path(), nats.node.url()).await;

    // Before the outage: relayed at once.
    let first = b.queue.enqueue("k", b"before").await.unwrap();
    assert_eq!(drain(&b, 1).await, [first]);

    nats.node.stop().await.unwrap();
    let mut during = Vec::new();
    for i in 0..20 {
        during.push(
            b.queue
                .enqueue("k", format!("during {i}").as_bytes())
                .await
                .expect("accepted while NATS is down"),
        );
    }
    let depth = b.queue.depth().await;
    assert!(
        depth.is_err() || depth.unwrap().ready >= 20,
        "the outbox counts as waiting"
    );

    nats.node.restart().await.unwrap();
    let delivered = drain(&b, during.len()).await;
    let distinct: BTreeSet<i64> = delivered.iter().copied().collect();
    assert_eq!(
        distinct,
        during.iter().copied().collect(),
        "every job, none other"
    );
    assert_eq!(delivered.len(), during.len(), "none delivered twice");
    wait_empty(&b).await;
    let metrics = b.metrics.render();
    assert!(
        metrics.contains("scalestack_outbox_relayed_total 21"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_job_cancelled_in_the_outbox_never_reaches_the_broker() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let b = backends(dir.path(), nats.node.url()).await;
    nats.node.stop().await.unwrap();
    let doomed = b.queue.enqueue("k", b"doomed").await.unwrap();
    let kept = b.queue.enqueue("k", b"kept").await.unwrap();
    // The broker's half of the cancel fails while it is down (an error the
    // caller sees); the outbox's half, which matters here, is done.
    let _ = b.queue.cancel(doomed).await;
    nats.node.restart().await.unwrap();
    assert_eq!(drain(&b, 1).await, [kept]);
    // The cancelled job is nowhere: neither in the outbox nor the broker.
    wait_empty(&b).await;
    assert!(b.queue.next().await.unwrap().is_none());
}
