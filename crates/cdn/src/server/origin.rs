//! What goes to the origin and what comes back into storage: the request
//! the edge sends (for storage: `GET` even for a `HEAD`, without the
//! client's `Range` and conditionals, with the edge's own validators; or
//! the client's request as it is), and the stored object made of an
//! answer (its head with the freshness facts, variant, URL and purge tags).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proxy_core::hop_by_hop::{connection_named, is_dropped};
use proxy_core::relay::{encode_request_end, field, is_framing_field};
use proxy_core::{RequestHead, ResponseHead};

use super::stored::{self, StoredHead};
use crate::policy::{
    freshen_fields, normalise_host, origin_target, secondary_key, Config, EdgePolicy, Fields, Freshness,
    Storable, Vary, CONDITIONAL_FIELDS,
};
use crate::store::{CacheKey, Object, ObjectMeta};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// How the edge forwards a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// To fill storage: `GET`, no client `Range` or conditionals.
    ForStorage,
    /// The client's request as it is (minus hop-by-hop and unkeyed fields).
    AsIs,
}

/// Encodes the request the edge sends for `head`/`body` into `out`:
/// `strip` names the unkeyed fields removed, `validators` the edge's own
/// conditional fields (revalidating a stored response), and `via` the
/// edge's name for a `Via` field. For storage the target is the keyed one
/// ([`origin_target`]: query parameters that do not key the object do not
/// reach the origin either, so they cannot change what is stored).
#[allow(clippy::too_many_arguments)]
pub fn encode_request(
    cfg: &Config,
    head: &RequestHead,
    body: &[u8],
    how: Forward,
    strip: &[&str],
    validators: &[(&[u8], Vec<u8>)],
    via: &str,
    out: &mut Vec<u8>,
) {
    let method = match how {
        Forward::ForStorage => "GET",
        Forward::AsIs => head.method.as_str(),
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let target = head.target().as_bytes();
    match how {
        Forward::ForStorage => {
            out.extend_from_slice(&origin_target(cfg, target).unwrap_or_else(|| target.to_vec()))
        }
        Forward::AsIs => out.extend_from_slice(target),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = connection_named(head.fields());
    for (name, value) in head.iter() {
        if is_dropped(name, &named)
            || is_framing_field(name)
            || strip.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(name))
        {
            continue;
        }
        if how == Forward::ForStorage
            && (name.eq_ignore_ascii_case(b"range")
                || CONDITIONAL_FIELDS
                    .iter()
                    .any(|c| c.as_bytes().eq_ignore_ascii_case(name)))
        {
            continue;
        }
        field(out, name, value);
    }
    for (name, value) in validators {
        field(out, name, value);
    }
    field(out, b"via", format!("1.1 {via}").as_bytes());
    encode_request_end(head, body, out);
}

/// The URL an object answers, as purges by URL prefix match it:
/// `host` + the target as keyed (so `http://h/x?b=1&a=2` and
/// `http://h/x?a=2&b=1` are one URL).
pub fn object_url(cfg: &Config, host: &[u8], target: &[u8]) -> Vec<u8> {
    let mut url = normalise_host(host);
    url.extend_from_slice(&origin_target(cfg, target).unwrap_or_else(|| target.to_vec()));
    url
}

/// The purge tags of a response: `Surrogate-Key` (space-separated, as
/// Fastly and Varnish's xkey read it) and `Cache-Tag` (comma-separated, as
/// Cloudflare reads it).
pub fn tags(resp: &impl Fields) -> Vec<Bytes> {
    let mut tags: Vec<Bytes> = Vec::new();
    for v in resp.values(b"surrogate-key") {
        tags.extend(
            v.split(u8::is_ascii_whitespace)
                .filter(|t| !t.is_empty())
                .map(Bytes::copy_from_slice),
        );
    }
    for v in resp.values(b"cache-tag") {
        tags.extend(
            v.split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
                .map(Bytes::copy_from_slice),
        );
    }
    tags.sort();
    tags.dedup();
    tags
}

/// Everything about a storable answer but its body.
pub struct Prepared {
    /// The encoded stored head.
    pub head: Bytes,
    /// The object's metadata.
    pub meta: ObjectMeta,
}

/// Prepares the storage of `resp` (judged storable as `st`), the answer to
/// `req` sent at `request_time` and received at `response_time`.
pub fn prepare(
    cfg: &Config,
    req: &RequestHead,
    resp: &ResponseHead,
    st: &Storable,
    request_time: u64,
    response_time: u64,
) -> Prepared {
    let freshness = Freshness::new(cfg, resp.status, &st.policy, resp, request_time, response_time);
    let kept = resp.iter().filter(|(name, _)| keep_stored(st, name));
    let head = stored::encode(resp.status, &freshness, kept);
    let meta = metadata(cfg, req, resp, &freshness, request_time, response_time);
    Prepared { head, meta }
}

/// Whether a stored copy keeps field `name` (the storable decision's, and
/// never the framing or `Age`, which every answer writes anew).
fn keep_stored(st: &Storable, name: &[u8]) -> bool {
    st.keeps(name) && !name.eq_ignore_ascii_case(b"content-length") && !name.eq_ignore_ascii_case(b"age")
}

fn metadata(
    cfg: &Config,
    req: &RequestHead,
    resp: &impl Fields,
    freshness: &Freshness,
    request_time: u64,
    response_time: u64,
) -> ObjectMeta {
    let variant = secondary_key(cfg, &Vary::of(resp), req).unwrap_or_default();
    let host = req.value(b"host").unwrap_or(b"");
    let mut meta = ObjectMeta::new(at(response_time))
        .with_requested_at(at(request_time))
        .with_variant(variant)
        .with_url(object_url(cfg, host, req.target().as_bytes()))
        .with_fresh_for(Duration::from_secs(
            freshness.lifetime.saturating_sub(freshness.initial_age),
        ));
    meta.tags = tags(resp);
    meta
}

/// The object a `304` makes of the stored `old` (RFC 9111 4.3.4): its
/// fields updated by the `304`'s, freshness computed anew with the new
/// request and response times, the same body.
pub fn freshened(
    cfg: &Config,
    old: &Object,
    not_modified: &ResponseHead,
    request_time: u64,
    response_time: u64,
) -> Option<Object> {
    let stored = StoredHead::parse(old.head())?;
    let updated = freshen_fields(&stored.all_fields(), not_modified);
    let pairs: Vec<(&[u8], &[u8])> = updated
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(b"age") && !n.eq_ignore_ascii_case(b"content-length"))
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    // The Age of the 304 counts for the new initial age.
    let mut with_age = pairs.clone();
    if let Some(age) = not_modified.value(b"age") {
        with_age.push((b"age", age));
    }
    let with_age = Pairs(&with_age);
    let policy = EdgePolicy::of(&with_age);
    let freshness = Freshness::new(
        cfg,
        stored.status(),
        &policy,
        &with_age,
        request_time,
        response_time,
    );
    let head = stored::encode(stored.status(), &freshness, pairs.iter().copied());
    let mut meta = old.meta().clone();
    meta.requested_at = at(request_time);
    meta.stored_at = at(response_time);
    meta.fresh_for = Duration::from_secs(freshness.lifetime.saturating_sub(freshness.initial_age));
    meta.tags = tags(&Pairs(&pairs));
    Some(Object::new(
        CacheKey::from(old.key().to_bytes()),
        meta,
        head,
        old.body().clone(),
    ))
}

