//! The web console in a real browser: headless Chromium driven through WebDriver against
//! `veil serve` on 127.0.0.1, as the bureau, an operator and a buyer use it. Every page a test
//! opens is checked for the accessibility basics (a title, one main heading, a label on every
//! field) and photographed into `target/browser-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use veil_runtime::principals::{self, Role};
use veil_runtime::templates::{ParamSpec, ParamType, TemplateSpec};
use veil_sdk::api::{ApproveTemplate, JobView, SubmitJob};
use veil_sdk::client::Client;

use crate::browser::Browser;
use crate::serve::{Keys, Server, add_principals};
use crate::support::{Fixture, veil_bin};

/// One browser at a time: each test starts its own Chromium, and several at once on a small
/// machine would make every page slow enough to time out.
pub(crate) static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a page element may take to appear.
const PAGE_WAIT: Duration = Duration::from_secs(20);
/// How long a job may take to end.
const JOB_WAIT: Duration = Duration::from_secs(180);

/// Where a test's screenshots go: `target/browser-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/all-… → target/
    exe.ancestors()
        .nth(3)
        .expect("target dir")
        .join("browser-screenshots")
}

/// Opens `url`, checks the page's accessibility basics and saves a screenshot as `shot`.
async fn visit(browser: &Browser, url: &str, shot: &str) {
    browser.goto(url).await.expect("page opens");
    check_page(browser, shot).await;
}

/// The accessibility basics of the page now shown, and its screenshot.
pub(crate) async fn check_page(browser: &Browser, shot: &str) {
    browser.wait_for("h1", PAGE_WAIT).await.expect("a heading");
    let problems = browser.accessibility_problems().await.expect("checked");
    assert!(
        problems.is_empty(),
        "{shot}: accessibility problems: {problems:?}"
    );
    browser
        .screenshot(&screenshot_dir().join(format!("{shot}.png")))
        .await
        .expect("screenshot");
}

async fn heading(browser: &Browser) -> String {
    browser
        .find("h1")
        .await
        .expect("h1")
        .text()
        .await
        .expect("text")
}

pub(crate) async fn sign_in(browser: &Browser, url: &str, key: &str) {
    browser
        .goto(&format!("{url}/console/sign-in"))
        .await
        .expect("sign-in page");
    check_page(browser, "sign-in").await;
    browser
        .find("#key")
        .await
        .expect("key field")
        .send_keys(key)
        .await
        .expect("typed");
    browser
        .find("#sign-in")
        .await
        .expect("button")
        .click()
        .await
        .expect("clicked");
    browser
        .wait_for(".who", PAGE_WAIT)
        .await
        .expect("signed in: the header names the principal");
}

pub(crate) async fn sign_out(browser: &Browser) {
    browser
        .find(".who button")
        .await
        .expect("sign-out button")
        .click()
        .await
        .expect("clicked");
    browser
        .wait_for("#sign-in", PAGE_WAIT)
        .await
        .expect("back at the sign-in form");
}

