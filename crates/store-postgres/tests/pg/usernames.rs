//! The global username lookup: claim, activate, resolve; a claim in
//! progress blocks the name, a stale one is taken over, a failed sign-up
//! gives it back.

use crate::helpers::spawn_db;
use domain::{StoreError, UserId};
use std::time::Duration;
use store_postgres::Usernames;

const GRACE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn names_are_claimed_activated_and_resolved_once() {
    let db = spawn_db().await;
    let names = Usernames::new(db.pool.clone());
    // A claim alone does not resolve.
    names.claim("alice", UserId(11), GRACE).await.unwrap();
    assert_eq!(names.resolve("alice").await.unwrap(), None);
    // A second sign-up while the first is in progress is refused.
    assert!(matches!(
        names.claim("alice", UserId(12), GRACE).await,
        Err(StoreError::Conflict)
    ));
    // Only the claimant activates.
    assert!(matches!(
        names.activate("alice", UserId(12)).await,
        Err(StoreError::NotFound)
    ));
    names.activate("alice", UserId(11)).await.unwrap();
    assert_eq!(names.resolve("alice").await.unwrap(), Some(UserId(11)));
    // An active name is never taken over, however old.
    assert!(matches!(
        names.claim("alice", UserId(13), Duration::ZERO).await,
        Err(StoreError::Conflict)
    ));
    // Nor released.
    names.release("alice", UserId(11)).await.unwrap();
    assert_eq!(names.resolve("alice").await.unwrap(), Some(UserId(11)));
    // One user id, one name.
    assert!(matches!(
        names.claim("alice2", UserId(11), GRACE).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(names.resolve("nobody").await.unwrap(), None);
}

#[tokio::test]
async fn a_claim_left_by_a_dead_sign_up_is_taken_over_once_stale() {
    let db = spawn_db().await;
    let names = Usernames::new(db.pool.clone());
    names.claim("bob", UserId(21), GRACE).await.unwrap();
    // Its sign-up died. Within the grace the name stays blocked ...
    assert!(matches!(
        names.claim("bob", UserId(22), GRACE).await,
        Err(StoreError::Conflict)
    ));
    // ... after it (a grace of 0 here: the claim is older than that) the
    // next sign-up takes it, and the dead one can no longer activate.
    tokio::time::sleep(Duration::from_millis(5)).await;
    names.claim("bob", UserId(22), Duration::ZERO).await.unwrap();
    assert!(matches!(
        names.activate("bob", UserId(21)).await,
        Err(StoreError::NotFound)
    ));
    names.activate("bob", UserId(22)).await.unwrap();
    assert_eq!(names.resolve("bob").await.unwrap(), Some(UserId(22)));

    // A sign-up that failed cleanly gives the name back at once.
    names.claim("carol", UserId(31), GRACE).await.unwrap();
    names.release("carol", UserId(31)).await.unwrap();
    names.claim("carol", UserId(32), GRACE).await.unwrap();
}
