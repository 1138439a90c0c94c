//! The worker over real embedded backends in a temporary directory.

use backends::{Backends, BackendsConfig, QueueConfig, QueueTier};
use bytes::Bytes;
use domain::jobs::{ProcessPhoto, PROCESS_PHOTO};
use domain::ports::Delivery;
use domain::{NewPhoto, PhotoId, PhotoStatus, UserId, Username, Variant};
use std::time::Duration;
use worker::{Outcome, Reconciled, Worker, WorkerSettings};

async fn backends(dir: &tempfile::TempDir) -> Backends {
    backends_with_ack_wait(dir, QueueConfig::default().ack_wait_ms).await
}

/// Backends whose queue redelivers a job `ack_wait_ms` after a delivery
/// its worker stopped reporting on.
async fn backends_with_ack_wait(dir: &tempfile::TempDir, ack_wait_ms: u64) -> Backends {
    let config = BackendsConfig {
        data_dir: dir.path().to_path_buf(),
        queue: QueueTier::Embedded {
            config: QueueConfig {
                max_attempts: 2,
                backoff_ms: 10,
                max_backoff_ms: 10,
                ack_wait_ms,
            },
        },
        ..Default::default()
    };
    Backends::connect(&config).await.unwrap()
}

/// The next delivery, once the previous one's ack wait has run out.
async fn next_eventually(b: &Backends) -> Delivery {
    for _ in 0..3000 {
        if let Some(d) = b.queue.next().await.unwrap() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the job was never delivered again");
}

/// Waits until the job of a delivery left unsettled is ready again.
async fn until_ready_again(b: &Backends) {
    for _ in 0..3000 {
        if b.queue.depth().await.unwrap().ready == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the job never became ready again");
}

/// A photo's row for `bytes` (`processing`, no job), as the web tier's
/// first step writes it.
async fn photo_row(b: &Backends, bytes: &[u8]) -> domain::Photo {
    let owner = match b
        .store
        .user_by_name(&Username::parse("owner").unwrap())
        .await
        .unwrap()
    {
        Some(u) => u.id,
        None => b
            .store
            .create_user(&Username::parse("owner").unwrap(), "h")
            .await
            .unwrap(),
    };
    let info = imaging::inspect(bytes, u64::MAX).unwrap();
    b.store
        .create_photo(&NewPhoto {
            owner_id: UserId(owner.0),
            caption: None,
            format: info.format,
            width: info.width,
            height: info.height,
        })
        .await
        .unwrap()
}

/// Stores a photo the way the web tier does and enqueues its job.
async fn stored_photo(b: &Backends, bytes: Vec<u8>) -> PhotoId {
    let photo = photo_row(b, &bytes).await;
    b.blobs
        .put(&photo.original_key(), Bytes::from(bytes))
        .await
        .unwrap();
    let payload = ProcessPhoto {
        photo_id: photo.id.0,
        request_id: None,
    }
    .to_payload();
    b.queue.enqueue(PROCESS_PHOTO, &payload).await.unwrap();
    photo.id
}

async fn status(b: &Backends, id: PhotoId) -> PhotoStatus {
    b.store.photo(id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn a_job_is_processed_once_and_redelivery_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(&dir).await;
    let id = stored_photo(&b, imaging::samples::png(300, 200)).await;
    let w = Worker::new(b.clone(), WorkerSettings::default());
    assert_eq!(w.run_once().await.unwrap(), Some(Outcome::Done));
    assert_eq!(status(&b, id).await, PhotoStatus::Ready);
    for v in Variant::ALL {
        assert!(b.blobs.get(&v.blob_key(id)).await.unwrap().is_some(), "{v:?}");
    }
    assert_eq!(w.run_once().await.unwrap(), None);

    // At-least-once: the same job delivered again changes nothing.
    let payload = ProcessPhoto {
        photo_id: id.0,
        request_id: None,
    }
    .to_payload();
    b.queue.enqueue(PROCESS_PHOTO, &payload).await.unwrap();
    assert_eq!(w.run_once().await.unwrap(), Some(Outcome::Done));
    assert_eq!(status(&b, id).await, PhotoStatus::Ready);

    // A job for a photo that no longer exists is skipped, not retried.
    let payload = ProcessPhoto {
        photo_id: 9999,
        request_id: None,
    }
    .to_payload();
    b.queue.enqueue(PROCESS_PHOTO, &payload).await.unwrap();
    assert_eq!(w.run_once().await.unwrap(), Some(Outcome::Skipped));
    assert_eq!(b.queue.depth().await.unwrap(), Default::default());
    assert_eq!(w.metrics().jobs("done"), 2);
}

#[tokio::test]
async fn sigterm_lets_the_job_in_hand_finish() {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(&dir).await;
    // Large enough that rendering takes a while.
    let id = stored_photo(&b, imaging::samples::jpeg(3000, 2000)).await;
    let w = Worker::new(
        b.clone(),
        WorkerSettings {
            poll_ms: 5,
            ..Default::default()
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(w.run_until_stopped(async move {
        let _ = rx.await;
    }));
    // Stop as soon as the job is in hand.
    let mut seen_in_flight = false;
    for _ in 0..5000 {
        if b.queue.depth().await.unwrap().in_flight == 1 {
            seen_in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(seen_in_flight, "the worker never claimed the job");
    assert_eq!(status(&b, id).await, PhotoStatus::Processing, "stopped mid-job");
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status(&b, id).await,
        PhotoStatus::Ready,
        "the job in hand was finished"
    );
    assert_eq!(
        b.queue.depth().await.unwrap(),
        Default::default(),
        "and acknowledged"
    );
}

#[tokio::test]
async fn deliveries_that_never_finish_end_the_job_without_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let b = backends_with_ack_wait(&dir, 50).await;
    let id = stored_photo(&b, imaging::samples::png(10, 10)).await;
    // Two deliveries whose worker "died" (delivered, never settled): the budget.
    for _ in 0..2 {
        drop(next_eventually(&b).await);
    }
    until_ready_again(&b).await;
    let w = Worker::new(b.clone(), WorkerSettings::default());
    assert_eq!(w.run_once().await.unwrap(), Some(Outcome::DeadLettered));
    assert_eq!(status(&b, id).await, PhotoStatus::Failed);
    assert_eq!(b.queue.depth().await.unwrap().dead, 1);
    assert_eq!(w.metrics().jobs("failed"), 1);
    assert_eq!(w.run_once().await.unwrap(), None);
}

#[tokio::test]
async fn a_late_success_is_not_undone_by_the_redelivery_it_outlived() {
    let dir = tempfile::tempdir().unwrap();
    let b = backends_with_ack_wait(&dir, 50).await;
    let id = stored_photo(&b, imaging::samples::png(40, 30)).await;
    // Both deliveries of the budget time out, as if the last one were slow...
    let mut slow = None;
    for _ in 0..2 {
        slow = Some(next_eventually(&b).await);
    }
    until_ready_again(&b).await;
    // ...and the slow one finishes after all: the photo is ready.
    b.store.set_photo_status(id, PhotoStatus::Ready).await.unwrap();
    // The redelivery that outlived the budget finds the photo ready.
    let w = Worker::new(b.clone(), WorkerSettings::default());
    assert_eq!(w.run_once().await.unwrap(), Some(Outcome::Done));
    assert_eq!(status(&b, id).await, PhotoStatus::Ready);
    // The slow delivery's own failure report, had it failed, changes nothing.
    let slow = slow.unwrap();
    assert_eq!(slow.nack("late", None).await.unwrap(), domain::NackOutcome::Stale);
    // And a failure can never turn a ready photo back.
    b.store.set_photo_status(id, PhotoStatus::Failed).await.unwrap();
    assert_eq!(status(&b, id).await, PhotoStatus::Ready);
    assert_eq!(b.queue.depth().await.unwrap(), Default::default());
}

#[tokio::test]
async fn a_render_longer_than_the_ack_wait_is_not_delivered_twice() {
    let dir = tempfile::tempdir().unwrap();
    // An ack wait far shorter than the render: without the worker's
    // in-progress reports the job would go to the other consumer below.
    let ack_wait = Duration::from_millis(300);
    let b = backends_with_ack_wait(&dir, ack_wait.as_millis() as u64).await;
    let id = stored_photo(&b, imaging::samples::jpeg(3000, 2000)).await;
    let w = Worker::new(b.clone(), WorkerSettings::default());
    let started = tokio::time::Instant::now();
    let run = tokio::spawn(async move { w.run_once().await.unwrap() });
    // Once the worker has the job, another one asks for work all along.
    while b.queue.depth().await.unwrap().in_flight == 0 {
        assert!(!run.is_finished(), "the worker never took the job");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while !run.is_finished() {
        if let Some(d) = b.queue.next().await.unwrap() {
            panic!(
                "delivered again after {:?} of rendering: {:?}",
                started.elapsed(),
                d.job()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(run.await.unwrap(), Some(Outcome::Done));
    assert!(
        started.elapsed() > ack_wait * 2,
        "the render outlasted the ack wait, or this test proves nothing"
    );
    assert_eq!(status(&b, id).await, PhotoStatus::Ready);
    assert_eq!(b.queue.depth().await.unwrap(), Default::default());
}

/// An upload whose web server died between the photo's row and its job
/// (the row `processing` with no job) is finished by the reconciler once it
/// is old enough: with its original stored it gets its job and ends
/// `ready`; without one (the upload never completed, nobody got a 202) it
/// is removed. An upload with its job recorded is left alone.
#[tokio::test]
async fn the_reconciler_finishes_uploads_that_stalled_between_row_and_job() {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(&dir).await;
    let bytes = imaging::samples::png(20, 10);
    // Died after storing the original, before the job.
    let orphan = photo_row(&b, &bytes).await;
    b.blobs
        .put(&orphan.original_key(), Bytes::from(bytes.clone()))
        .await
        .unwrap();
    // Died before storing the original.
    let unfinished = photo_row(&b, &bytes).await.id;
    // A complete upload: row, original, job, the job recorded.
    let healthy = stored_photo(&b, bytes.clone()).await;
    b.store.record_photo_job(healthy, 1).await.unwrap();

    let w = Worker::new(b.clone(), WorkerSettings::default());
    // Younger than the cutoff: not stalled yet.
    assert_eq!(
        w.reconcile_stalled_uploads(orphan.created_at_ms).await.unwrap(),
        Reconciled::default()
    );
    let cutoff = domain::now_millis() + 1;
    assert_eq!(
        w.reconcile_stalled_uploads(cutoff).await.unwrap(),
        Reconciled {
            requeued: 1,
            removed: 1
        }
    );
    assert!(b.store.photo(unfinished).await.unwrap().is_none());
    while w.run_once().await.unwrap().is_some() {}
    assert_eq!(status(&b, orphan.id).await, PhotoStatus::Ready);
    assert_eq!(status(&b, healthy).await, PhotoStatus::Ready);
    for v in Variant::ALL {
        assert!(
            b.blobs.get(&v.blob_key(orphan.id)).await.unwrap().is_some(),
            "{v:?}"
        );
    }
    // Nothing is left to finish.
    assert_eq!(
        w.reconcile_stalled_uploads(cutoff).await.unwrap(),
        Reconciled::default()
    );
}