pub(crate) async fn click(browser: &Browser, css: &str) {
    browser
        .find(css)
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

pub(crate) async fn type_into(browser: &Browser, css: &str, text: &str) {
    let field = browser
        .find(css)
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    field.clear().await.expect("cleared");
    field.send_keys(text).await.expect("typed");
}

/// Persons per city born from a year the operator picks among three.
fn persons_by_city(name: &str) -> TemplateSpec {
    TemplateSpec {
        name: name.into(),
        sql: "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance WHERE birth_year >= :born GROUP BY city".into(),
        params: vec![ParamSpec {
            name: "born".into(),
            kind: ParamType::Integer,
            allowed: Some(vec!["1950".into(), "1960".into(), "1970".into()]),
        }],
        wasm: None,
        versions: Default::default(),
    }
}

pub(crate) async fn start_browser() -> Browser {
    Browser::start().await.unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bureau_approves_an_operator_runs_and_a_buyer_buys_downloads_and_verifies() {
    let _one = ONE_BROWSER.lock().await;
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let template = operator
        .submit_template(&persons_by_city("各市参保人数 persons by city"))
        .await
        .expect("submitted");
    let browser = start_browser().await;
    let url = &server.url;

    // The bureau: the queue lists the pending template; its page shows the verdict; the
    // preview shows each column's error at the terms typed; approving records them.
    sign_in(&browser, url, &keys.bureau).await;
    assert!(
        browser
            .url()
            .await
            .expect("url")
            .ends_with("/console/bureau/queue")
    );
    check_page(&browser, "approval-queue").await;
    let link = browser
        .find(".pending a")
        .await
        .expect("the pending template is listed");
    assert_eq!(
        link.text().await.expect("name"),
        "各市参保人数 persons by city"
    );
    link.click().await.expect("opened");
    let verdict = browser
        .wait_for("#verdict", PAGE_WAIT)
        .await
        .expect("verdict");
    assert!(
        verdict
            .text()
            .await
            .expect("text")
            .contains("Passes every rule"),
        "the gate's static verdict is shown"
    );
    assert!(
        browser
            .source()
            .await
            .expect("source")
            .contains("social_insurance"),
        "the datasets it reads are listed"
    );
    type_into(&browser, "#epsilon", "1").await;
    type_into(&browser, "#k", "5").await;
    type_into(&browser, "#price", "250").await;
    click(&browser, "#preview").await;
    let accuracy = browser
        .wait_for("#accuracy", PAGE_WAIT)
        .await
        .expect("the preview's accuracy table");
    assert!(accuracy.text().await.expect("text").contains("persons"));
    check_page(&browser, "approval-preview").await;
    assert_eq!(
        browser
            .find("#epsilon")
            .await
            .expect("field")
            .prop("value")
            .await
            .expect("value"),
        "1",
        "the terms typed survive the preview"
    );
    click(&browser, "#approve").await;
    browser
        .wait_for(".state-approved", PAGE_WAIT)
        .await
        .expect("approved");
    let approved = operator.template(&template.id).await.expect("template");
    let terms = approved.approval.expect("approved through the console");
    assert_eq!(
        (terms.epsilon, terms.k, terms.price_per_run_fen),
        (1.0, 5, 250)
    );
    sign_out(&browser).await;

    // The operator: runs the template from its form and watches the job end.
    sign_in(&browser, url, &keys.operator).await;
    check_page(&browser, "operator-home").await;
    click(
        &browser,
        &format!("a[href='/console/operator/templates/{}']", template.id),
    )
    .await;
    browser
        .wait_for("#job-form", PAGE_WAIT)
        .await
        .expect("job form");
    check_page(&browser, "operator-job-form").await;
    browser
        .find("#p-born")
        .await
        .expect("parameter field")
        .select("1960")
        .await
        .expect("chosen");
    click(&browser, "#check").await;
    browser
        .wait_for("#dry-run", PAGE_WAIT)
        .await
        .expect("the check's answer");
    click(&browser, "#run").await;
    let state = wait_job_state(&browser).await;
    assert_eq!(state, "released");
    check_page(&browser, "operator-job").await;
    let job_url = browser.url().await.expect("url");
    let jobs = operator.jobs().await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].params.get("born").map(String::as_str), Some("1960"));
    assert!(job_url.ends_with(&jobs[0].id));
    click(&browser, "#product-link").await;
    type_into(&browser, "#price_fen", "1001").await;
    click(&browser, "#list").await;
    browser
        .wait_for("#files", PAGE_WAIT)
        .await
        .expect("product page");
    sign_out(&browser).await;

    // The buyer: the storefront's card, buy, download every file, verify offline.
    sign_in(&browser, url, &keys.buyer).await;
    check_page(&browser, "storefront").await;
    let card = browser.find(".offer").await.expect("a listing card");
    let card_text = card.text().await.expect("text");
    for expected in ["各市参保人数", "social_insurance", "¥10.01", "k 5"] {
        assert!(
            card_text.contains(expected),
            "{expected} on the card: {card_text}"
        );
    }
    click(&browser, ".offer button.buy").await;
    browser
        .wait_for("a.download", PAGE_WAIT)
        .await
        .expect("download links");
    check_page(&browser, "buyer-product").await;
    let links = browser.find_all("a.download").await.expect("links");
    let mut names = Vec::new();
    for link in &links {
        names.push(link.text().await.expect("name"));
        link.click().await.expect("download");
    }
    assert!(names.iter().any(|n| n == "manifest.json"), "{names:?}");
    let mut folder = None;
    for name in &names {
        let path = browser
            .downloaded(name, Duration::from_secs(30))
            .await
            .expect("downloaded");
        folder = path.parent().map(Path::to_path_buf);
    }
    let command = browser
        .find("#verify-command")
        .await
        .expect("verify command")
        .text()
        .await
        .expect("text");
    let key = command
        .split_whitespace()
        .last()
        .expect("the command ends with the key")
        .to_string();
    let verify = Command::new(veil_bin())
        .args(["product", "verify", "--public-key", &key])
        .arg(folder.expect("a download folder"))
        .output()
        .expect("veil product verify");
    assert!(
        verify.status.success(),
        "the downloaded product verifies offline: {verify:?}"
    );
    visit(
        &browser,
        &format!("{url}/console/purchases"),
        "buyer-purchases",
    )
    .await;
    assert!(browser.source().await.expect("source").contains("usable"));
    browser.close().await.expect("closed");
}

