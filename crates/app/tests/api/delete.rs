//! `DELETE /api/photos/{id}`: who may delete, and that everything of the
//! photo goes (row, lists, feeds, cached entries, original and variants,
//! job), also when the delete lands while the worker renders it.

use crate::helpers::{eventually, new_client, spawn_app, TestApp};
use crate::id_of;
use imaging::samples;
use reqwest::Client;
use serde_json::Value;

async fn delete(app: &TestApp, c: &Client, id: impl std::fmt::Display) -> (u16, Value) {
    let r = c
        .delete(app.url(&format!("/api/photos/{id}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cache_control = r.headers().get("cache-control").cloned();
    let body = r.text().await.unwrap();
    assert_eq!(
        cache_control.as_ref().map(|v| v.to_str().unwrap()),
        Some("private, no-store"),
        "{status}"
    );
    if status == 204 {
        assert!(body.is_empty(), "{body}");
        return (status, Value::Null);
    }
    (status, serde_json::from_str(&body).unwrap())
}

/// Ids of the photos in a list answer.
fn ids(page: &Value) -> Vec<i64> {
    page["photos"].as_array().unwrap().iter().map(id_of).collect()
}

#[tokio::test]
async fn only_the_owner_deletes_and_everything_of_the_photo_goes() {
    let app = spawn_app().await;
    let bob = app.user("bob").await;
    let alice = app.user("alice").await;
    let r = alice.post(app.url("/api/users/bob/follow")).send().await.unwrap();
    assert!(r.status().is_success());
    let kept = id_of(&app.ready_photo(&bob).await);
    let photo = app.ready_photo(&bob).await;
    let id = id_of(&photo);
    let media: Vec<String> = photo["variants"]
        .as_object()
        .unwrap()
        .values()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(media.len(), 5);
    // Everything cached: the photo (final status), bob's list, alice's feed.
    for _ in 0..2 {
        assert_eq!(app.get_json(&alice, &format!("/api/photos/{id}")).await.0, 200);
        let (_, list) = app.get_json(&alice, "/api/users/bob/photos").await;
        assert_eq!(ids(&list), vec![id, kept]);
        let (_, feed) = app.get_json(&alice, "/api/feed").await;
        assert_eq!(ids(&feed), vec![id, kept]);
    }

    // Without a session: 401, whether the photo exists or not.
    let anonymous = new_client();
    for target in [id.to_string(), "999999".into(), "nope".into()] {
        let (s, body) = delete(&app, &anonymous, &target).await;
        assert_eq!(s, 401, "{target}: {body}");
    }
    // Unknown or malformed ids: 404.
    for target in ["999999", "0", "-1", "nope", "1.5"] {
        let (s, body) = delete(&app, &bob, target).await;
        assert_eq!(s, 404, "{target}: {body}");
        assert_eq!(body["error"], "no such photo");
    }
    // Someone else's photo: 403 (photos are public: a 404 would hide
    // nothing), and nothing changes.
    let (s, body) = delete(&app, &alice, id).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("not your photo")));
    assert_eq!(app.get_json(&alice, &format!("/api/photos/{id}")).await.0, 200);
    for url in &media {
        assert_eq!(
            anonymous.get(app.url(url)).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }

    // The owner: 204, and it is gone everywhere at once.
    let (s, _) = delete(&app, &bob, id).await;
    assert_eq!(s, 204);
    for c in [&alice, &bob, &anonymous] {
        let (s, body) = app.get_json(c, &format!("/api/photos/{id}")).await;
        assert_eq!((s, body["error"].as_str()), (404, Some("no such photo")));
        let (_, list) = app.get_json(c, "/api/users/bob/photos").await;
        assert_eq!(ids(&list), vec![kept], "a cached list page survived");
    }
    let (_, feed) = app.get_json(&alice, "/api/feed").await;
    assert_eq!(ids(&feed), vec![kept]);
    for url in &media {
        assert_eq!(
            anonymous.get(app.url(url)).send().await.unwrap().status(),
            404,
            "{url}"
        );
    }
    let left: Vec<String> = app
        .blob_files()
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| p.contains(&format!("/{id}.")) || p.contains(&format!("/{id}/")))
        .collect();
    assert!(left.is_empty(), "blobs left: {left:?}");
    assert_eq!(app.backends.queue.depth().await.unwrap(), Default::default());
    let store = &app.backends.store;
    assert!(store.photo(domain::PhotoId(id)).await.unwrap().is_none());
    // The other photo is untouched.
    assert_eq!(app.get_json(&bob, &format!("/api/photos/{kept}")).await.0, 200);

    // Twice: 404.
    let (s, _) = delete(&app, &bob, id).await;
    assert_eq!(s, 404);
}

/// A delete that lands while the photo waits for the worker or is being
/// rendered: whichever comes first, nothing of it is left once the worker
/// is done with it (no row, no job, no original, no variant).
#[tokio::test]
async fn a_photo_deleted_while_processing_leaves_nothing() {
    let app = spawn_app().await;
    let bob = app.user("carol").await;
    let mut deleted = vec![];
    // Deleted at once (most likely before the worker takes the job), then
    // deleted once the worker holds the job (a large image: it is still
    // rendering when the delete lands).
    for (size, in_hand) in [((64, 48), false), ((3000, 2000), true)] {
        let r = app
            .upload(&bob, samples::jpeg(size.0, size.1), "p.jpg", None)
            .await;
        assert_eq!(r.status(), 202);
        let id = id_of(&r.json().await.unwrap());
        if in_hand {
            eventually("the worker to take the job", || async {
                app.backends.queue.depth().await.unwrap().in_flight == 1
            })
            .await;
        }
        let (s, _) = delete(&app, &bob, id).await;
        assert_eq!(s, 204, "{size:?}");
        deleted.push(id);
    }
    // The test's worker takes one job at a time, oldest first: once a
    // photo uploaded after these is ready, it is done with theirs, and
    // whatever it wrote for them is removed.
    let last = id_of(&app.ready_photo(&bob).await);
    let left: Vec<String> = app
        .blob_files()
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| !p.contains(&format!("/{last}.")) && !p.contains(&format!("/{last}/")))
        .collect();
    assert!(left.is_empty(), "blobs left: {left:?}");
    assert_eq!(app.backends.queue.depth().await.unwrap(), Default::default());
    for id in deleted {
        let (s, _) = app.get_json(&bob, &format!("/api/photos/{id}")).await;
        assert_eq!(s, 404);
    }
    let (s, _) = delete(&app, &bob, last).await;
    assert_eq!(s, 204);
    app.assert_nothing_stored("carol").await;
}
