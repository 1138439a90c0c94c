//! Value types with their invariants checked once, at parse time.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an input was refused; the message is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Primary key of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub i64);

/// Primary key of a photo; ids grow with time, which keyset pagination uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PhotoId(pub i64);

impl fmt::Display for PhotoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A username: 3 to 32 characters of `[a-z0-9_]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// Checks the length and alphabet.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok_len = (3..=32).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok_len && ok_chars {
            Ok(Username(s.to_owned()))
        } else {
            Err(Invalid(
                "username must be 3 to 32 characters of a-z, 0-9 and _".into(),
            ))
        }
    }

    /// The username as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A clear-text password, 8 to 128 characters; never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Checks the length (in characters).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let n = s.chars().count();
        if (8..=128).contains(&n) {
            Ok(Password(s.to_owned()))
        } else {
            Err(Invalid("password must be 8 to 128 characters".into()))
        }
    }

    /// The secret itself, for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A photo caption: at most 500 characters, no control characters but newline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Caption(String);

impl Caption {
    /// Trims surrounding whitespace and checks length and characters.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s = s.trim();
        if s.chars().count() > 500 {
            return Err(Invalid("caption must be at most 500 characters".into()));
        }
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(Invalid("caption must not contain control characters".into()));
        }
        Ok(Caption(s.to_owned()))
    }

    /// The caption as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a photo is in its processing life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhotoStatus {
    /// Uploaded; variants are being made.
    Processing,
    /// All variants exist.
    Ready,
    /// Processing gave up after the retry budget.
    Failed,
}

impl PhotoStatus {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PhotoStatus::Processing => "processing",
            PhotoStatus::Ready => "ready",
            PhotoStatus::Failed => "failed",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "processing" => Ok(PhotoStatus::Processing),
            "ready" => Ok(PhotoStatus::Ready),
            "failed" => Ok(PhotoStatus::Failed),
            other => Err(Invalid(format!("unknown photo status {other:?}"))),
        }
    }
}

/// An accepted image container, recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
}

impl ImageFormat {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "jpeg" => Ok(ImageFormat::Jpeg),
            "png" => Ok(ImageFormat::Png),
            "webp" => Ok(ImageFormat::Webp),
            other => Err(Invalid(format!("unknown image format {other:?}"))),
        }
    }

    /// The MIME type served with the bytes.
    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
        }
    }

    /// The file extension used in blob keys and URLs.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
        }
    }
}

/// A processed rendition of a photo. All variants are JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Fits in 256x256, aspect kept.
    Thumbnail,
    /// Centre crop, 512x512.
    Square,
    /// Unsharp mask.
    Sharpened,
    /// Gaussian blur.
    Blurred,
}

impl Variant {
    /// Every variant the worker produces.
    pub const ALL: [Variant; 4] = [
        Variant::Thumbnail,
        Variant::Square,
        Variant::Sharpened,
        Variant::Blurred,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Thumbnail => "thumbnail",
            Variant::Square => "square",
            Variant::Sharpened => "sharpened",
            Variant::Blurred => "blurred",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Variant::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The blob key of this variant of a photo.
    pub fn blob_key(self, photo: PhotoId) -> BlobKey {
        BlobKey(format!("variants/{}/{}.jpg", photo.0, self.as_str()))
    }
}

/// A stored user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub username: Username,
    /// PHC string of the argon2 hash.
    pub password_hash: String,
}

/// Public facts about a user and the caller's relation to them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub id: UserId,
    pub username: Username,
    pub followers: i64,
    pub following: i64,
}

/// A stored photo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Photo {
    pub id: PhotoId,
    pub owner_id: UserId,
    pub owner: Username,
    pub caption: Option<Caption>,
    pub status: PhotoStatus,
    pub created_at_ms: i64,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl Photo {
    /// The blob key of the uploaded original.
    pub fn original_key(&self) -> BlobKey {
        original_key(self.id, self.format)
    }
}

/// The blob key of an original upload.
pub fn original_key(id: PhotoId, format: ImageFormat) -> BlobKey {
    BlobKey(format!("originals/{}.{}", id.0, format.extension()))
}

/// What [`Store::delete_photo`](crate::ports::Store::delete_photo) removed:
/// enough to remove the rest of the photo (its blobs, its jobs, its cache
/// entries) once its row is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedPhoto {
    pub id: PhotoId,
    pub owner_id: UserId,
    pub format: ImageFormat,
    /// Ids of the photo's jobs in the queue as the store recorded them
    /// ([`Store::record_photo_job`](crate::ports::Store::record_photo_job));
    /// empty when none was recorded. The jobs may be done already.
    pub jobs: Vec<i64>,
}

impl DeletedPhoto {
    /// Every blob the photo may have: its original and each variant (some
    /// may never have been written).
    pub fn blob_keys(&self) -> Vec<BlobKey> {
        std::iter::once(original_key(self.id, self.format))
            .chain(Variant::ALL.into_iter().map(|v| v.blob_key(self.id)))
            .collect()
    }
}

/// A photo about to be stored.
#[derive(Debug, Clone)]
pub struct NewPhoto {
    pub owner_id: UserId,
    pub caption: Option<Caption>,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// One page of a newest-first list: photos with ids below `before`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub before: Option<PhotoId>,
    pub limit: u32,
}

/// A key in the blob store: relative, `[a-z0-9_./-]`, no `..`, no empty segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// Refuses anything that could escape the store's root.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let chars_ok = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'/' | b'-'));
        let segments_ok = s
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        if !s.is_empty() && s.len() <= 512 && chars_ok && segments_ok {
            Ok(BlobKey(s.to_owned()))
        } else {
            Err(Invalid(format!("invalid blob key {s:?}")))
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The photo this key belongs to, read from the key formats of
    /// [`original_key`] (`originals/<id>.<ext>`) and [`Variant::blob_key`]
    /// (`variants/<id>/<name>.jpg`); `None` for any other key.
    pub fn photo_id(&self) -> Option<PhotoId> {
        let digits = match self.0.split_once('/')? {
            ("originals", file) => file.split_once('.')?.0,
            ("variants", rest) => rest.split_once('/')?.0,
            _ => return None,
        };
        // Plain decimal digits only: `+7`, `07` or `-1` name no photo.
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !(digits.len() > 1 && digits.starts_with('0'));
        canonical
            .then(|| digits.parse().ok())
            .flatten()
            .filter(|&n: &i64| n > 0)
            .map(PhotoId)
    }
}

/// An opaque session token (256 random bits, hex); never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// Wraps a token taken from a cookie; only hex of the right length passes.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| SessionToken(s.to_ascii_lowercase()))
    }

    /// A fresh token: 32 bytes (256 bits) from the OS-seeded CSPRNG,
    /// hex-encoded. Every session store issues tokens this way.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        SessionToken(hex::encode(bytes))
    }

    /// What a store keeps of a token: its SHA-256, hex-encoded, so a leaked
    /// store holds no usable session.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The secret itself, for the cookie and for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(***)")
    }
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub expires_at_ms: i64,
}

/// A job as one delivery of it hands it out (see [`Delivery`](crate::ports::Delivery)).
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: Vec<u8>,
    /// The number of this delivery: 1 on the first. Deliveries whose
    /// consumer died count too, so it may exceed `max_attempts` (the
    /// consumer then gives up at once).
    pub attempt: u32,
    /// Deliveries the job gets before a failure dead-letters it.
    pub max_attempts: u32,
}

/// A job in the dead-letter set (its attempts spent, or terminated), as
/// [`JobQueue::dead_jobs`](crate::ports::JobQueue::dead_jobs) lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadJob {
    /// The job's id, the one [`enqueue`](crate::ports::JobQueue::enqueue)
    /// returned (a retry keeps it).
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// Its payload, byte for byte.
    pub payload: Vec<u8>,
    /// The deliveries it got before it died (since its last retry, if it
    /// was retried); 0 when the adapter did not record them.
    pub attempts: u32,
    /// The error of its last attempt, as the consumer gave it (a broker may
    /// replace control characters with spaces).
    pub last_error: String,
    /// When it died, in milliseconds since the Unix epoch; `None` when the
    /// adapter does not know.
    pub died_at_ms: Option<i64>,
}

/// What became of a job that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// It will be delivered again after `delay_ms` (the back-off, or the
    /// delay the nack asked for).
    Retry { delay_ms: u64 },
    /// The retry budget is spent, or the job was terminated; it is in the
    /// dead-letter set.
    DeadLettered,
    /// Nothing changed: this delivery no longer owned the job (its
    /// ack wait ran out and the job was delivered again, or it was already
    /// settled). The caller must not act on the failure.
    Stale,
}

impl NackOutcome {
    /// The outcome of a nack whose guarded update (this delivery's job
    /// only) changed `rows` rows, with `retry` from
    /// [`QueueConfig::retry_delay`](crate::QueueConfig::retry_delay).
    pub fn of_update(rows: u64, retry: Option<u64>) -> Self {
        match (rows, retry) {
            (0, _) => NackOutcome::Stale,
            (_, Some(delay_ms)) => NackOutcome::Retry { delay_ms },
            (_, None) => NackOutcome::DeadLettered,
        }
    }
}

/// Counts of jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    /// Waiting for a worker (including those backing off).
    pub ready: i64,
    /// Claimed by a worker, visibility timeout running.
    pub in_flight: i64,
    /// Given up after the retry budget.
    pub dead: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_are_fresh_256_bit_hex_and_stored_only_as_a_digest() {
        let (a, b) = (SessionToken::generate(), SessionToken::generate());
        assert_eq!(a.expose().len(), 64);
        assert!(SessionToken::parse(a.expose()).is_some());
        assert_ne!(a, b);
        let h = a.digest();
        assert_eq!(h.len(), 64);
        assert_ne!(h, a.expose());
        assert_eq!(h, a.digest());
    }

    #[test]
    fn usernames() {
        assert!(Username::parse("bob").is_ok());
        assert!(Username::parse("a_1_z").is_ok());
        assert!(Username::parse(&"a".repeat(32)).is_ok());
        for bad in ["", "ab", "Bob", "bo b", "bob!", "ünï", &"a".repeat(33)] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_are_bounded_and_hidden() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        let p = Password::parse("correct horse").unwrap();
        assert_eq!(format!("{p:?}"), "Password(***)");
    }

    #[test]
    fn blob_keys_cannot_escape() {
        assert!(BlobKey::parse("originals/1.jpg").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "A.jpg",
            "a\\b",
            "a/",
        ] {
            assert!(BlobKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn blob_keys_name_their_photo() {
        let id = PhotoId(42);
        let of = |s: &str| BlobKey::parse(s).unwrap().photo_id();
        assert_eq!(original_key(id, ImageFormat::Webp).photo_id(), Some(id));
        for v in Variant::ALL {
            assert_eq!(v.blob_key(id).photo_id(), Some(id), "{v:?}");
        }
        assert_eq!(of("originals/7.jpg"), Some(PhotoId(7)));
        assert_eq!(of("variants/7/thumbnail.jpg"), Some(PhotoId(7)));
        for other in [
            "originals/7",
            "originals/x.jpg",
            "originals/07.jpg",
            "originals/0.jpg",
            "originals/99999999999999999999.jpg",
            "variants/7",
            "variants/x/thumbnail.jpg",
            "static/7.jpg",
            "7.jpg",
        ] {
            assert_eq!(of(other), None, "{other}");
        }
    }

    #[test]
    fn a_deleted_photo_names_every_blob_it_may_have() {
        let gone = DeletedPhoto {
            id: PhotoId(9),
            owner_id: UserId(1),
            format: ImageFormat::Png,
            jobs: vec![],
        };
        let keys: Vec<String> = gone.blob_keys().iter().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(
            keys,
            [
                "originals/9.png",
                "variants/9/thumbnail.jpg",
                "variants/9/square.jpg",
                "variants/9/sharpened.jpg",
                "variants/9/blurred.jpg"
            ]
        );
        assert!(gone.blob_keys().iter().all(|k| k.photo_id() == Some(PhotoId(9))));
    }

    #[test]
    fn captions() {
        assert_eq!(Caption::parse("  hi  ").unwrap().as_str(), "hi");
        assert!(Caption::parse(&"x".repeat(501)).is_err());
        assert!(Caption::parse("a\u{0}b").is_err());
    }

    #[test]
    fn session_tokens() {
        assert!(SessionToken::parse(&"a".repeat(64)).is_some());
        assert!(SessionToken::parse(&"a".repeat(63)).is_none());
        assert!(SessionToken::parse(&"g".repeat(64)).is_none());
    }

    #[test]
    fn names_round_trip() {
        for s in [PhotoStatus::Processing, PhotoStatus::Ready, PhotoStatus::Failed] {
            assert_eq!(PhotoStatus::parse(s.as_str()).unwrap(), s);
        }
        for v in Variant::ALL {
            assert_eq!(Variant::parse(v.as_str()), Some(v));
        }
    }
}
