//! Dead-lettering, by the two ways a job dies:
//! - a delivery's consumer gives up on it (a `nack` of its last attempt, a
//!   `terminate`): [`NatsJobQueue::bury`], then the delivery is `+TERM`ed;
//! - its deliveries run out without a settlement (every consumer of it died
//!   or hung, the one past the budget too): JetStream stops delivering it
//!   once the consumer's `max_deliver` is spent and publishes a
//!   max-deliveries advisory, which
//!   the stream `<name>_SPENT` keeps (so none is lost while no process
//!   listens); every handle's burier takes them from the durable consumer
//!   `<name>_buriers` and buries each job with [`DELIVERIES_SPENT`].
//!
//! Burying copies the job to the dead-letter stream first, then deletes it
//! from the work stream: a crash in between leaves it in both (listed dead
//! and still counted in the work stream until the advisory, redelivered,
//! finishes the job), never in neither.

use crate::{backend, delete, job_id, NatsJobQueue, ATTEMPTS_HEADER, ERROR_HEADER, KIND_HEADER};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use domain::{BackendError, DELIVERIES_SPENT};
use futures_util::StreamExt;
use std::sync::Weak;
use std::time::Duration;

/// The subject of JetStream's advisory that consumer `durable` of stream
/// `name` gave up on a message after its `max_deliver` deliveries.
pub(crate) fn spent_subject(name: &str, durable: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{name}.{durable}")
}

/// Creates (or finds) the stream that keeps the max-deliveries advisories
/// of the queue `name`'s consumer `durable`, and the buriers' consumer on
/// it.
pub(crate) async fn spent_advisories(
    context: &jetstream::Context,
    name: &str,
    durable: &str,
    replicas: usize,
) -> Result<consumer::PullConsumer, BackendError> {
    let spent = context
        .get_or_create_stream(stream::Config {
            name: format!("{name}_SPENT"),
            subjects: vec![spent_subject(name, durable)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| backend("creating the advisory stream", e))?;
    spent
        .create_consumer(consumer::pull::Config {
            durable_name: Some(format!("{name}_buriers")),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| backend("creating the buriers' consumer", e))
}

/// The burier of one handle: buries the job of each max-deliveries
/// advisory, until the handle is dropped. An advisory it fails on is left
/// unacked: it comes back after 30 s, to this burier or another.
pub(crate) async fn burier(queue: Weak<crate::Inner>, advisories: consumer::PullConsumer) {
    loop {
        let mut messages = match advisories.messages().await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::debug!(error = %e, "the burier cannot pull advisories yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let Some(inner) = queue.upgrade() else { return };
            let queue = NatsJobQueue { inner };
            match message {
                Ok(m) => match queue.bury_spent(&m.payload).await {
                    Ok(()) => {
                        if let Err(e) = m.ack().await {
                            tracing::warn!(error = %e, "acking a max-deliveries advisory");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "burying a job whose deliveries are spent"),
                },
                // Missed heartbeats while the broker is away: the stream
                // goes on once it is back.
                Err(e) => tracing::debug!(error = %e, "pulling max-deliveries advisories"),
            }
        }
    }
}

/// What a max-deliveries advisory names: the message's stream sequence and
/// its deliveries.
fn advisory(payload: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some((v["stream_seq"].as_u64()?, v["deliveries"].as_u64().unwrap_or(0)))
}

impl NatsJobQueue {
    /// Copies job `id` (the work stream's message `sequence`) to the
    /// dead-letter stream with its last `error` and its `attempts`.
    pub(crate) async fn bury(
        &self,
        id: i64,
        kind: &str,
        payload: &[u8],
        attempts: u64,
        error: &str,
        sequence: u64,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, kind);
        // Header values are one line.
        let error_line: String = error
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        headers.insert(ERROR_HEADER, error_line.as_str());
        headers.insert(ATTEMPTS_HEADER, attempts.to_string().as_str());
        // One message id per life of the job (its work stream message): a
        // repeated burial of it is a duplicate, the death of the job after
        // a retry is not.
        headers.insert("Nats-Msg-Id", format!("dead-{id}-{sequence}").as_str());
        inner
            .context
            .publish_with_headers(
                format!("{}.dead.{id}", inner.name),
                headers,
                bytes::Bytes::copy_from_slice(payload),
            )
            .await
            .map_err(|e| backend("dead-lettering a job", e))?
            .await
            .map_err(|e| backend("dead-lettering a job", e))?;
        delete(&inner.work, sequence).await?;
        Ok(())
    }

    /// Buries the job of a max-deliveries advisory, if its message is still
    /// in the work stream (a cancel may have removed it, or an earlier
    /// burial whose advisory ack was lost).
    async fn bury_spent(&self, payload: &[u8]) -> Result<(), BackendError> {
        let Some((sequence, deliveries)) = advisory(payload) else {
            tracing::warn!("a max-deliveries advisory without a stream sequence, ignored");
            return Ok(());
        };
        let message = match self.inner.work.get_raw_message(sequence).await {
            Ok(m) => m,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(backend("reading a spent job", e)),
        };
        let Some(id) = job_id(message.subject.as_str()) else {
            return Err(backend(
                "reading a spent job",
                format!("no job id in {}", message.subject),
            ));
        };
        let kind = message
            .headers
            .get(KIND_HEADER)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        self.bury(
            id,
            &kind,
            &message.payload,
            deliveries,
            DELIVERIES_SPENT,
            sequence,
        )
        .await?;
        tracing::warn!(
            queue = self.inner.name,
            job = id,
            deliveries,
            "job dead-lettered: its deliveries ran out unsettled"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisories_name_a_sequence() {
        let payload = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","stream":"jobs","consumer":"jobs_workers","stream_seq":17,"deliveries":5}"#;
        assert_eq!(advisory(payload), Some((17, 5)));
        assert_eq!(advisory(br#"{"deliveries":5}"#), None);
        assert_eq!(advisory(b"not json"), None);
    }

    #[test]
    fn the_advisory_subject() {
        assert_eq!(
            spent_subject("jobs", "jobs_workers"),
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.jobs.jobs_workers"
        );
    }
}