/// Reloads a job's page until its state is final, and returns it.
async fn wait_job_state(browser: &Browser) -> String {
    let started = std::time::Instant::now();
    loop {
        if let Ok(element) = browser.find("#job-state").await
            && let Ok(state) = element.text().await
            && ["released", "rejected", "failed", "cancelled"].contains(&state.as_str())
        {
            return state;
        }
        assert!(started.elapsed() < JOB_WAIT, "the job did not end");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A store, its principals, a server, and a template the operator submitted under `name`.
async fn submitted(name: &str) -> (Fixture, Keys, Server, String) {
    let mut fixture = Fixture::new(3_000);
    let keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let template = operator
        .submit_template(&persons_by_city(name))
        .await
        .expect("submitted");
    (fixture, keys, server, template.id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_named_with_a_script_tag_renders_as_text_and_runs_nothing() {
    let _one = ONE_BROWSER.lock().await;
    let name =
        "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";
    let (_fixture, keys, server, id) = submitted(name).await;
    let browser = start_browser().await;
    sign_in(&browser, &server.url, &keys.bureau).await;
    for (page, shot) in [
        ("/console/bureau/queue".to_string(), "script-name-queue"),
        (
            format!("/console/bureau/templates/{id}"),
            "script-name-template",
        ),
    ] {
        visit(&browser, &format!("{}{page}", server.url), shot).await;
        assert!(
            browser.find_all("script").await.expect("query").is_empty(),
            "{page}: no script element"
        );
        assert!(
            browser.find_all("img").await.expect("query").is_empty(),
            "{page}: no image element"
        );
        // The script would have set the title to exactly `pwned`; the name shows as text in it.
        let title = browser.title().await.expect("title");
        assert_ne!(title, "pwned", "{page}: nothing ran");
        assert!(title.ends_with("· Veil"), "{page}: {title}");
        let source = browser.source().await.expect("source");
        assert!(
            source.contains("&lt;script&gt;"),
            "{page}: the name is escaped"
        );
    }
    // The heading shows the name exactly as the operator wrote it.
    assert_eq!(heading(&browser).await, format!("Template {name}"));
    browser.close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_posted_without_its_csrf_token_is_refused_and_changes_nothing() {
    let _one = ONE_BROWSER.lock().await;
    let (_fixture, keys, server, id) = submitted("persons by city").await;
    // Another page on the same machine (same site, another origin) with a form that posts an
    // approval to the console without the token, as a cross-site attacker's page would.
    let attacker = AttackerPage::start(&format!(
        r#"<!DOCTYPE html><html><head><title>Prize</title></head><body><h1>Prize</h1>
        <form method="post" action="{}/console/bureau/templates/{id}/approve">
        <input type="hidden" name="epsilon" value="50"><input type="hidden" name="delta" value="0.000001">
        <input type="hidden" name="k" value="2"><input type="hidden" name="max_groups" value="1">
        <input type="hidden" name="max_rows" value="1"><input type="hidden" name="price_per_run_fen" value="0">
        <input type="hidden" name="mechanism" value="laplace"><input type="hidden" name="action" value="approve">
        <input type="hidden" name="csrf" value="guessed">
        <button type="submit" id="win">Claim</button></form></body></html>"#,
        server.url
    ))
    .await;
    let browser = start_browser().await;
    sign_in(&browser, &server.url, &keys.bureau).await;
    let cookies = browser.cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|c| c.name == "veil_session")
        .expect("a session cookie");
    assert!(session.http_only, "the session cookie is HttpOnly");
    assert_eq!(session.same_site.as_deref(), Some("Strict"));
    browser.goto(&attacker.url).await.expect("attacker page");
    click(&browser, "#win").await;
    browser.wait_for("h1", PAGE_WAIT).await.expect("an answer");
    let source = browser.source().await.expect("source");
    assert!(
        source.contains("security token (CSRF)"),
        "refused: {source}"
    );
    check_page(&browser, "csrf-refused").await;

    // Without any token, straight from a client holding the session cookie: refused too.
    let refused = reqwest::Client::new()
        .post(format!("{}/console/bureau/templates/{id}/approve", server.url))
        .header("cookie", format!("veil_session={}", session.value))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("epsilon=50&delta=0.000001&k=2&max_groups=1&max_rows=1&price_per_run_fen=0&mechanism=laplace&action=approve")
        .send()
        .await
        .expect("posted");
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    let template = operator.template(&id).await.expect("template");
    assert_eq!(template.state, "submitted", "nothing was approved");
    browser.close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_operators_job_and_product_are_not_reachable_by_url() {
    let _one = ONE_BROWSER.lock().await;
    let (mut fixture, keys, server, id) = submitted("persons by city").await;
    let other_key = principals::add(&mut fixture.store, Role::Operator, "op-other")
        .expect("principal")
        .1
        .expose()
        .to_string();
    let job = approved_and_run(&server.url, &keys, &id, 0, "1960").await;
    let product = job.product_id.clone().expect("released");
    let browser = start_browser().await;
    sign_in(&browser, &server.url, &other_key).await;
    for (page, shot) in [
        (format!("/console/jobs/{}", job.id), "other-operator-job"),
        (
            format!("/console/products/{product}"),
            "other-operator-product",
        ),
        (
            format!("/console/products/{product}/files/manifest.json"),
            "other-operator-file",
        ),
        (
            format!("/console/operator/templates/{id}"),
            "other-operator-template",
        ),
    ] {
        visit(&browser, &format!("{}{page}", server.url), shot).await;
        assert_eq!(heading(&browser).await, "Not found 未找到", "{page}");
        let source = browser.source().await.expect("source");
        assert!(!source.contains("1960"), "{page}: nothing of the job shows");
    }
    visit(
        &browser,
        &format!("{}/console/jobs", server.url),
        "other-operator-jobs",
    )
    .await;
    assert!(
        !browser.source().await.expect("source").contains(&job.id),
        "the other operator's list does not name the job"
    );
    browser.close().await.expect("closed");
}

/// Approves template `id` at ε 1, k 5 and `price_fen` a run, and runs it once with `born`.
async fn approved_and_run(url: &str, keys: &Keys, id: &str, price_fen: i64, born: &str) -> JobView {
    Client::new(url, &keys.bureau)
        .expect("client")
        .approve_template(
            id,
            &ApproveTemplate {
                epsilon: Some(1.0),
                k: Some(5),
                price_per_run_fen: Some(price_fen),
                ..Default::default()
            },
        )
        .await
        .expect("approved");
    let operator = Client::new(url, &keys.operator).expect("client");
    let submitted = operator
        .submit_job(
            &SubmitJob {
                template: id.to_string(),
                params: [("born".to_string(), born.to_string())].into(),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("queued");
    operator
        .wait_job(&submitted.job.id, JOB_WAIT)
        .await
        .expect("ended")
}

/// A page served from another port on 127.0.0.1 — another origin, as an attacker's site is.
struct AttackerPage {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl AttackerPage {
    async fn start(html: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
            html.len()
        );
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        Self { url, task }
    }
}

impl Drop for AttackerPage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bureau_settles_the_month_verifies_the_audit_log_and_manages_keys_in_the_browser() {
    let _one = ONE_BROWSER.lock().await;
    let (fixture, keys, server, id) = submitted("persons by city").await;
    // The month's business through the API: one run at ¥2.50, one sale at ¥10.01.
    let job = approved_and_run(&server.url, &keys, &id, 250, "1950").await;
    let product = job.product_id.clone().expect("released");
    let operator = Client::new(&server.url, &keys.operator).expect("client");
    operator
        .list_for_sale(&product, 1_001)
        .await
        .expect("listed");
    let buyer = Client::new(&server.url, &keys.buyer).expect("client");
    buyer.purchase(&product).await.expect("bought");
    drop(server);

    // The next month: the bureau's server, its clock past the month's end, settles it.
    let period = veil_runtime::clock::period_of(veil_runtime::clock::now());
    let (_, end) = veil_runtime::settlement::period_bounds(&period).expect("period");
    let later = veil_runtime::clock::format(end + chrono::Duration::hours(1));
    let server = Server::start_in(&fixture.store_path(), 1, &[], &[("VEIL_CLOCK", &later)]);
    let url = &server.url;
    let browser = start_browser().await;
    sign_in(&browser, url, &keys.bureau).await;

    // The catalog: a dataset's policy and registration report; the grant's budget use per
    // month is a chart.
    let catalog = format!("{url}/console/bureau/catalog");
    visit(&browser, &catalog, "catalog").await;
    click(&browser, "a[href^='/console/bureau/datasets/']").await;
    check_page(&browser, "dataset").await;
    let dataset = browser.source().await.expect("source");
    assert!(dataset.contains("Policy 策略") && dataset.contains("Registration report"));
    visit(&browser, &catalog, "catalog").await;
    click(&browser, "a[href^='/console/bureau/grants/']").await;
    browser
        .wait_for("#budget-chart svg", PAGE_WAIT)
        .await
        .expect("the budget chart");
    check_page(&browser, "grant-budget").await;
    let budget = browser
        .find("#budget")
        .await
        .expect("figures")
        .text()
        .await
        .expect("text");
    assert!(budget.contains(&period), "the month of the run: {budget}");

    // Money: the charts, then settlement, whose figures are the ledger's to the fen.
    visit(
        &browser,
        &format!("{url}/console/bureau/money?period={period}"),
        "money",
    )
    .await;
    browser
        .find("#party-chart svg")
        .await
        .expect("revenue per party");
    browser
        .find("#dataset-chart svg")
        .await
        .expect("revenue per dataset");
    click(&browser, "#settle").await;
    let settled = browser
        .wait_for("#settled", PAGE_WAIT)
        .await
        .expect("settled")
        .text()
        .await
        .expect("text");
    check_page(&browser, "money-settled").await;
    // By hand: the run charged the operator ¥2.50; the sale of ¥10.01 gave the provider 40 %
    // (¥4.00), the operator 40 % (¥4.00) and the platform the rest (¥2.01).
    for expected in ["¥1.50", "¥4.00", "¥4.51"] {
        assert!(settled.contains(expected), "{expected} in {settled}");
    }
    let platform = Client::new(url, &keys.bureau)
        .expect("client")
        .statement_of(&period, "platform")
        .await
        .expect("statement");
    assert_eq!(platform["net"], 451);

    // Jobs: the filtered list names the released job, whose page has its meter record.
    visit(
        &browser,
        &format!("{url}/console/jobs?state=released&operator=op-test"),
        "bureau-jobs",
    )
    .await;
    click(&browser, &format!("a[href='/console/jobs/{}']", job.id)).await;
    let meter = browser
        .wait_for("#meter", PAGE_WAIT)
        .await
        .expect("the meter record")
        .text()
        .await
        .expect("text");
    check_page(&browser, "bureau-job").await;
    assert!(meter.contains("¥2.50"), "the run's price: {meter}");

    // The governance pages open and pass the accessibility basics.
    visit(
        &browser,
        &format!("{url}/console/bureau/corrections"),
        "corrections",
    )
    .await;
    visit(
        &browser,
        &format!("{url}/console/bureau/incidents"),
        "incidents",
    )
    .await;
    visit(
        &browser,
        &format!("{url}/console/bureau/disputes"),
        "disputes",
    )
    .await;

    // Audit: verify from the browser.
    visit(&browser, &format!("{url}/console/bureau/audit"), "audit").await;
    click(&browser, "#verify").await;
    let outcome = browser
        .wait_for("#verify-outcome", PAGE_WAIT)
        .await
        .expect("outcome")
        .text()
        .await
        .expect("text");
    assert!(outcome.contains("verified"), "{outcome}");
    check_page(&browser, "audit-verified").await;

    // Principals: a new buyer's key is shown once and works; rotating it stops the old one.
    visit(
        &browser,
        &format!("{url}/console/bureau/principals"),
        "principals",
    )
    .await;
    browser
        .find("#add-role")
        .await
        .expect("role")
        .select("buyer")
        .await
        .expect("chosen");
    type_into(&browser, "#add-name", "采购方 buyer-2").await;
    click(&browser, "#add").await;
    let first = browser
        .wait_for("#new-key", PAGE_WAIT)
        .await
        .expect("the new key")
        .text()
        .await
        .expect("text");
    check_page(&browser, "principal-added").await;
    let me = Client::new(url, &first)
        .expect("client")
        .me()
        .await
        .expect("the key works");
    assert_eq!(me.name, "采购方 buyer-2");
    let added = principals::get(&fixture.store, "采购方 buyer-2").expect("stored");
    visit(
        &browser,
        &format!("{url}/console/bureau/principals"),
        "principals-list",
    )
    .await;
    click(&browser, &format!("#rotate-{}", added.id)).await;
    let second = browser
        .wait_for("#new-key", PAGE_WAIT)
        .await
        .expect("the rotated key")
        .text()
        .await
        .expect("text");
    assert_ne!(first, second);
    assert!(
        Client::new(url, &first)
            .expect("client")
            .me()
            .await
            .is_err(),
        "the old key stopped working"
    );
    Client::new(url, &second)
        .expect("client")
        .me()
        .await
        .expect("the new key works");
    browser.close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn console_pages_forbid_scripts_are_not_cached_and_need_a_session() {
    let mut fixture = Fixture::new(200);
    let _keys = add_principals(&mut fixture);
    let server = Server::start(&fixture.store_path(), 1);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let page = http
        .get(format!("{}/console/sign-in", server.url))
        .send()
        .await
        .expect("sign-in page");
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let policy = header("content-security-policy");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(
        !policy.contains("script-src"),
        "no script source at all: {policy}"
    );
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("x-frame-options"), "DENY");
    let body = page.text().await.expect("html");
    assert!(!body.contains("<script"), "the console carries no script");
    // Every page but sign-in needs a session; a form posted without one changes nothing.
    for path in ["/console/bureau/queue", "/console/jobs", "/console/store"] {
        let answer = http
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status(), reqwest::StatusCode::SEE_OTHER, "{path}");
        assert_eq!(
            answer
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok()),
            Some("/console/sign-in"),
            "{path}"
        );
    }
    let wrong = http
        .post(format!("{}/console/sign-in", server.url))
        .form(&[("key", "veil_wrong"), ("csrf", "x")])
        .send()
        .await
        .expect("answer");
    assert_eq!(
        wrong.status(),
        reqwest::StatusCode::FORBIDDEN,
        "a sign-in without the sign-in cookie's token is refused"
    );
}
