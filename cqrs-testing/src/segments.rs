//! The view-store conformance check of segment claims (see [`cqrs_core::segment`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use cqrs_core::error::Error;
use cqrs_core::segment::{Claim, Segment, SegmentClaims};
use cqrs_core::view::{Atomicity, StoredDoc, UnitOfWork, ViewStore};

const LEASE: Duration = Duration::from_millis(600);

fn work(claim: &Claim, id: &str, revision: u64, checkpoint: u64) -> UnitOfWork {
    UnitOfWork {
        projection: "claims".into(),
        writes: vec![StoredDoc {
            id: id.into(),
            view: Some(json!({ "by": claim.owner.to_string() })),
            applied: BTreeMap::new(),
            position: checkpoint,
            revision,
            parked: Default::default(),
        }],
        dead_letters: Vec::new(),
        checkpoint: Some(checkpoint),
        resolved: Vec::new(),
        claim: Some(*claim),
    }
}

async fn take(
    claims: &dyn SegmentClaims,
    segment: Segment,
    owner: Uuid,
) -> Option<(Claim, Option<u64>)> {
    claims
        .claim("claims", segment, owner, LEASE)
        .await
        .expect("claiming")
        .map(|c| (c.claim, c.checkpoint))
}

/// A segment has one holder at a time; a unit of work commits, and moves the segment's
/// checkpoint, only under the claim the store holds: once a lease ran out and another
/// instance took the segment, the first one's commit is refused with
/// [`Error::ClaimLost`] (and, in an atomic store, writes nothing), its renewal fails and its
/// release changes nothing. The next holder starts from the checkpoint. Members are counted
/// while they beat; claims of another segment count are refused; a reset clears them.
pub async fn claims_fence_and_expire<S: ViewStore>(store: &S) {
    let claims = store.claims().expect("the store keeps segment claims");
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let s0 = Segment::new(0, 2).expect("segment");
    let (first, checkpoint) = take(claims, s0, a)
        .await
        .expect("a free segment is claimed");
    assert_eq!(checkpoint, None, "a new segment starts at the beginning");
    assert!(
        take(claims, s0, b).await.is_none(),
        "a held segment is not claimed again"
    );
    let other = take(claims, Segment::new(1, 2).expect("segment"), b).await;
    assert!(other.is_some(), "another segment is free");
    store
        .commit(work(&first, "v", 0, 5))
        .await
        .expect("a commit under the claim");
    assert_eq!(claims.heartbeat("claims", a, LEASE).await.expect("beat"), 1);
    assert_eq!(claims.heartbeat("claims", b, LEASE).await.expect("beat"), 2);

    // A's lease runs out (it stops renewing); B takes the segment with a new token.
    tokio::time::sleep(LEASE + Duration::from_millis(300)).await;
    assert_eq!(
        claims.heartbeat("claims", c, LEASE).await.expect("beat"),
        1,
        "members that stopped beating are gone"
    );
    let (second, checkpoint) = take(claims, s0, b)
        .await
        .expect("an expired claim is taken");
    assert_ne!(
        second.token, first.token,
        "every claim has a token of its own"
    );
    assert_eq!(
        checkpoint,
        Some(5),
        "the next holder starts at the checkpoint"
    );

    // A wakes up: it cannot commit, renew or release.
    match store.commit(work(&first, "v", 1, 9)).await {
        Err(Error::ClaimLost { segment, .. }) => assert_eq!(segment, s0),
        other => panic!("a unit of work under a lost claim must be refused: {other:?}"),
    }
    if store.atomicity() == Atomicity::Atomic {
        let docs = store.load("claims", &["v".to_owned()]).await.expect("load");
        assert_eq!(
            docs[0].revision, 1,
            "the refused unit of work wrote nothing: {docs:?}"
        );
    }
    assert!(
        !claims.renew("claims", &first, LEASE).await.expect("renew"),
        "a lost claim does not renew"
    );
    claims.release("claims", &first).await.expect("release");
    assert!(
        take(claims, s0, c).await.is_none(),
        "releasing a lost claim frees nothing"
    );
    assert!(
        claims.renew("claims", &second, LEASE).await.expect("renew"),
        "the holder renews"
    );

    // B commits and gives the segment up; C starts where B stopped.
    let rev = store.load("claims", &["v".to_owned()]).await.expect("load")[0].revision;
    store
        .commit(work(&second, "v", rev, 12))
        .await
        .expect("the new holder commits");
    claims.release("claims", &second).await.expect("release");
    let (_, checkpoint) = take(claims, s0, c)
        .await
        .expect("a released segment is free at once");
    assert_eq!(checkpoint, Some(12));
    assert_eq!(
        claims
            .heartbeat("claims", c, Duration::ZERO)
            .await
            .expect("leave"),
        0,
        "a zero lease leaves"
    );

    // Another count for the same projection is refused; a reset clears the claims.
    let three = Segment::new(0, 3).expect("segment");
    match claims.claim("claims", three, a, LEASE).await {
        Err(Error::Config(_)) => {}
        other => panic!("claims of another segment count must be refused: {other:?}"),
    }
    store.reset("claims").await.expect("reset");
    let (_, checkpoint) = take(claims, three, a)
        .await
        .expect("after a reset any count is taken");
    assert_eq!(checkpoint, None);
    store.reset("claims").await.expect("reset");
}
