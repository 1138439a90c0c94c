//! The SQL store port: store-sqlite's tests, on PostgreSQL.

use crate::helpers::spawn_db;
use domain::ports::Store;
use domain::*;
use store_postgres::PgStore;

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

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

#[tokio::test]
async fn users_are_unique() {
    let db = spawn_db().await;
    let s = PgStore::new(db.pool.clone());
    let id = s.create_user(&name("alice"), "h").await.unwrap();
    assert!(matches!(
        s.create_user(&name("alice"), "h2").await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(s.user_by_name(&name("alice")).await.unwrap().unwrap().id, id);
    assert_eq!(s.user_by_id(id).await.unwrap().unwrap().password_hash, "h");
    assert!(s.user_by_name(&name("bob")).await.unwrap().is_none());
    assert!(s.user_by_id(UserId(999)).await.unwrap().is_none());
    assert!(s.profile(UserId(999)).await.unwrap().is_none());
    s.ping().await.unwrap();
}

#[tokio::test]
async fn photos_and_pages() {
    let db = spawn_db().await;
    let s = PgStore::new(db.pool.clone());
    let a = s.create_user(&name("alice"), "h").await.unwrap();
    let before = now_millis();
    let mut ids = vec![];
    for _ in 0..5 {
        let p = s.create_photo(&new_photo(a)).await.unwrap();
        assert_eq!(p.status, PhotoStatus::Processing);
        assert_eq!(p.owner.as_str(), "alice");
        assert_eq!(p.owner_id, a);
        assert_eq!(p.caption.as_ref().map(|c| c.as_str()), Some("hello"));
        assert_eq!((p.format, p.width, p.height), (ImageFormat::Png, 10, 20));
        // Milliseconds since the epoch, as store-sqlite stores them (the
        // database's clock here, the same host's).
        assert!((p.created_at_ms - before).abs() < 60_000, "{}", p.created_at_ms);
        assert_eq!(s.photo(p.id).await.unwrap().unwrap(), p);
        ids.push(p.id);
    }
    ids.reverse();
    let first = s.user_photo_ids(a, page(None, 2)).await.unwrap();
    assert_eq!(first, ids[..2]);
    let second = s.user_photo_ids(a, page(Some(first[1]), 2)).await.unwrap();
    assert_eq!(second, ids[2..4]);
    // A photo arriving between pages does not shift the next page.
    s.create_photo(&new_photo(a)).await.unwrap();
    let third = s.user_photo_ids(a, page(Some(second[1]), 2)).await.unwrap();
    assert_eq!(third, ids[4..]);

    s.set_photo_status(ids[0], PhotoStatus::Ready).await.unwrap();
    assert_eq!(s.photo(ids[0]).await.unwrap().unwrap().status, PhotoStatus::Ready);
    assert!(matches!(
        s.set_photo_status(PhotoId(999), PhotoStatus::Ready).await,
        Err(StoreError::NotFound)
    ));
    s.delete_photo(ids[0]).await.unwrap();
    assert!(s.photo(ids[0]).await.unwrap().is_none());
    s.delete_photo(ids[0]).await.unwrap(); // twice is fine
}

#[tokio::test]
async fn photo_without_caption_and_of_a_missing_owner() {
    let db = spawn_db().await;
    let s = PgStore::new(db.pool.clone());
    let a = s.create_user(&name("alice"), "h").await.unwrap();
    let p = s
        .create_photo(&NewPhoto {
            caption: None,
            ..new_photo(a)
        })
        .await
        .unwrap();
    assert_eq!(s.photo(p.id).await.unwrap().unwrap().caption, None);
    assert!(matches!(
        s.create_photo(&new_photo(UserId(999))).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn follows_and_feed() {
    let db = spawn_db().await;
    let s = PgStore::new(db.pool.clone());
    let a = s.create_user(&name("alice"), "h").await.unwrap();
    let b = s.create_user(&name("bob"), "h").await.unwrap();
    let c = s.create_user(&name("carol"), "h").await.unwrap();
    let pb = s.create_photo(&new_photo(b)).await.unwrap().id;
    let _pc = s.create_photo(&new_photo(c)).await.unwrap().id;
    let pb2 = s.create_photo(&new_photo(b)).await.unwrap().id;
    assert!(s.feed_ids(a, page(None, 10)).await.unwrap().is_empty());
    s.follow(a, b).await.unwrap();
    s.follow(a, b).await.unwrap(); // twice is fine
    assert!(s.is_following(a, b).await.unwrap());
    assert!(!s.is_following(b, a).await.unwrap());
    assert_eq!(s.feed_ids(a, page(None, 10)).await.unwrap(), vec![pb2, pb]);
    assert_eq!(s.feed_ids(a, page(Some(pb2), 10)).await.unwrap(), vec![pb]);
    let prof = s.profile(b).await.unwrap().unwrap();
    assert_eq!((prof.followers, prof.following), (1, 0));
    assert_eq!(prof.username.as_str(), "bob");
    let prof = s.profile(a).await.unwrap().unwrap();
    assert_eq!((prof.followers, prof.following), (0, 1));
    s.unfollow(a, b).await.unwrap();
    s.unfollow(a, b).await.unwrap(); // twice is fine
    assert!(!s.is_following(a, b).await.unwrap());
    assert!(s.feed_ids(a, page(None, 10)).await.unwrap().is_empty());
}
