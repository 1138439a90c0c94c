//! The CDN edge as `up` runs it (issue 9), in front of the load balancer:
//! an uploaded photo's variants and the page's hashed script and style come
//! from the edge (`Cache-Status` a hit the second time), deleting the photo
//! purges it from the edge before the delete is answered, and killing the
//! edge under a real browser session (headless Chromium) loses no image:
//! the page falls back to the origin for each asset.

use crate::browser::Browser;
use crate::helpers::{http_client, sample, Up};
use crate::{signup, upload_and_wait};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The edge's name in `Cache-Status`: `<site>-cdn-N`, site `local`.
const EDGE: &str = "local-cdn-1";

/// A photo's variant URLs (original included) from the API's answer:
/// (name, absolute URL).
fn variant_urls(photo: &Value) -> Vec<(String, String)> {
    photo["variants"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// The values of every `attr="…"` in `html`.
fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

/// `GET url`: status, `Cache-Status`, body.
async fn fetch(c: &reqwest::Client, url: &str) -> (u16, String, Vec<u8>) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let cache_status = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cache_status, r.bytes().await.unwrap().to_vec())
}

/// The first fetch of `url` from the edge is a miss that stores the
/// answer, the second a hit with the same bytes. Returns the bytes.
async fn miss_then_hit(c: &reqwest::Client, url: &str) -> Vec<u8> {
    let (status, first, body) = fetch(c, url).await;
    assert_eq!(status, 200, "{url}");
    assert!(
        first.starts_with(&format!("{EDGE}; fwd=miss")) && first.ends_with("; stored"),
        "{url}: first fetch {first:?}"
    );
    let (status, second, again) = fetch(c, url).await;
    assert_eq!(status, 200, "{url}");
    assert!(
        second.starts_with(&format!("{EDGE}; hit; ttl=")),
        "{url}: second fetch {second:?}"
    );
    assert_eq!(body, again, "{url}: a hit serves the stored bytes");
    body
}

