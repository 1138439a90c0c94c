//! The battery of the `Store` port (users, photos, follows), run against
//! SQLite and PostgreSQL.
//!
//! Every case makes users of its own (fresh names), so the cases share one
//! store and may run on a store that already holds data; ids that must not
//! exist are [`NO_SUCH_ID`].

use crate::support::{announce, unique_name};
use domain::ports::Store;
use domain::*;

/// An id no adapter hands out in a test: far beyond any sequence.
pub const NO_SUCH_ID: i64 = i64::MAX;

fn new_photo(owner: UserId) -> NewPhoto {
    NewPhoto {
        owner_id: owner,
        caption: Some(Caption::parse("hello").unwrap()),
        format: ImageFormat::Png,
        width: 10,
        height: 20,
    }
}

fn page(before: Option<PhotoId>, limit: u32) -> Page {
    Page { before, limit }
}

/// A user with a fresh name (`tag` and a suffix), password hash `"h"`.
/// A photo of `owner`, processed: what feeds show.
async fn ready_photo(store: &dyn Store, photo: &NewPhoto) -> PhotoId {
    let id = store.create_photo(photo).await.unwrap().id;
    store.set_photo_status(id, PhotoStatus::Ready).await.unwrap();
    id
}

async fn user(store: &dyn Store, tag: &str) -> (UserId, Username) {
    let name = unique_name(tag);
    let id = store.create_user(&name, "h").await.expect("create_user");
    (id, name)
}

/// Runs every case of the battery on `store`.
pub async fn run_all(store: &dyn Store) {
    announce("store", "users_are_unique");
    users_are_unique(store).await;
    announce("store", "photos_and_pages");
    photos_and_pages(store).await;
    announce("store", "photo_without_caption_and_of_a_missing_owner");
    photo_without_caption_and_of_a_missing_owner(store).await;
    announce("store", "a_ready_photo_never_becomes_failed");
    a_ready_photo_never_becomes_failed(store).await;
    announce("store", "follows_and_feed");
    follows_and_feed(store).await;
    announce("store", "lists_hold_only_their_owners_photos");
    lists_hold_only_their_owners_photos(store).await;
    announce("store", "a_deleted_photo_is_gone_with_what_it_recorded");
    a_deleted_photo_is_gone_with_what_it_recorded(store).await;
    announce("store", "stalled_uploads_are_processing_photos_without_a_job");
    stalled_uploads_are_processing_photos_without_a_job(store).await;
}

/// A taken username is a conflict; users are found by name and by id with
/// their password hash; unknown names and ids are `None`; `ping` answers.
pub async fn users_are_unique(store: &dyn Store) {
    let name = unique_name("alice");
    let id = store.create_user(&name, "h").await.unwrap();
    assert!(matches!(
        store.create_user(&name, "h2").await,
        Err(StoreError::Conflict)
    ));
    let found = store.user_by_name(&name).await.unwrap().unwrap();
    assert_eq!((found.id, &found.username), (id, &name));
    let found = store.user_by_id(id).await.unwrap().unwrap();
    assert_eq!(found.password_hash, "h", "the first hash, not the refused one");
    assert_eq!(found.username, name);
    assert!(store.user_by_name(&unique_name("bob")).await.unwrap().is_none());
    assert!(store.user_by_id(UserId(NO_SUCH_ID)).await.unwrap().is_none());
    assert!(store.profile(UserId(NO_SUCH_ID)).await.unwrap().is_none());
    store.ping().await.unwrap();
}

