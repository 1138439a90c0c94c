//! The contracts of the jobs the tiers hand each other through the queue:
//! the kind a producer enqueues and the payload it writes, which a consumer
//! reads back. Both sides depend on this module, neither on the other (the
//! web tier enqueues, the worker consumes, and neither crate knows the other).

use serde::{Deserialize, Serialize};

/// Job kind of photo processing: render a stored photo's variants.
pub const PROCESS_PHOTO: &str = "photo.process";

/// Payload of a [`PROCESS_PHOTO`] job, as JSON (`{"photo_id": 7}`, and
/// the id of the request that uploaded it when there was one, so one
/// request is followed into the worker's log lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPhoto {
    pub photo_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ProcessPhoto {
    /// The payload bytes to enqueue.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an integer and a string serialise")
    }

    /// Reads a payload back.
    pub fn from_payload(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_json_the_queue_already_holds() {
        let p = ProcessPhoto {
            photo_id: 7,
            request_id: None,
        };
        assert_eq!(p.to_payload(), br#"{"photo_id":7}"#);
        assert_eq!(ProcessPhoto::from_payload(br#"{"photo_id": 7}"#).unwrap(), p);
        let traced = ProcessPhoto {
            photo_id: 7,
            request_id: Some("ab12".into()),
        };
        assert_eq!(traced.to_payload(), br#"{"photo_id":7,"request_id":"ab12"}"#);
        assert_eq!(ProcessPhoto::from_payload(&traced.to_payload()).unwrap(), traced);
        assert!(ProcessPhoto::from_payload(b"7").is_err());
    }
}
