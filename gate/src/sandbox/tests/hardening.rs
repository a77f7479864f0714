//! The sandbox's own guarantees, tested without the gate: the statement policy, the table
//! scope, the memory limit and the time limit.

use std::path::Path;
use std::sync::Arc;

use crate::sandbox::{ForbiddenStatement, Sandbox, SandboxBuilder, SandboxError, SandboxLimits};
use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Writes `rows` rows of (id, city) to `dir/t/data.parquet`.
fn write_table(dir: &Path, rows: i64) -> Result<(), Box<dyn std::error::Error>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("city", DataType::Utf8, false),
    ]));
    let ids: Vec<i64> = (0..rows).collect();
    let cities: Vec<&str> = (0..rows)
        .map(|i| if i % 2 == 0 { "Taiyuan" } else { "Datong" })
        .collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(cities)),
        ],
    )?;
    std::fs::create_dir_all(dir.join("t"))?;
    let file = std::fs::File::create(dir.join("t/data.parquet"))?;
    let mut writer = ArrowWriter::try_new(file, schema, None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}

async fn sandbox(dir: &Path, limits: SandboxLimits) -> Result<Sandbox, SandboxError> {
    SandboxBuilder::new(dir)
        .limits(limits)
        .table("t", "t/data.parquet")
        .build()
        .await
}

#[tokio::test]
async fn only_a_single_read_only_query_is_planned() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_table(dir.path(), 10)?;
    let sandbox = sandbox(dir.path(), SandboxLimits::default()).await?;
    let outside = dir.path().join("outside.csv");
    let cases: Vec<(String, SandboxError)> = vec![
        (
            format!(
                "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}'",
                outside.display()
            ),
            SandboxError::Forbidden(ForbiddenStatement::CreateExternalTable),
        ),
        (
            format!("COPY (SELECT * FROM t) TO '{}'", outside.display()),
            SandboxError::Forbidden(ForbiddenStatement::Copy),
        ),
        (
            "EXPLAIN SELECT * FROM t".into(),
            SandboxError::Forbidden(ForbiddenStatement::Explain),
        ),
        (
            "EXPLAIN ANALYZE SELECT * FROM t".into(),
            SandboxError::Forbidden(ForbiddenStatement::Explain),
        ),
        (
            "SET datafusion.execution.batch_size = 1".into(),
            SandboxError::Forbidden(ForbiddenStatement::Set),
        ),
        (
            "DROP TABLE t".into(),
            SandboxError::Forbidden(ForbiddenStatement::Ddl("DROP")),
        ),
        (
            "INSERT INTO t VALUES (1, 'x')".into(),
            SandboxError::Forbidden(ForbiddenStatement::Dml("INSERT")),
        ),
        (
            "SELECT 1 FROM t; SELECT 2 FROM t".into(),
            SandboxError::MultipleStatements { count: 2 },
        ),
    ];
    for (sql, expected) in cases {
        let error = sandbox.plan_query(&sql, &[]).await.err();
        assert_eq!(error, Some(expected), "{sql}");
    }
    assert!(!outside.exists(), "COPY must not have written a file");
    Ok(())
}

#[tokio::test]
async fn only_the_registered_tables_and_no_table_functions_exist() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_table(dir.path(), 10)?;
    let sandbox = sandbox(dir.path(), SandboxLimits::default()).await?;
    for sql in [
        "SELECT * FROM other",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM generate_series(1, 10)",
        "SELECT * FROM 'outside.parquet'",
    ] {
        let error = sandbox.plan_query(sql, &[]).await.err();
        assert!(
            matches!(
                error,
                Some(SandboxError::UnknownTable { .. } | SandboxError::Planning(_))
            ),
            "{sql}: {error:?}"
        );
    }
    assert!(
        sandbox
            .plan_query("SELECT count(*) FROM t", &[])
            .await
            .is_ok()
    );
    Ok(())
}

#[tokio::test]
async fn a_query_over_its_memory_limit_fails_with_resources_exhausted() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_table(dir.path(), 200_000)?;
    let limits = SandboxLimits {
        memory_bytes: 64 * 1024,
        ..SandboxLimits::default()
    };
    let sandbox = sandbox(dir.path(), limits).await?;
    let plan = sandbox
        .plan_query("SELECT id, count(*) FROM t GROUP BY id", &[])
        .await?;
    let error = sandbox.execute(plan).await.err();
    assert_eq!(error, Some(SandboxError::ResourcesExhausted));
    Ok(())
}

#[tokio::test]
async fn a_query_over_its_time_limit_is_stopped() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_table(dir.path(), 20_000)?;
    let limits = SandboxLimits {
        wall_ms: 50,
        ..SandboxLimits::default()
    };
    let sandbox = sandbox(dir.path(), limits).await?;
    // 400 million comparisons: far longer than 50 ms.
    let plan = sandbox
        .plan_query("SELECT count(*) FROM t a JOIN t b ON a.id < b.id", &[])
        .await?;
    let error = sandbox.execute(plan).await.err();
    assert_eq!(error, Some(SandboxError::TimedOut { limit_ms: 50 }));
    Ok(())
}

#[tokio::test]
async fn execution_errors_carry_no_row_values() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_table(dir.path(), 10)?;
    let sandbox = sandbox(dir.path(), SandboxLimits::default()).await?;
    let plan = sandbox
        .plan_query("SELECT CAST(city AS INT) FROM t", &[])
        .await?;
    let error = sandbox
        .execute(plan)
        .await
        .err()
        .ok_or("the cast should fail")?;
    let message = error.to_string();
    assert!(matches!(error, SandboxError::QueryFailed(_)), "{error:?}");
    assert!(
        !message.contains("Taiyuan") && !message.contains("Datong"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn scan_metrics_are_counted() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_table(dir.path(), 1_000)?;
    let sandbox = sandbox(dir.path(), SandboxLimits::default()).await?;
    let plan = sandbox
        .plan_query(
            "SELECT city, count(*) FROM t WHERE id < 10 GROUP BY city",
            &[],
        )
        .await?;
    let (_, stats) = sandbox.execute(plan).await?;
    // Pruning is off, so every row is scanned whatever the filter says.
    assert_eq!(stats.rows_scanned, 1_000);
    assert!(stats.bytes_scanned > 0);
    Ok(())
}
