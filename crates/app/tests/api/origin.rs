//! The application as a CDN's origin: the page is revalidated on every
//! load, its script and style live under content-hashed URLs cached for a
//! year, and no API answer may be stored by a shared cache.

use crate::helpers::{new_client, spawn_app, TestApp};
use app::http_cache::content_hash;
use imaging::samples;
use reqwest::Client;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

/// The `/static/...` URLs the page at `/` links to, with the HTML.
pub async fn page_assets(app: &TestApp, c: &Client) -> (String, Vec<String>) {
    let html = c.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    let urls = html
        .split('"')
        .filter(|s| s.starts_with("/static/"))
        .map(str::to_owned)
        .collect();
    (html, urls)
}

#[tokio::test]
async fn the_page_is_revalidated_and_its_assets_are_versioned_and_immutable() {
    let app = spawn_app().await;
    let c = new_client();

    let r = c.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").unwrap().starts_with("text/html"));
    assert_eq!(header(&r, "cache-control"), Some("no-cache"));

    let (html, urls) = page_assets(&app, &c).await;
    assert_eq!(urls.len(), 2, "{html}");
    let mut seen = Vec::new();
    for url in &urls {
        let name = url.strip_prefix("/static/").unwrap();
        let (stem, rest) = name.split_once('.').unwrap();
        let (hash, ext) = rest.split_once('.').unwrap();
        assert_eq!(stem, "app", "{url}");
        let r = c.get(app.url(url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let content_type = match ext {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            other => panic!("unexpected asset type {other}"),
        };
        assert_eq!(header(&r, "content-type"), Some(content_type), "{url}");
        assert_eq!(header(&r, "cache-control"), Some(IMMUTABLE), "{url}");
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"), "{url}");
        let etag = format!("\"{hash}\"");
        assert_eq!(header(&r, "etag"), Some(etag.as_str()), "{url}");
        assert!(r.headers().get("set-cookie").is_none(), "{url}");
        let body = r.bytes().await.unwrap();
        // The name is the hash of the very bytes served under it.
        assert_eq!(content_hash(&body), hash, "{url}");
        seen.push(ext.to_owned());

        let r = c
            .get(app.url(url))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{url}");
        assert_eq!(header(&r, "cache-control"), Some(IMMUTABLE), "{url}");
        assert!(r.bytes().await.unwrap().is_empty(), "{url}");
        let r = c
            .get(app.url(url))
            .header("if-none-match", "\"0000000000000000\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.bytes().await.unwrap(), body, "{url}");
    }
    seen.sort();
    assert_eq!(seen, ["css", "js"]);

    // Another deploy's hash, or a made-up name: 404, never kept for a year.
    for path in [
        "/static/app.0000000000000000.js",
        "/static/app.0000000000000000.css",
        "/static/app.js",
        "/static/index.html",
    ] {
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let cache_control = header(&r, "cache-control").unwrap_or("");
        assert!(
            !cache_control.contains("max-age") && !cache_control.contains("immutable"),
            "{path}: {cache_control}"
        );
    }
}

#[tokio::test]
async fn no_api_answer_may_be_stored_by_a_shared_cache() {
    let app = spawn_app().await;
    let anonymous = new_client();
    let bob = app.user("bob").await;

    let r = app.upload(&bob, samples::jpeg(64, 48), "a.jpg", None).await;
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "cache-control"), Some("private, no-store"), "upload");
    let id = crate::id_of(&r.json().await.unwrap());
    app.wait_processed(&bob, id).await;

    let photo = format!("/api/photos/{id}");
    let cases: [(&Client, &str, u16); 9] = [
        (&bob, "/api/me", 200),
        (&bob, "/api/feed", 200),
        (&bob, &photo, 200),
        (&anonymous, &photo, 200),
        (&anonymous, "/api/users/bob", 200),
        (&anonymous, "/api/users/bob/photos", 200),
        (&anonymous, "/api/me", 401),
        (&anonymous, "/api/photos/999999", 404),
        (&anonymous, "/api/no/such/route", 404),
    ];
    for (c, path, status) in cases {
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(header(&r, "cache-control"), Some("private, no-store"), "{path}");
    }
    let r = anonymous
        .post(app.url("/api/login"))
        .json(&serde_json::json!({"username": "bob", "password": "wrong password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "cache-control"), Some("private, no-store"), "login");
}
