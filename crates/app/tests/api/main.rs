//! The application through real HTTP: a server on port 0, an in-process
//! worker and embedded backends in a temporary directory.

mod cdn;
mod delete;
mod helpers;
mod media;
mod origin;
mod stampede;

use helpers::{get_text, new_client, spawn_app, TEST_MAX_BODY};
use imaging::samples;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn id_of(v: &Value) -> i64 {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id (a string of digits) in {v}"))
}

#[tokio::test]
async fn the_whole_flow() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    let (s, me) = app.get_json(&bob, "/api/me").await;
    assert_eq!((s, me["username"].as_str()), (200, Some("bob")));

    let r = app
        .upload(&bob, samples::jpeg(800, 600), "beach.jpg", Some("at the beach"))
        .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "processing");
    let id = id_of(&body);

    let photo = app.wait_processed(&bob, id).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    assert_eq!(photo["owner"], "bob");
    assert_eq!(photo["caption"], "at the beach");
    assert_eq!(
        (photo["width"].as_u64(), photo["height"].as_u64()),
        (Some(800), Some(600))
    );
    let variants = photo["variants"].as_object().unwrap();
    for name in ["original", "thumbnail", "square", "sharpened", "blurred"] {
        let url = variants[name].as_str().unwrap();
        let r = alice.get(app.url(url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.headers()["content-type"], "image/jpeg", "{name}");
        let bytes = r.bytes().await.unwrap();
        let info = imaging::inspect(&bytes, u64::MAX).unwrap();
        match name {
            "thumbnail" => assert_eq!((info.width, info.height), (256, 192)),
            "square" => assert_eq!((info.width, info.height), (512, 512)),
            "original" => assert_eq!((info.width, info.height), (800, 600)),
            _ => assert_eq!((info.width, info.height), (800, 600)),
        }
    }

    let (s, page) = app.get_json(&alice, "/api/users/bob/photos").await;
    assert_eq!(s, 200);
    assert_eq!(id_of(&page["photos"][0]), id);
    assert_eq!(page["next_cursor"], Value::Null);

    let (_, feed) = app.get_json(&alice, "/api/feed").await;
    assert_eq!(feed["photos"].as_array().unwrap().len(), 0);
    let r = alice.post(app.url("/api/users/bob/follow")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (_, profile) = app.get_json(&alice, "/api/users/bob").await;
    assert_eq!(
        (profile["followers"].as_i64(), profile["followed_by_me"].as_bool()),
        (Some(1), Some(true))
    );
    let (_, feed) = app.get_json(&alice, "/api/feed").await;
    assert_eq!(id_of(&feed["photos"][0]), id);
    assert_eq!(feed["photos"][0]["status"], "ready");

    let r = alice
        .delete(app.url("/api/users/bob/follow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, feed) = app.get_json(&alice, "/api/feed").await;
    assert_eq!(feed["photos"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn every_accepted_format_is_recognised_by_its_bytes() {
    let app = spawn_app().await;
    let c = app.user("carol").await;
    for (bytes, name, expected_type) in [
        (samples::png(40, 30), "a.png", "image/png"),
        (samples::webp(40, 30), "b.webp", "image/webp"),
        // The name lies; the bytes decide.
        (samples::jpeg(40, 30), "c.png", "image/jpeg"),
    ] {
        let r = app.upload(&c, bytes, name, None).await;
        assert_eq!(r.status(), 202, "{name}");
        let id = id_of(&r.json().await.unwrap());
        let photo = app.wait_processed(&c, id).await;
        assert_eq!(photo["status"], "ready", "{name}");
        let original = photo["variants"]["original"].as_str().unwrap();
        let r = c.get(app.url(original)).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], expected_type, "{name}");
    }
}

#[tokio::test]
async fn account_rules() {
    let app = spawn_app().await;
    let c = new_client();
    for (name, pw) in [
        ("ab", "password123"),
        ("Alice", "password123"),
        ("a b c", "password123"),
        ("dave", "short"),
    ] {
        let r = app.signup_with(&c, name, pw).await;
        assert_eq!(r.status(), 422, "{name}/{pw}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().len() > 5);
    }
    assert_eq!(app.signup_with(&c, "dave", "password123").await.status(), 201);
    let r = app.signup_with(&new_client(), "dave", "password456").await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "username is taken");

    let wrong = app.login_with(&new_client(), "dave", "password999").await;
    let unknown = app.login_with(&new_client(), "nobody", "password999").await;
    assert_eq!((wrong.status().as_u16(), unknown.status().as_u16()), (401, 401));
    assert_eq!(
        wrong.json::<Value>().await.unwrap(),
        unknown.json::<Value>().await.unwrap()
    );

    let r = c
        .post(app.url("/api/signup"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(app.url("/api/signup"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"username\":\"{}\",\"password\":\"x\"}}",
            "a".repeat(100_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(app.get_json(&new_client(), "/api/me").await.0, 401);
}

fn session_cookie(r: &reqwest::Response) -> String {
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn logout_kills_the_session_and_login_rotates_it() {
    let app = spawn_app().await;
    let c = new_client();
    let r = app.signup_with(&c, "erin", "password123").await;
    let first = session_cookie(&r);
    assert!(
        first.len() >= "sid=".len() + 32,
        "token must carry at least 128 bits"
    );

    let r = app.login_with(&c, "erin", "password123").await;
    assert_eq!(r.status(), 200);
    let second = session_cookie(&r);
    assert_ne!(first, second, "login issues a new session id");

    let replay = |cookie: String| {
        let url = app.url("/api/me");
        async move {
            reqwest::Client::new()
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        replay(first.clone()).await,
        401,
        "the session replaced at login is dead"
    );
    assert_eq!(replay(second.clone()).await, 200);

    let r = c.post(app.url("/api/logout")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        replay(second).await,
        401,
        "a cookie replayed after logout is refused"
    );
    assert_eq!(app.get_json(&c, "/api/me").await.0, 401);
    // Signing up a second account from a logged-in browser ends the first
    // account's session too.
    let r = app.login_with(&c, "erin", "password123").await;
    let third = session_cookie(&r);
    let r = app.signup_with(&c, "erin2", "password123").await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        replay(third).await,
        401,
        "the session replaced at sign-up is dead"
    );
}

#[tokio::test]
async fn refused_uploads_leave_nothing_behind() {
    let app = spawn_app().await;
    let c = app.user("frank").await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("text", b"hello, this is not an image".to_vec(), 415),
        ("gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), 415),
        ("svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(), 415),
        ("png header only", b"\x89PNG\r\n\x1a\n".to_vec(), 415),
        ("bomb", samples::png_bomb(50_000, 50_000), 422),
        ("oversized", vec![0xFF; TEST_MAX_BODY + 1024], 413),
    ];
    for (name, bytes, status) in cases {
        let r = app.upload(&c, bytes, "x.png", None).await;
        assert_eq!(r.status(), status, "{name}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_string(), "{name}: {v}");
        app.assert_nothing_stored("frank").await;
    }

    // Malformed multipart, a missing file, an unknown field, a huge caption.
    let r = c
        .post(app.url("/api/photos"))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let form = reqwest::multipart::Form::new().text("caption", "no file");
    let r = c
        .post(app.url("/api/photos"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(samples::png(4, 4)))
        .text("other", "x");
    let r = c
        .post(app.url("/api/photos"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .upload(&c, samples::png(4, 4), "a.png", Some(&"x".repeat(501)))
        .await;
    assert_eq!(r.status(), 422);
    // Not multipart at all: 415, in the API's error shape.
    let r = c
        .post(app.url("/api/photos"))
        .header("content-type", "image/png")
        .body(samples::png(4, 4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("multipart"), "{body}");
    app.assert_nothing_stored("frank").await;

    // Not logged in.
    let r = app.upload(&new_client(), samples::png(4, 4), "a.png", None).await;
    assert_eq!(r.status(), 401);
    app.assert_nothing_stored("frank").await;
}

#[tokio::test]
async fn an_undecodable_image_ends_failed_after_its_retries() {
    let app = spawn_app().await;
    let c = app.user("gina").await;
    let r = app
        .upload(&c, samples::png_corrupt_body(64, 64), "bad.png", None)
        .await;
    assert_eq!(r.status(), 202, "the header is valid, so the upload is accepted");
    let id = id_of(&r.json().await.unwrap());
    let photo = app.wait_processed(&c, id).await;
    assert_eq!(photo["status"], "failed");
    assert_eq!(
        photo["variants"].as_object().unwrap().len(),
        1,
        "only the original"
    );
    let depth = app.backends.queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight, depth.dead), (0, 0, 1));
}

#[tokio::test]
async fn pagination_stays_correct_while_photos_arrive() {
    let app = spawn_app().await;
    let h = app.user("hana").await;
    let fan = app.user("hanafan").await;
    let r = fan.post(app.url("/api/users/hana/follow")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let mut ids = vec![];
    for _ in 0..5 {
        let r = app.upload(&h, samples::png(8, 8), "p.png", None).await;
        ids.push(id_of(&r.json().await.unwrap()));
    }
    ids.reverse();
    let (_, p1) = app.get_json(&h, "/api/users/hana/photos?limit=2").await;
    let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
    // A new photo arrives between pages.
    app.upload(&h, samples::png(8, 8), "p.png", None).await;
    let (_, p2) = app
        .get_json(&h, &format!("/api/users/hana/photos?limit=2&cursor={cursor}"))
        .await;
    let cursor = p2["next_cursor"].as_str().unwrap().to_owned();
    let (_, p3) = app
        .get_json(&h, &format!("/api/users/hana/photos?limit=2&cursor={cursor}"))
        .await;
    let seen: Vec<i64> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p["photos"].as_array().unwrap().iter().map(id_of))
        .collect();
    assert_eq!(
        seen, ids,
        "every photo once, newest first, none shifted by the newcomer"
    );
    assert_eq!(p3["next_cursor"], Value::Null);

    // The first page, read again, shows the newcomer: the list cache was
    // invalidated by the upload.
    let (_, again) = app.get_json(&h, "/api/users/hana/photos?limit=2").await;
    let newest = id_of(&again["photos"][0]);
    assert!(newest > ids[0]);

    // The follower's feed pages the same way: all six, newest first, once
    // processed (a photo enters feeds when it is ready).
    for id in std::iter::once(newest).chain(ids.iter().copied()) {
        app.wait_processed(&h, id).await;
    }
    let (_, f1) = app.get_json(&fan, "/api/feed?limit=4").await;
    let cursor = f1["next_cursor"].as_str().unwrap().to_owned();
    let (_, f2) = app
        .get_json(&fan, &format!("/api/feed?limit=4&cursor={cursor}"))
        .await;
    let feed: Vec<i64> = [&f1, &f2]
        .iter()
        .flat_map(|p| p["photos"].as_array().unwrap().iter().map(id_of))
        .collect();
    let expected: Vec<i64> = std::iter::once(newest).chain(ids.iter().copied()).collect();
    assert_eq!(feed, expected);
    assert_eq!(f2["next_cursor"], Value::Null);

    for bad in [
        "cursor=abc",
        "cursor=-1",
        "limit=0",
        "limit=1000",
        "limit=abc",
        "limit=-5",
    ] {
        let (s, v) = app.get_json(&h, &format!("/api/users/hana/photos?{bad}")).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }
    assert_eq!(app.get_json(&h, "/api/users/nobody/photos").await.0, 404);
    assert_eq!(app.get_json(&h, "/api/users/..%2f/photos").await.0, 404);
}

#[tokio::test]
async fn follow_rules() {
    let app = spawn_app().await;
    let i = app.user("ivan").await;
    app.user("judy").await;
    assert_eq!(
        i.post(app.url("/api/users/ivan/follow"))
            .send()
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        i.post(app.url("/api/users/nobody/follow"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        new_client()
            .post(app.url("/api/users/judy/follow"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Following twice and unfollowing a stranger are not errors.
    for _ in 0..2 {
        assert_eq!(
            i.post(app.url("/api/users/judy/follow"))
                .send()
                .await
                .unwrap()
                .status(),
            204
        );
    }
    let (_, p) = app.get_json(&i, "/api/users/judy").await;
    assert_eq!(p["followers"], 1);
    assert_eq!(app.get_json(&new_client(), "/api/feed").await.0, 401);
}

#[tokio::test]
async fn media_paths_cannot_escape_the_blob_store() {
    let app = spawn_app().await;
    let c = new_client();
    for path in [
        "/media/../scalestack.db",
        "/media/..%2fscalestack.db",
        "/media/originals/..%2f..%2fscalestack.db",
        "/media/%2fetc%2fpasswd",
        "/media/originals/1.jpg",
        "/media/originals/1.txt",
    ] {
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn operational_endpoints() {
    let app = spawn_app().await;
    let c = app.user("kim").await;
    let r = app.upload(&c, samples::png(16, 16), "a.png", None).await;
    let id = id_of(&r.json().await.unwrap());
    app.wait_processed(&c, id).await;
    // Twice, so the second read of a ready photo is a cache hit.
    app.get_json(&c, &format!("/api/photos/{id}")).await;
    app.get_json(&c, &format!("/api/photos/{id}")).await;

    assert_eq!(c.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    let page = c.get(app.url("/")).send().await.unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    // The page's script, now a file of its own, is the UI calling the API.
    assert!(page.text().await.unwrap().contains("<script src=\"/static/app."));
    let (_, assets) = origin::page_assets(&app, &c).await;
    let script = assets.iter().find(|u| u.ends_with(".js")).unwrap();
    assert!(get_text(&c, &app.url(script)).await.contains("/api/photos"));
    let r = c.get(app.url("/api/photos/1")).send().await.unwrap();
    assert!(r.headers().contains_key("x-request-id"));

    let metrics = get_text(&c, &app.url("/metrics")).await;
    for needle in [
        r#"scalestack_http_requests_total{method="POST",route="/api/photos",status="202"} 1"#,
        r#"scalestack_http_request_duration_seconds_bucket{method="GET",route="/api/photos/{id}""#,
        r#"scalestack_cache_requests_total{cache="photo",result="hit"}"#,
        r#"scalestack_cache_requests_total{cache="photo",result="miss"}"#,
        r#"scalestack_queue_depth{state="ready"} 0"#,
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    assert_eq!(app.get_json(&c, "/api/photos/999999").await.0, 404);
    assert_eq!(app.get_json(&c, "/api/photos/abc").await.0, 404);
    assert_eq!(app.get_json(&c, "/no/such/route").await.0, 404);
    // Requests that matched no route are counted too, under one series.
    let metrics = get_text(&c, &app.url("/metrics")).await;
    let needle = r#"scalestack_http_requests_total{method="GET",route="unmatched",status="404"} 1"#;
    assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
}

#[tokio::test]
async fn a_reader_with_a_read_floor_is_never_served_a_stale_cached_list() {
    let app = spawn_app().await;
    let store = app.backends.store.clone();
    let owner = store
        .create_user(&domain::Username::parse("floor").unwrap(), "h")
        .await
        .unwrap();
    let catalog = app::catalog::Catalog::new(
        store.clone(),
        Arc::new(cache::InProcessCache::new(cache::CacheConfig::default())),
        Arc::new(app::metrics::Metrics::new()),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let page = domain::Page {
        before: None,
        limit: 10,
    };
    assert!(catalog.user_photo_ids(owner, page).await.unwrap().is_empty());
    // A photo the cached page does not know of (as if the page had been
    // filled from a replica that had not replayed it).
    let photo = store
        .create_photo(&domain::NewPhoto {
            owner_id: owner,
            caption: None,
            format: domain::ImageFormat::Png,
            width: 1,
            height: 1,
        })
        .await
        .unwrap();
    assert!(
        catalog.user_photo_ids(owner, page).await.unwrap().is_empty(),
        "no floor: the cached page (stale within its TTL)"
    );
    let (ids, _) = domain::consistency::scope(Some(1), catalog.user_photo_ids(owner, page)).await;
    assert_eq!(ids.unwrap(), [photo.id], "with a floor: read through");
}