/// Owned-free field pairs read as [`Fields`].
struct Pairs<'a>(&'a [(&'a [u8], &'a [u8])]);

impl Fields for Pairs<'_> {
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(n, v)| (*n, *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn request(raw: &str) -> RequestHead {
        let mut b = BytesMut::from(raw.as_bytes());
        proxy_core::codec::parse_request(&mut b, &Default::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_fetch_for_storage_is_a_plain_get_with_our_validators() {
        let req = request(
            "HEAD /a?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nIf-None-Match: \"c\"\r\n\
             X-Forwarded-Host: evil\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
        );
        let mut out = Vec::new();
        let ours = [(&b"if-none-match"[..], b"\"v1\"".to_vec())];
        encode_request(
            &Config::default(),
            &req,
            b"",
            Forward::ForStorage,
            &["x-forwarded-host"],
            &ours,
            "e1",
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "GET /a?x=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nif-none-match: \"v1\"\r\nvia: 1.1 e1\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request(
            &Config::default(),
            &req,
            b"",
            Forward::AsIs,
            &["x-forwarded-host"],
            &[],
            "e1",
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("HEAD /a?x=1 HTTP/1.1\r\n") && s.contains("Range: bytes=0-1\r\n"),
            "{s}"
        );
        assert!(!s.contains("evil"), "{s}");
    }

    #[test]
    fn tags_from_both_fields() {
        let f: [(&str, &str); 3] = [
            ("Surrogate-Key", "photo-1  user-2"),
            ("Cache-Tag", "photo-1, list ,"),
            ("Content-Type", "x"),
        ];
        let t = tags(&f);
        assert_eq!(
            t,
            vec![Bytes::from("list"), Bytes::from("photo-1"), Bytes::from("user-2")]
        );
    }

    #[test]
    fn urls_are_keyed_targets() {
        let c = Config::default();
        assert_eq!(
            object_url(&c, b"A.test:80", b"/x?b=1&a=2"),
            b"a.test/x?a=2&b=1".to_vec()
        );
    }
}