/// Photos start `processing` with every field as given and a creation time
/// in milliseconds since the epoch; pages are newest first, keyset on the
/// id (a photo arriving between pages does not shift the next page); status
/// changes and deletes (twice is fine) are seen by the next read.
pub async fn photos_and_pages(store: &dyn Store) {
    let (a, a_name) = user(store, "alice").await;
    let before = now_millis();
    let mut ids = vec![];
    for _ in 0..5 {
        let p = store.create_photo(&new_photo(a)).await.unwrap();
        assert_eq!(p.status, PhotoStatus::Processing);
        assert_eq!(p.owner, a_name);
        assert_eq!(p.owner_id, a);
        assert_eq!(p.caption.as_ref().map(|c| c.as_str()), Some("hello"));
        assert_eq!((p.format, p.width, p.height), (ImageFormat::Png, 10, 20));
        // Milliseconds since the epoch (an adapter may use its database's
        // clock: the same host's in a test).
        assert!((p.created_at_ms - before).abs() < 60_000, "{}", p.created_at_ms);
        assert_eq!(store.photo(p.id).await.unwrap().unwrap(), p);
        ids.push(p.id);
    }
    ids.reverse();
    let first = store.user_photo_ids(a, page(None, 2)).await.unwrap();
    assert_eq!(first, ids[..2]);
    let second = store.user_photo_ids(a, page(Some(first[1]), 2)).await.unwrap();
    assert_eq!(second, ids[2..4]);
    // A photo arriving between pages does not shift the next page.
    store.create_photo(&new_photo(a)).await.unwrap();
    let third = store.user_photo_ids(a, page(Some(second[1]), 2)).await.unwrap();
    assert_eq!(third, ids[4..]);

    store.set_photo_status(ids[0], PhotoStatus::Ready).await.unwrap();
    assert_eq!(
        store.photo(ids[0]).await.unwrap().unwrap().status,
        PhotoStatus::Ready
    );
    assert!(matches!(
        store
            .set_photo_status(PhotoId(NO_SUCH_ID), PhotoStatus::Ready)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(store.delete_photo(ids[0]).await.unwrap().is_some());
    assert!(store.photo(ids[0]).await.unwrap().is_none());
    assert_eq!(store.delete_photo(ids[0]).await.unwrap(), None); // twice is fine
    assert!(store.photo(PhotoId(NO_SUCH_ID)).await.unwrap().is_none());
}

/// A photo without a caption reads back without one; a photo of a user
/// that does not exist is [`StoreError::NotFound`].
pub async fn photo_without_caption_and_of_a_missing_owner(store: &dyn Store) {
    let (a, _) = user(store, "alice").await;
    let p = store
        .create_photo(&NewPhoto {
            caption: None,
            ..new_photo(a)
        })
        .await
        .unwrap();
    assert_eq!(p.caption, None);
    assert_eq!(store.photo(p.id).await.unwrap().unwrap().caption, None);
    assert!(matches!(
        store.create_photo(&new_photo(UserId(NO_SUCH_ID))).await,
        Err(StoreError::NotFound)
    ));
}

/// A late failure of one delivery cannot undo another's success: `ready`
/// never becomes `failed` (the call succeeds and changes nothing), while a
/// photo still processing can fail.
pub async fn a_ready_photo_never_becomes_failed(store: &dyn Store) {
    let (a, _) = user(store, "worker").await;
    let ready = store.create_photo(&new_photo(a)).await.unwrap().id;
    store.set_photo_status(ready, PhotoStatus::Ready).await.unwrap();
    store.set_photo_status(ready, PhotoStatus::Failed).await.unwrap();
    assert_eq!(
        store.photo(ready).await.unwrap().unwrap().status,
        PhotoStatus::Ready
    );
    store.set_photo_status(ready, PhotoStatus::Ready).await.unwrap(); // twice is fine

    let failing = store.create_photo(&new_photo(a)).await.unwrap().id;
    store
        .set_photo_status(failing, PhotoStatus::Failed)
        .await
        .unwrap();
    assert_eq!(
        store.photo(failing).await.unwrap().unwrap().status,
        PhotoStatus::Failed
    );
}

/// Follows are idempotent both ways and one-directional; the feed holds
/// the followees' ready photos (those made before the follow too), newest
/// first, keyset-paged, a photo entering it when it is processed; profiles
/// count followers and followings.
pub async fn follows_and_feed(store: &dyn Store) {
    let (a, _) = user(store, "alice").await;
    let (b, b_name) = user(store, "bob").await;
    let (c, _) = user(store, "carol").await;
    let pb = ready_photo(store, &new_photo(b)).await;
    let _pc = ready_photo(store, &new_photo(c)).await;
    let pb2 = ready_photo(store, &new_photo(b)).await;
    let _unprocessed = store.create_photo(&new_photo(b)).await.unwrap().id;
    assert!(store.feed_ids(a, page(None, 10)).await.unwrap().is_empty());
    assert!(!store.is_following(a, b).await.unwrap());
    store.follow(a, b).await.unwrap();
    store.follow(a, b).await.unwrap(); // twice is fine
    assert!(store.is_following(a, b).await.unwrap());
    assert!(!store.is_following(b, a).await.unwrap());
    assert_eq!(store.feed_ids(a, page(None, 10)).await.unwrap(), vec![pb2, pb]);
    assert_eq!(store.feed_ids(a, page(Some(pb2), 10)).await.unwrap(), vec![pb]);
    assert_eq!(store.feed_ids(a, page(None, 1)).await.unwrap(), vec![pb2]);
    let pb3 = store.create_photo(&new_photo(b)).await.unwrap().id;
    assert_eq!(
        store.feed_ids(a, page(None, 10)).await.unwrap(),
        vec![pb2, pb],
        "not yet processed"
    );
    store.set_photo_status(pb3, PhotoStatus::Ready).await.unwrap();
    store.set_photo_status(pb3, PhotoStatus::Ready).await.unwrap(); // a retried job
    assert_eq!(
        store.feed_ids(a, page(None, 10)).await.unwrap(),
        vec![pb3, pb2, pb]
    );
    let prof = store.profile(b).await.unwrap().unwrap();
    assert_eq!((prof.followers, prof.following), (1, 0));
    assert_eq!((prof.id, &prof.username), (b, &b_name));
    let prof = store.profile(a).await.unwrap().unwrap();
    assert_eq!((prof.followers, prof.following), (0, 1));
    store.unfollow(a, b).await.unwrap();
    store.unfollow(a, b).await.unwrap(); // twice is fine
    assert!(!store.is_following(a, b).await.unwrap());
    assert!(store.feed_ids(a, page(None, 10)).await.unwrap().is_empty());
    let prof = store.profile(b).await.unwrap().unwrap();
    assert_eq!((prof.followers, prof.following), (0, 0));
    let prof = store.profile(a).await.unwrap().unwrap();
    assert_eq!((prof.followers, prof.following), (0, 0));
}

/// A user's list holds only that user's photos, a feed only the followed
/// users' (not the reader's own), and a deleted photo leaves both.
pub async fn lists_hold_only_their_owners_photos(store: &dyn Store) {
    let (a, _) = user(store, "alice").await;
    let (b, _) = user(store, "bob").await;
    let (reader, _) = user(store, "reader").await;
    let mut mine = vec![];
    let mut theirs = vec![];
    for _ in 0..3 {
        mine.push(ready_photo(store, &new_photo(a)).await);
        theirs.push(ready_photo(store, &new_photo(b)).await);
    }
    store.create_photo(&new_photo(reader)).await.unwrap();
    mine.reverse();
    theirs.reverse();
    assert_eq!(store.user_photo_ids(a, page(None, 10)).await.unwrap(), mine);
    assert_eq!(store.user_photo_ids(b, page(None, 10)).await.unwrap(), theirs);
    store.follow(reader, a).await.unwrap();
    assert_eq!(store.feed_ids(reader, page(None, 10)).await.unwrap(), mine);
    store.delete_photo(mine[0]).await.unwrap().expect("it existed");
    assert_eq!(store.user_photo_ids(a, page(None, 10)).await.unwrap(), mine[1..]);
    assert_eq!(store.feed_ids(reader, page(None, 10)).await.unwrap(), mine[1..]);
}

/// Deleting a photo removes it from every read (the photo, its owner's
/// list, its followers' feeds) and answers what was removed: its owner, its
/// format (so its blob keys) and the job recorded for it, if any. After
/// the delete nothing can write to it: a status change (a worker finishing
/// late) and a job record are [`StoreError::NotFound`], and a second delete
/// answers `None`. The owner's other photos, follows and profile stay.
pub async fn a_deleted_photo_is_gone_with_what_it_recorded(store: &dyn Store) {
    let (a, _) = user(store, "owner").await;
    let (reader, _) = user(store, "reader").await;
    store.follow(reader, a).await.unwrap();
    let kept = ready_photo(store, &new_photo(a)).await;
    let doomed = ready_photo(
        store,
        &NewPhoto {
            format: ImageFormat::Webp,
            ..new_photo(a)
        },
    )
    .await;
    let unrecorded = ready_photo(store, &new_photo(a)).await;
    store.record_photo_job(doomed, 77).await.unwrap();
    store.record_photo_job(doomed, 78).await.unwrap(); // the latest counts
    assert!(matches!(
        store.record_photo_job(PhotoId(NO_SUCH_ID), 1).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.feed_ids(reader, page(None, 10)).await.unwrap(),
        vec![unrecorded, doomed, kept]
    );

    let gone = store.delete_photo(doomed).await.unwrap().expect("it existed");
    assert_eq!(
        gone,
        DeletedPhoto {
            id: doomed,
            owner_id: a,
            format: ImageFormat::Webp,
            jobs: vec![78],
        }
    );
    assert!(store.photo(doomed).await.unwrap().is_none());
    assert_eq!(
        store.user_photo_ids(a, page(None, 10)).await.unwrap(),
        vec![unrecorded, kept]
    );
    assert_eq!(
        store.feed_ids(reader, page(None, 10)).await.unwrap(),
        vec![unrecorded, kept]
    );
    assert!(matches!(
        store.set_photo_status(doomed, PhotoStatus::Ready).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.record_photo_job(doomed, 79).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.delete_photo(doomed).await.unwrap(), None);

    let gone = store.delete_photo(unrecorded).await.unwrap().expect("it existed");
    assert_eq!((gone.owner_id, gone.jobs.as_slice()), (a, &[][..]));
    assert_eq!(store.photo(kept).await.unwrap().unwrap().owner_id, a);
    assert!(store.is_following(reader, a).await.unwrap());
    let prof = store.profile(a).await.unwrap().unwrap();
    assert_eq!((prof.followers, prof.following), (1, 0));
    assert_eq!(store.delete_photo(PhotoId(NO_SUCH_ID)).await.unwrap(), None);
}

/// `stalled_uploads` lists the photos still `processing` with no recorded
/// job created before the cutoff, oldest first: not one with a job, nor a
/// `ready` or `failed` one, nor one created at or after the cutoff.
pub async fn stalled_uploads_are_processing_photos_without_a_job(store: &dyn Store) {
    let (a, _) = user(store, "uploader").await;
    let stalled = store.create_photo(&new_photo(a)).await.unwrap();
    let later = store.create_photo(&new_photo(a)).await.unwrap();
    let with_job = store.create_photo(&new_photo(a)).await.unwrap().id;
    store.record_photo_job(with_job, 5).await.unwrap();
    let ready = store.create_photo(&new_photo(a)).await.unwrap().id;
    store.set_photo_status(ready, PhotoStatus::Ready).await.unwrap();
    let failed = store.create_photo(&new_photo(a)).await.unwrap().id;
    store.set_photo_status(failed, PhotoStatus::Failed).await.unwrap();
    let ours = |photos: Vec<Photo>| -> Vec<PhotoId> {
        photos
            .into_iter()
            .filter(|p| p.owner_id == a)
            .map(|p| p.id)
            .collect()
    };
    let cutoff = later.created_at_ms + 1;
    assert_eq!(
        ours(store.stalled_uploads(cutoff, 100_000).await.unwrap()),
        vec![stalled.id, later.id]
    );
    // Strictly before the cutoff.
    assert_eq!(
        ours(
            store
                .stalled_uploads(stalled.created_at_ms, 100_000)
                .await
                .unwrap()
        ),
        Vec::<PhotoId>::new()
    );
    // The limit keeps the oldest.
    let oldest = store.stalled_uploads(cutoff, 1).await.unwrap();
    assert_eq!(oldest.len(), 1);
    assert!(oldest[0].created_at_ms <= stalled.created_at_ms);
}

/// Business figures (not in [`run_all`]: a store may not compute them):
/// a sign-up, an upload and a follow today show in today's figures.
pub async fn business_figures_count_what_happened(store: &dyn Store) {
    announce("store", "business_figures_count_what_happened");
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        / 86_400_000;
    let before = store.business(today, 7).await.expect("business figures");
    assert_eq!(before.days.len(), 7);
    assert_eq!(before.days.last().unwrap().day, today);
    let (ada, _) = user(store, "biz_ada").await;
    let (bob, _) = user(store, "biz_bob").await;
    store.create_photo(&new_photo(ada)).await.unwrap();
    store.follow(ada, bob).await.unwrap();
    let after = store.business(today, 7).await.unwrap();
    let (b, a) = (before.days.last().unwrap(), after.days.last().unwrap());
    assert_eq!(after.users, before.users + 2);
    assert_eq!(a.signups, b.signups + 2);
    assert_eq!(a.uploads, b.uploads + 1);
    assert_eq!(a.active_users, b.active_users + 2);
}
