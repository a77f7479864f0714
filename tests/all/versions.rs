//! Dataset versions (issue 16, part 2), through the `veil` binary as the bureau uses them: a
//! new file for a registered dataset is its next version, checked like the first; the next
//! job reads it and its manifest names it; an identical earlier job's product is not reused
//! across versions; the budget stays the dataset's.

use std::path::Path;
use std::process::Command;

use veil_runtime::catalog;
use veil_runtime::jobs::JobOutcome;
use veil_runtime::templates::{self, TemplateSpec};
use veil_sdk::manifest::{Manifest, SignedManifest};

use crate::support::{Fixture, OPERATOR, approval, veil_bin};

const SQL: &str =
    "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city";

fn veil(args: &[&str], data_dir: &Path) -> std::process::Output {
    Command::new(veil_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("veil runs")
}

/// The product's manifest, and whether the run reused an earlier product.
fn released(outcome: JobOutcome) -> (Manifest, bool) {
    let JobOutcome::Released { dir, reused, .. } = outcome else {
        panic!("released: {outcome:?}");
    };
    let bytes = std::fs::read(dir.join("manifest.json")).expect("manifest");
    let signed: SignedManifest = serde_json::from_slice(&bytes).expect("a signed manifest");
    (signed.manifest, reused)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_is_checked_read_by_the_next_job_and_named_in_its_manifest() {
    let mut fixture = Fixture::new(2_000);
    let store_dir = fixture.store_path();
    let first = catalog::get(&fixture.store, "social_insurance").expect("dataset");

    // Version 1: the registration.
    let (manifest, _) = released(fixture.run_sql(SQL, &[], approval()).await.expect("ran"));
    assert_eq!(manifest.sources[0].version, Some(1));
    assert_eq!(manifest.sources[0].content_blake3, first.content_blake3);

    // The provider's next delivery: more records, same policy.
    let delivery = fixture.dir.path().join("delivery");
    let made = Command::new(veil_bin())
        .args(["demo-data", "--rows", "2500", "--seed", "7", "--out"])
        .arg(&delivery)
        .output()
        .expect("demo-data");
    assert!(made.status.success(), "{made:?}");
    let new_file = delivery.join("social_insurance.parquet");
    let updated = veil(
        &[
            "dataset",
            "update",
            "social_insurance",
            "--file",
            new_file.to_str().expect("path"),
        ],
        &store_dir,
    );
    assert!(updated.status.success(), "{updated:?}");
    let said = String::from_utf8_lossy(&updated.stdout);
    assert!(said.contains("registered version 2"), "{said}");

    // The same file again: nothing new, refused, still two versions.
    let again = veil(
        &[
            "dataset",
            "update",
            "social_insurance",
            "--file",
            new_file.to_str().expect("path"),
        ],
        &store_dir,
    );
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing new to register"));
    // A file the policy does not fit (another table's columns): refused naming the problem.
    let wrong = delivery.join("enterprise_registry.parquet");
    let refused = veil(
        &[
            "dataset",
            "update",
            "social_insurance",
            "--file",
            wrong.to_str().expect("path"),
        ],
        &store_dir,
    );
    assert!(!refused.status.success(), "{refused:?}");
    let listed = veil(
        &["dataset", "versions", "social_insurance", "--json"],
        &store_dir,
    );
    assert!(listed.status.success(), "{listed:?}");
    let versions: Vec<catalog::Version> =
        serde_json::from_slice(&listed.stdout).expect("versions as JSON");
    assert_eq!(versions.len(), 2, "the refused files made no version");
    assert_eq!(versions[0].content_blake3, first.content_blake3);
    assert_ne!(versions[1].content_blake3, first.content_blake3);
    assert!(versions[1].rows > 0);

    // The identical job again: it reads version 2, so it is a new release, not a reuse; the
    // dataset keeps its id, so both runs spent the one grant's and dataset's budget.
    let second = catalog::get(&fixture.store, "social_insurance").expect("dataset");
    assert_eq!(second.id, first.id);
    assert_eq!(second.content_blake3, versions[1].content_blake3);
    let (manifest, reused) = released(fixture.run_sql(SQL, &[], approval()).await.expect("ran"));
    assert!(!reused, "an earlier version's product is never reused");
    assert_eq!(manifest.sources[0].version, Some(2));
    assert_eq!(manifest.sources[0].dataset_id, first.id.to_string());
    assert_eq!(
        manifest.sources[0].content_blake3,
        versions[1].content_blake3
    );
    let (_, reused) = released(fixture.run_sql(SQL, &[], approval()).await.expect("ran"));
    assert!(reused, "within one version the identical job is reused");
    let period = veil_runtime::settlement::parse_period(&veil_runtime::clock::period_of(
        veil_runtime::clock::now(),
    ))
    .expect("period");
    let spent = veil_runtime::budget::spent_by_grant(
        fixture.store.conn(),
        fixture.grant.id.as_str(),
        &period,
    )
    .expect("spent");
    assert_eq!(
        spent.micro_epsilon.0, 2_000_000,
        "two runs at ε 1, one budget"
    );

    // A template that pins version 1 reads it still (a new template: the pin is part of its
    // id); one that pins a version the dataset does not have is refused at submission.
    let mut pinned = TemplateSpec::from_file(
        &format!("name = \"persons, first delivery\"\nsql = \"{SQL}\"\n[versions]\nsocial_insurance = 1\n"),
        Path::new("."),
    )
    .expect("a template file with [versions]")
    .0;
    assert_eq!(pinned.versions.get("social_insurance"), Some(&1));
    let template = templates::submit_checked(&mut fixture.store, OPERATOR, pinned.clone(), None)
        .await
        .expect("submitted");
    templates::approve(&mut fixture.store, template.id.as_str(), approval()).expect("approved");
    let (manifest, _) = released(fixture.run(template.id.as_str(), &[]).await.expect("ran"));
    assert_eq!(manifest.sources[0].version, Some(1));
    assert_eq!(manifest.sources[0].content_blake3, first.content_blake3);
    pinned.versions.insert("social_insurance".into(), 9);
    pinned.name = "persons, a delivery that never came".into();
    let refused = templates::submit_checked(&mut fixture.store, OPERATOR, pinned, None)
        .await
        .expect_err("no version 9");
    assert!(refused.to_string().contains("versions 1 to 2"), "{refused}");

    // The audit log records the version and still verifies.
    let verified = veil(&["audit", "verify"], &store_dir);
    assert!(verified.status.success(), "{verified:?}");
}