#[tokio::test]
async fn photos_and_page_assets_come_from_the_edge_and_a_delete_purges_them() {
    let up = Up::cdn_tier(2, 1);
    up.wait_up(90).await;
    let (edge, admin) = (&up.edges[0], &up.edge_admins[0]);
    let owner = signup(&up.web, "cdn_owner").await;
    let photo = upload_and_wait(&up.web, &owner).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    let id: i64 = photo["id"].as_str().unwrap().parse().unwrap();

    // The API points at the edge; each variant is a miss, then a hit.
    let variants = variant_urls(&photo);
    assert_eq!(variants.len(), 5, "{photo}");
    let anonymous = http_client(false);
    for (name, url) in &variants {
        assert!(url.starts_with(&format!("{edge}/media/")), "{name}: {url}");
        let body = miss_then_hit(&anonymous, url).await;
        assert!(body.starts_with(&[0xff, 0xd8]), "{name} is a JPEG");
    }

    // The page (from the origin) loads its hashed script and style from
    // the edge.
    let page = anonymous.get(&up.web).send().await.unwrap().text().await.unwrap();
    let assets: Vec<String> = attribute_values(&page, "src")
        .into_iter()
        .chain(attribute_values(&page, "href"))
        .filter(|u| u.contains("/static/app."))
        .collect();
    assert_eq!(assets.len(), 2, "one script and one style: {assets:?}");
    for url in &assets {
        assert!(url.starts_with(&format!("{edge}/static/app.")), "{url}");
        assert!(url.ends_with(".js") || url.ends_with(".css"), "{url}");
        miss_then_hit(&anonymous, url).await;
    }

    // Deleting the photo purges its tag on the edge before the answer.
    let asked = Instant::now();
    let r = owner
        .delete(format!("{}/api/photos/{id}", up.web))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let answered = asked.elapsed();
    let mut still_served = Vec::new();
    for (name, url) in &variants {
        let (status, cache_status, _) = fetch(&anonymous, url).await;
        if status == 200 {
            still_served.push(format!("{name}: {cache_status}"));
        }
    }
    println!(
        "cdn: delete answered in {answered:?}; {} of {} variant URLs still served by the edge",
        still_served.len(),
        variants.len()
    );
    assert!(
        still_served.is_empty(),
        "served after the delete: {still_served:?}"
    );
    let r = owner
        .get(format!("{}/api/photos/{id}", up.web))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let metrics = crate::helpers::metrics_text(admin).await;
    assert_eq!(
        sample(
            &metrics,
            "scalestack_cdn_purges_total",
            &["kind=\"tag\"", "mode=\"hard\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}

/// What the page shows: who is signed in, where its script and style came
/// from, whether the style applied, and every image.
const PAGE_STATE: &str = r#"(() => ({
  who: document.getElementById("who").textContent,
  appShown: !document.getElementById("app").classList.contains("hidden"),
  background: getComputedStyle(document.body).backgroundColor,
  scripts: [...document.scripts].filter((s) => s.src).map((s) => s.src),
  styles: [...document.querySelectorAll("link[rel=stylesheet]")].map((l) => l.href),
  images: [...document.images].map((i) => ({
    src: i.src,
    complete: i.complete,
    width: i.naturalWidth,
    fallback: i.dataset.cdnFallback === "1",
  })),
}))()"#;

/// `body`'s background in app.css: the style applied.
const STYLED_BACKGROUND: &str = "rgb(244, 245, 247)";

/// On a freshly loaded signed-in page, waits for `photos` thumbnails,
/// opens the first photo (its five variants in the overlay), and waits
/// until every image is done and the style applied. An image is done when
/// it loaded, or failed where nothing falls back any more: from the origin,
/// or from the CDN (`cdn`) once the page's fallback handled it (one that
/// just failed from the CDN is about to be loaded again from the origin).
/// Returns [`PAGE_STATE`]. The document is marked as seen, so the next call
/// waits for the next document, not this one.
async fn show_photos(b: &mut Browser, photos: usize, cdn: &str) -> Value {
    b.wait_for(
        &format!("!window.seenByTest && document.querySelectorAll('#my-grid img').length === {photos}"),
        PAGE_STATE,
        30,
    )
    .await;
    b.eval("document.querySelector('#my-grid .thumb').click(), true")
        .await;
    // Not done in time: the checks on the state say what is missing.
    let done = b
        .poll_until(
            &format!(
                "document.querySelectorAll('#overlay-body img').length === 5 \
                 && [...document.images].every((i) => i.complete && (i.naturalWidth > 0 \
                   || i.dataset.cdnFallback === '1' || !i.src.startsWith('{cdn}/'))) \
                 && getComputedStyle(document.body).backgroundColor === '{STYLED_BACKGROUND}'"
            ),
            30,
        )
        .await;
    if !done {
        println!("cdn: the page did not settle in 30 s");
    }
    let state = b.eval(PAGE_STATE).await;
    b.eval("window.seenByTest = true").await;
    state
}

/// Checks that the page is signed in as `user` and styled, that its script
/// and style came from `from`, and that every image loaded from `from`
/// (having fallen back to it from the CDN when `fallback`); returns how many
/// images there are.
fn check_page(state: &Value, user: &str, from: &str, fallback: bool) -> usize {
    assert!(
        state["who"].as_str().unwrap().contains(user),
        "the script ran: {state}"
    );
    assert_eq!(state["appShown"], true, "{state}");
    assert_eq!(
        state["background"], STYLED_BACKGROUND,
        "the style applied: {state}"
    );
    let scripts = state["scripts"].as_array().unwrap();
    assert_eq!(scripts.len(), 1, "{state}");
    assert!(
        scripts[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{from}/static/app.")),
        "script from {from}: {state}"
    );
    let styles = state["styles"].as_array().unwrap();
    assert_eq!(styles.len(), 1, "{state}");
    assert!(
        styles[0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{from}/static/app.")),
        "style from {from}: {state}"
    );
    let images = state["images"].as_array().unwrap();
    let failed: Vec<&Value> = images
        .iter()
        .filter(|i| i["width"].as_u64().unwrap_or(0) == 0)
        .collect();
    assert_eq!(failed.len(), 0, "images that failed to load: {failed:?}");
    for image in images {
        assert!(
            image["src"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{from}/media/"))
                && image["fallback"] == fallback,
            "image from {from} (fallback: {fallback}): {image}"
        );
    }
    images.len()
}

/// The issue's browser test: a signed-in page showing photos from the
/// edge, the edge killed (held down by `ctl kill`), the page reloaded:
/// script, style and every image come from the origin instead.
#[tokio::test]
async fn killing_the_edge_under_a_browser_session_loses_no_image() {
    const PHOTOS: usize = 2;
    let up = Up::cdn_tier(2, 1);
    up.wait_up(90).await;
    let edge = up.edges[0].clone();
    let c = signup(&up.web, "viewer").await;
    for _ in 0..PHOTOS {
        let photo = upload_and_wait(&up.web, &c).await;
        assert_eq!(photo["status"], "ready", "{photo}");
    }

    // Tall enough that every lazily loaded thumbnail is in view.
    let mut b = Browser::launch(1280, 3000).await;
    b.disable_cache().await;
    b.navigate(&up.web).await;
    b.wait_for(
        "!document.getElementById('auth').classList.contains('hidden')",
        PAGE_STATE,
        30,
    )
    .await;
    // Log in through the page's own form.
    b.eval(
        r#"(() => {
          const f = document.getElementById("login-form");
          f.username.value = "viewer";
          f.password.value = "password123";
          f.requestSubmit();
          return true;
        })()"#,
    )
    .await;
    let state = show_photos(&mut b, PHOTOS, &edge).await;
    let images = check_page(&state, "viewer", &edge, false);
    assert!(images >= PHOTOS + 5, "thumbnails and the five variants: {state}");

    // The edge killed and held down by the operator.
    let pid = up.pid("cdn-1").unwrap();
    let out = up.ctl_ok(&["kill", "cdn-1"]);
    assert!(out.contains("stays down"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !up
        .ctl_ok(&["ps"])
        .lines()
        .any(|l| l.starts_with("cdn-1") && l.contains("stopped"))
        || crate::helpers::alive(pid)
    {
        assert!(Instant::now() < deadline, "cdn-1 not stopped:\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let edge_addr = edge.trim_start_matches("http://");
    assert!(
        tokio::net::TcpStream::connect(edge_addr).await.is_err(),
        "nothing listens on the edge's port"
    );

    // Reloaded (nothing from the browser's cache): everything the edge
    // served comes from the origin, the page's own address.
    b.reload().await;
    let state = show_photos(&mut b, PHOTOS, &edge).await;
    let after = check_page(&state, "viewer", &up.web, true);
    println!("cdn: {images} images from the edge; after it was killed {after} from the origin, 0 failed");
    assert_eq!(after, images, "the same images: {state}");
    drop(b);
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
