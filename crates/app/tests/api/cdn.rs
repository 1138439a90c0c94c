//! The web tier in front of CDN edges: `/media` answers carry the photo's
//! purge tag, a delete purges it on every edge (retrying an edge that is
//! down, giving up in the end, counted on `/metrics`), and the page loads
//! its script, style and images from the CDN with a fallback to the origin.
//! The edges are scripted HTTP listeners that count what they receive.

use crate::helpers::{eventually, new_client, spawn_app_with, TestApp};
use crate::id_of;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A scripted CDN admin port: answers the n-th request with `statuses[n]`
/// (200 once the script runs out) and keeps every request line.
#[derive(Clone)]
struct Edge {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Edge {
    /// An edge on a free port.
    async fn start(statuses: &[u16]) -> Edge {
        Edge::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), statuses)
    }

    /// An edge serving on `listener`.
    fn on(listener: TcpListener, statuses: &[u16]) -> Edge {
        let addr = listener.local_addr().unwrap();
        let edge = Edge {
            url: format!("http://{addr}"),
            requests: Arc::default(),
        };
        let (requests, statuses) = (edge.requests.clone(), statuses.to_vec());
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let status = {
                    let n = requests.lock().unwrap().len();
                    statuses.get(n).copied().unwrap_or(200)
                };
                answer(conn, status, &requests).await;
            }
        });
        edge
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one request head, records its request line, answers `status`
/// with a JSON body like the edge's, and closes.
async fn answer(mut conn: TcpStream, status: u16, requests: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    requests
        .lock()
        .unwrap()
        .push(text.lines().next().unwrap_or("").to_owned());
    let body = if status == 200 {
        r#"{"purged":5}"#
    } else {
        r#"{"error":"scripted"}"#
    };
    let response = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn purges(app: &TestApp, outcome: &str) -> f64 {
    app.metric(&format!("scalestack_cdn_purges_total{{outcome=\"{outcome}\"}}"))
        .await
}

/// Uploads a photo as a new user `name`, waits until it is ready, and
/// returns the user, the photo's id and its media paths (without the base).
async fn photo(app: &TestApp, name: &str, base: &str) -> (reqwest::Client, i64, Vec<String>) {
    let c = app.user(name).await;
    let photo = app.ready_photo(&c).await;
    let paths = photo["variants"]
        .as_object()
        .unwrap()
        .values()
        .map(|u| {
            let u = u.as_str().unwrap();
            assert!(u.starts_with(&format!("{base}/media/")), "{u}");
            u[base.len()..].to_owned()
        })
        .collect();
    (c, id_of(&photo), paths)
}

#[tokio::test]
async fn media_answers_carry_the_photos_purge_tag() {
    let app = spawn_app_with(|_| {}).await;
    let (_, id, paths) = photo(&app, "tagged", "").await;
    assert_eq!(paths.len(), 5);
    let anonymous = new_client();
    let tag = format!("photo-{id}");
    for path in &paths {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let etag = r.headers()["etag"].clone();
        for field in ["surrogate-key", "cache-tag"] {
            assert_eq!(r.headers()[field], tag.as_str(), "{path} {field}");
        }
        // A 304 updates what a cache stored: the tags come with it.
        let r = anonymous
            .get(app.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{path}");
        assert_eq!(r.headers()["surrogate-key"], tag.as_str(), "{path}");
        assert_eq!(r.headers()["cache-tag"], tag.as_str(), "{path}");
    }
    // A 404 of a photo's key is tagged too (should a cache keep it); a
    // key that names no photo has no tag.
    let r = anonymous
        .get(app.url("/media/variants/999999/thumbnail.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["surrogate-key"], "photo-999999");
    assert_eq!(r.headers()["cache-tag"], "photo-999999");
    for path in ["/media/other/1.jpg", "/media/originals/x.jpg", "/media/..%2Fetc"] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.headers().get("surrogate-key").is_none(), "{path}");
        assert!(r.headers().get("cache-tag").is_none(), "{path}");
    }
}

/// Three edges: one takes the purge at once, one answers 503 twice first,
/// one is down (refuses connections) until after the delete answered.
/// Each ends up with exactly one taken purge of the photo's tag.
#[tokio::test]
async fn a_delete_purges_every_edge_retrying_those_that_fail() {
    let healthy = Edge::start(&[]).await;
    let flaky = Edge::start(&[503, 503]).await;
    let down = free_port();
    let edges = vec![
        healthy.url.clone(),
        // A trailing slash is fine.
        format!("{}/", flaky.url),
        format!("http://{down}"),
    ];
    let app = spawn_app_with(|s| s.cdn_purge_urls = edges).await;
    let (owner, id, _) = photo(&app, "purged", "").await;
    assert_eq!(purges(&app, "ok").await, 0.0, "exported before any purge");

    let r = owner
        .delete(app.url(&format!("/api/photos/{id}")))
        .send()
        .await
        .unwrap();
    // The answer came while one edge is still down: it does not wait for
    // every purge to be taken.
    assert_eq!(r.status(), 204);
    let expected = format!("POST /purge?tag=photo-{id} HTTP/1.1");
    eventually("the healthy and the flaky edge to take the purge", || async {
        healthy.requests().len() == 1 && flaky.requests().len() == 3
    })
    .await;
    assert_eq!(healthy.requests(), std::slice::from_ref(&expected));
    assert_eq!(
        flaky.requests(),
        vec![expected.clone(); 3],
        "retried after each 503"
    );
    eventually("a refused connection counted as a retry", || async {
        purges(&app, "retry").await >= 3.0
    })
    .await;

    // The edge comes up: the purge reaches it on a later retry.
    let late = Edge::on(TcpListener::bind(down).await.unwrap(), &[]);
    eventually("the edge that was down to take the purge", || async {
        late.requests().len() == 1
    })
    .await;
    assert_eq!(late.requests(), [expected]);
    eventually("every edge counted", || async { purges(&app, "ok").await == 3.0 }).await;
    assert_eq!(purges(&app, "gave_up").await, 0.0);
    assert_eq!(purges(&app, "rejected").await, 0.0);
    assert_eq!(
        healthy.requests().len(),
        1,
        "an edge that took it is not asked again"
    );
    assert_eq!(flaky.requests().len(), 3);
}

/// An edge that never takes the purge is given up after the retry schedule
/// (1 s here); one that refuses it for good (400) is not retried.
#[tokio::test]
async fn an_edge_that_never_takes_the_purge_is_given_up() {
    let failing = Edge::start(&[503; 1000]).await;
    let refusing = Edge::start(&[400; 1000]).await;
    let edges = vec![failing.url.clone(), refusing.url.clone()];
    let app = spawn_app_with(|s| {
        s.cdn_purge_urls = edges;
        s.cdn_purge_retry_secs = 1;
    })
    .await;
    let (owner, id, _) = photo(&app, "givenup", "").await;
    let r = owner
        .delete(app.url(&format!("/api/photos/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually("the failing edge to be given up", || async {
        purges(&app, "gave_up").await == 1.0
    })
    .await;
    let tries = failing.requests().len();
    assert!(tries >= 2, "given up after {tries} request(s)");
    assert_eq!(purges(&app, "retry").await, (tries - 1) as f64);
    assert_eq!(purges(&app, "rejected").await, 1.0);
    assert_eq!(refusing.requests().len(), 1, "a refusal is not retried");
    assert_eq!(purges(&app, "ok").await, 0.0);
    // The photo is deleted all the same.
    assert_eq!(app.get_json(&owner, &format!("/api/photos/{id}")).await.0, 404);
}

#[tokio::test]
async fn bad_cdn_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let backends = backends::Backends::connect(&backends::BackendsConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .unwrap();
    for settings in [
        app::WebSettings {
            media_base_url: "127.0.0.1:8081".into(),
            ..Default::default()
        },
        app::WebSettings {
            cdn_purge_urls: vec!["http://127.0.0.1:8092".into(), "edge-2:8092".into()],
            ..Default::default()
        },
    ] {
        let e = app::Application::build_with("127.0.0.1:0".parse().unwrap(), backends.clone(), settings)
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("invalid web settings"), "{e}");
    }
}

/// The page's script and style, and the API's media URLs, point to the
/// CDN (`media_base_url`); the page falls back to its origin, same path,
/// for whatever fails to load from there, and the origin serves those
/// paths.
#[tokio::test]
async fn the_page_loads_from_the_cdn_and_falls_back_to_the_origin() {
    let cdn = "http://127.0.0.1:8081";
    let app = spawn_app_with(|s| s.media_base_url = format!("{cdn}/")).await;
    let anonymous = new_client();
    let r = anonymous.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();

    // Both assets from the CDN, under their hashed names.
    let src = attribute(&page, r#"<script src=""#);
    let href = attribute(&page, r#"<link rel="stylesheet" href=""#);
    for (url, ext) in [(&src, "js"), (&href, "css")] {
        let path = url
            .strip_prefix(cdn)
            .unwrap_or_else(|| panic!("{url} is not on the CDN"));
        assert!(path.starts_with("/static/app.") && path.ends_with(ext), "{path}");
        // The fallback's target: the same path on the origin.
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
    }

    // The fallback: one capturing error listener, registered before the
    // stylesheet starts loading (so before anything can fail), that knows
    // the CDN's base and covers scripts, stylesheets and images (those
    // app.js creates later too), without inline handlers.
    let fallback = page
        .find(r#"window.addEventListener("error""#)
        .expect("the fallback listener");
    assert!(fallback < page.find(r#"<link rel="stylesheet""#).unwrap());
    assert!(
        page.contains(&format!("var base = \"{cdn}\";")),
        "the base, without its slash"
    );
    assert!(page.contains("}, true);"), "a capturing listener");
    for tag in ["\"LINK\"", "\"SCRIPT\"", "\"IMG\""] {
        assert!(page.contains(tag), "{tag} not covered");
    }
    assert!(!page.contains(" onerror="), "inline handlers");

    // API answers: media URLs on the CDN.
    let (_, _, paths) = photo(&app, "cdnuser", cdn).await;
    for path in paths {
        let r = anonymous.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "the origin serves {path} too");
    }
}

/// The value of the attribute that `prefix` opens.
fn attribute(page: &str, prefix: &str) -> String {
    let start = page.find(prefix).unwrap_or_else(|| panic!("no {prefix}")) + prefix.len();
    page[start..].split('"').next().unwrap().to_owned()
}
