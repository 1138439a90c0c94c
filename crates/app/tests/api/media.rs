//! What the web tier sends with `/media` (routes/photos.rs): originals and
//! variants live under keys that never get other bytes, so they are
//! public and cacheable for a year by browsers and the CDN; everything
//! else (a missing file) must not be cached that way.

use crate::helpers::{new_client, spawn_app};
use crate::id_of;
use imaging::samples;
use reqwest::header::{HeaderMap, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};

/// The promise of `photos::media`: cache forever, never sniff.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn media_is_public_and_cacheable_forever_while_a_missing_file_is_not() {
    let app = spawn_app().await;
    let owner = app.user("lens").await;
    let mut urls = vec![];
    for (bytes, name, content_type) in [
        (samples::jpeg(300, 200), "a.jpg", "image/jpeg"),
        (samples::png(40, 30), "b.png", "image/png"),
        (samples::webp(40, 30), "c.webp", "image/webp"),
    ] {
        let r = app.upload(&owner, bytes, name, None).await;
        assert_eq!(r.status(), 202);
        let photo = app.wait_processed(&owner, id_of(&r.json().await.unwrap())).await;
        assert_eq!(photo["status"], "ready", "{photo}");
        for (variant, url) in photo["variants"].as_object().unwrap() {
            // Variants are rendered as JPEG whatever the original was.
            let expected = if variant == "original" {
                content_type
            } else {
                "image/jpeg"
            };
            urls.push((
                format!("{name} {variant}"),
                url.as_str().unwrap().to_owned(),
                expected,
            ));
        }
    }
    assert_eq!(urls.len(), 3 * 5);

    // A client without a session: media need none.
    let anonymous = new_client();
    for (what, url, content_type) in &urls {
        let r = anonymous.get(app.url(url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let h = r.headers().clone();
        assert_eq!(header(&h, "content-type"), Some(*content_type), "{what}");
        assert_eq!(header(&h, "cache-control"), Some(IMMUTABLE), "{what}");
        assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"), "{what}");
        // A response a shared cache stores must not set anyone's cookie.
        assert!(h.get("set-cookie").is_none(), "{what}");
        assert!(h.get("vary").is_none(), "{what}: one copy for every client");
        // A strong validator from the immutable key, so a cache whose copy
        // was evicted or outlived a shorter local limit revalidates with a
        // 304 instead of fetching the whole object again.
        let etag = header(&h, "etag")
            .unwrap_or_else(|| panic!("{what}: no etag"))
            .to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
            "{what}: {etag}"
        );
        assert!(h.get("last-modified").is_none(), "{what}");
        let body = r.bytes().await.unwrap();
        assert_eq!(
            header(&h, CONTENT_LENGTH.as_str()),
            Some(body.len().to_string().as_str()),
            "{what}"
        );
        assert!(!body.is_empty(), "{what}");

        // A matching conditional GET: 304, the validator and freshness again,
        // no body.
        for tag in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"nope\", {etag}"),
            "*".into(),
        ] {
            let r = anonymous
                .get(app.url(url))
                .header("if-none-match", &tag)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 304, "{what}: {tag}");
            assert_eq!(header(r.headers(), "etag"), Some(etag.as_str()), "{what}");
            assert_eq!(header(r.headers(), "cache-control"), Some(IMMUTABLE), "{what}");
            assert!(r.bytes().await.unwrap().is_empty(), "{what}: {tag}");
        }
        // A non-matching one: the whole object, with the same validator.
        let r = anonymous
            .get(app.url(url))
            .header("if-none-match", "\"some-other-version\"")
            .header("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(header(r.headers(), "etag"), Some(etag.as_str()), "{what}");
        assert_eq!(r.bytes().await.unwrap(), body, "{what}");

        // HEAD: the same headers, no body.
        let r = anonymous.head(app.url(url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(
            header(r.headers(), CACHE_CONTROL.as_str()),
            Some(IMMUTABLE),
            "{what}"
        );
        assert_eq!(
            header(r.headers(), CONTENT_TYPE.as_str()),
            Some(*content_type),
            "{what}"
        );
        assert!(r.bytes().await.unwrap().is_empty(), "{what}");
    }

    // A file that does not exist (yet: a variant is requested before the
    // worker rendered it) is a 404 that no cache may keep for a year.
    for path in [
        "/media/variants/999999/thumbnail.jpg",
        "/media/originals/999999.jpg",
        "/media/originals/1.txt",
    ] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let cache_control = header(r.headers(), "cache-control").unwrap_or("");
        assert!(
            !cache_control.contains("max-age") && !cache_control.contains("immutable"),
            "{path}: {cache_control}"
        );
    }
}
