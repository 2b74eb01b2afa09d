//! Removing a page of orphans in batches: one re-check query, 1000 keys a `DeleteObjects`,
//! and what a refused key, a failed request or a failed append leave behind.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use super::*;

/// `n` originals no event names, written two hours ago; their keys in order.
fn orphan_originals(fake: &Fake, n: usize) -> Vec<String> {
    let mut keys: Vec<String> = (0..n)
        .map(|_| format!("{PREFIX}originals/{}", Uuid::now_v7()))
        .collect();
    for key in &keys {
        fake.put(key, hours_ago(2));
    }
    keys.sort();
    keys
}

#[tokio::test]
async fn a_page_of_orphans_is_checked_in_one_query_and_deleted_1000_keys_a_request() {
    let mut fake = Fake::default();
    ready_image(&mut fake);
    let keys = orphan_originals(&fake, 2500);

    let mut options = options(true);
    options.page_size = 3000;
    let (summary, findings) = run(&fake, &options).await;
    assert_eq!((summary.removed, summary.delete_failed), (2500, 0));
    assert_eq!(
        orphans(&findings).iter().map(|o| &o.0).collect::<Vec<_>>(),
        keys.iter().collect::<Vec<_>>(),
        "reported once each, in key order"
    );
    assert_eq!(*fake.delete_batches.lock().unwrap(), [1000, 1000, 500]);
    assert_eq!(
        *fake.references_to_calls.lock().unwrap(),
        1,
        "one read-model query for the page's re-checks"
    );
    assert_eq!(
        fake.stored().len(),
        3,
        "only the ready image's objects stay"
    );
    // Every key's delete comes after its audit event was acknowledged.
    let operations = fake.operations.lock().unwrap();
    let position = |op: &str, key: &str| operations.iter().position(|(o, k)| *o == op && k == key);
    for key in &keys {
        assert!(position("append", key).unwrap() < position("delete", key).unwrap());
    }
}

#[tokio::test]
async fn a_key_the_batch_delete_refuses_is_delete_failed_and_found_again_by_the_next_sweep() {
    let fake = Fake::default();
    let keys = orphan_originals(&fake, 5);
    fake.refuse_delete.lock().unwrap().insert(keys[2].clone());

    let (summary, findings) = run(&fake, &options(true)).await;
    assert_eq!((summary.removed, summary.delete_failed), (4, 1));
    let failed = orphans(&findings)
        .into_iter()
        .find(|o| o.0 == keys[2])
        .unwrap();
    assert_eq!(
        failed.2,
        Outcome::DeleteFailed(format!("delete {}: AccessDenied (not yours)", keys[2]))
    );
    assert_eq!(fake.stored(), [keys[2].clone()]);
    assert_eq!(fake.appended().len(), 5, "its audit event is in the log");

    fake.refuse_delete.lock().unwrap().clear();
    let (summary, _) = run(&fake, &options(true)).await;
    assert_eq!((summary.removed, summary.delete_failed), (1, 0));
    assert!(fake.stored().is_empty());
    assert_eq!(fake.appended().len(), 6, "a second OrphanRemoved for it");
}

#[tokio::test]
async fn after_a_failed_batch_delete_a_head_tells_which_keys_are_gone() {
    let fake = Fake {
        fail_delete_request_after: Some(2),
        ..Fake::default()
    };
    let keys = orphan_originals(&fake, 5);

    let (summary, findings) = run(&fake, &options(true)).await;
    assert_eq!((summary.removed, summary.delete_failed), (2, 3));
    for (key, _, outcome) in orphans(&findings) {
        let removed = keys[..2].contains(&key);
        assert_eq!(
            matches!(outcome, Outcome::Removed),
            removed,
            "{key}: {outcome:?}"
        );
        if !removed {
            assert!(
                outcome.detail().unwrap().contains("connection reset"),
                "{outcome:?}"
            );
        }
    }
    assert_eq!(fake.stored(), keys[2..]);
}

#[tokio::test]
async fn a_failed_append_ends_the_sweep_after_the_acknowledged_keys_are_deleted() {
    let fake = Fake::default();
    let keys = orphan_originals(&fake, 4);
    let fake = Fake {
        fail_append_for: HashSet::from([keys[1].clone()]),
        ..fake
    };
    let mut findings = Vec::new();
    let result = sweep(&fake, &options(true), &mut |f: &Finding| {
        findings.push(f.clone())
    })
    .await;
    assert!(result.is_err());
    assert_eq!(
        fake.stored(),
        [keys[1].clone()],
        "no audit record, no delete"
    );
    let reported: Vec<String> = orphans(&findings).into_iter().map(|o| o.0).collect();
    assert_eq!(
        reported,
        [keys[0].clone(), keys[2].clone(), keys[3].clone()]
    );
}
