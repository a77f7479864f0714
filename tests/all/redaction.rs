//! Redaction (issue 10): a job that fails on a platform fault tells its operator the one fixed
//! failure sentence — over HTTP, in the job record and through `veil client` — and never the
//! fault's own text (a path of the store, an I/O error); that detail reaches the bureau's audit
//! entry only, as an internal error over HTTP reaches the server's log only.
//!
//! The fault is real: the store's `products/` folder is a read-only file system while the job
//! runs, so writing the product fails with an I/O error that names the folder. Mounting needs
//! root (or `CAP_SYS_ADMIN`), as the disk-full tests in `ends` do; without it the test fails and
//! says so rather than skip.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use veil_gate::FAILED_MESSAGE;
use veil_sdk::api::SubmitJob;
use veil_sdk::client::Client;

use crate::serve::{Server, add_principals};
use crate::support::{Fixture, Tmpfs, approval, submit_and_approve, veil_bin};

const PERSONS_BY_CITY: &str =
    "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance GROUP BY city";

/// What no operator may read: the store's location and the words an I/O error is made of.
fn assert_no_internal_text(shown: &str, store: &Path) {
    for internal in [
        store.to_string_lossy().as_ref(),
        "products",
        "Read-only",
        "os error",
        "writing the product",
    ] {
        assert!(
            !shown.contains(internal),
            "an operator was shown `{internal}`: {shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_failing_on_a_platform_fault_shows_its_operator_no_internal_text() {
    let mut fixture = Fixture::new(2_000);
    let template =
        submit_and_approve(&mut fixture.store, PERSONS_BY_CITY, &[], approval()).expect("approved");
    let keys = add_principals(&mut fixture);
    let root = fixture.store_path();
    let read_only = Tmpfs::mount(
        &fixture.store.products_dir(),
        "ro,size=1m",
        "a read-only file system",
    );
    let server = Server::start(&root, 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");

    let submitted = operator
        .submit_job(
            &SubmitJob {
                template: template.clone(),
                params: Default::default(),
                grant: None,
            },
            None,
        )
        .await
        .expect("queued");
    let ended = operator
        .wait_job(&submitted.job.id, Duration::from_secs(60))
        .await
        .expect("ended");
    assert_eq!(ended.state, "failed", "{ended:?}");
    assert_eq!(ended.failure.as_deref(), Some(FAILED_MESSAGE));

    // The raw HTTP answers, one job and the list, hold nothing internal either.
    let http = reqwest::Client::new();
    for path in [
        format!("/v1/jobs/{}", submitted.job.id),
        "/v1/jobs".to_string(),
    ] {
        let body = http
            .get(format!("{}{path}", server.url))
            .bearer_auth(&keys.operator)
            .send()
            .await
            .expect("answered")
            .text()
            .await
            .expect("a body");
        assert!(body.contains(FAILED_MESSAGE), "{path}: {body}");
        assert_no_internal_text(&body, &root);
    }

    // Nor does `veil client`, which shows the job record it reads over HTTP.
    let shown = Command::new(veil_bin())
        .args(["client", "job", "show", &submitted.job.id])
        .env("VEIL_URL", &server.url)
        .env("VEIL_TOKEN", &keys.operator)
        .output()
        .expect("veil client runs");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&shown.stdout),
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(shown.contains(FAILED_MESSAGE), "{shown}");
    assert_no_internal_text(&shown, &root);

    // The bureau's audit entry keeps what went wrong.
    drop(server);
    drop(read_only);
    let detail: String = fixture
        .store
        .conn()
        .query_row(
            "SELECT details FROM audit WHERE kind = 'job.failed' AND subject = ?1",
            [&submitted.job.id],
            |row| row.get(0),
        )
        .expect("the failure is audited");
    assert!(detail.contains("writing the product"), "{detail}");
}
