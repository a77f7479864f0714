//! A hostile WASM mapper that hands every unit's raw input — canary ids, districts and
//! incomes included — to the one host function it may call (`veil.log`), then traps. Nothing
//! of it may reach the product, the job's records or the server's output.

use std::time::Duration;

use crate::canary::{Domain, assert_clean};
use crate::corpus::scan_product;
use crate::kill::wasm_template;
use crate::server::{Http, Server};

const LOGGING_MAPPER: &str = r#"(module
    (import "veil" "log" (func $log (param i32 i32)))
    (memory (export "memory") 1)
    (func (export "veil_alloc") (param i32) (result i32) (i32.const 8192))
    (func (export "veil_map") (param $ptr i32) (param $len i32) (result i64)
        (call $log (local.get $ptr) (local.get $len))
        unreachable))"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_mapper_that_logs_its_raw_input_leaks_nothing() {
    let domain = Domain::new();
    let server = Server::start(&domain.root(), 1);
    let operator = Http::new(&server, &domain.keys.operator);
    let module = wat::parse_str(LOGGING_MAPPER).expect("wat");
    let template = wasm_template(
        &domain,
        &server,
        "logger",
        &module,
        "SELECT person_id, district, monthly_income FROM citizens",
        &[],
        1_000_000,
    )
    .await;
    let answer = operator
        .post("/jobs", &serde_json::json!({ "template": template }))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let id = answer.json()["job"]["id"]
        .as_str()
        .expect("a job id")
        .to_string();
    let job = operator.wait_job(&id, Duration::from_secs(120)).await;
    assert_eq!(job["state"], "released", "{job}");
    let product = job["product_id"].as_str().expect("a product");
    let (rows, _) = scan_product(&operator, product).await;
    assert_eq!(rows, 1, "one row of totals");
    for path in ["/jobs", "/meter", "/templates"] {
        let answer = operator.get(path).await.ok(path);
        assert_clean(path, answer.body.as_bytes());
    }
    let log = server.stop();
    assert_clean("the server's output after a logging mapper", &log);
}
