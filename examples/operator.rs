//! An operator's program: everything an authorized operating company does with Veil, through
//! the SDK only (no access to the domain store).
//!
//! 1. submit a template file (a WASM template's module is uploaded first);
//! 2. wait until the bureau has approved it;
//! 3. ask what a run would cost and whether it would pass (nothing runs);
//! 4. submit the job with an idempotency key, so a retry after a network error cannot run it
//!    twice, and wait for its end;
//! 5. download the product and verify it offline against the platform's public key.
//!
//! ```text
//! VEIL_URL=http://127.0.0.1:8080 VEIL_TOKEN=veil_… \
//!   cargo run -p veil-examples --example operator -- examples/templates/income_by_city_gender.toml year=2024
//! ```

use std::path::PathBuf;
use std::time::Duration;

use veil_sdk::api::SubmitJob;
use veil_sdk::client::{Client, ClientError};

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("error: {error}");
        for violation in error.violations() {
            eprintln!("  - [{}] {}", violation.rule, violation.message);
        }
        std::process::exit(1);
    }
}

async fn run() -> Result<(), ClientError> {
    let url = std::env::var("VEIL_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = std::env::var("VEIL_TOKEN")
        .map_err(|_| ClientError::Local("set VEIL_TOKEN to your operator key".into()))?;
    let mut args = std::env::args().skip(1);
    let template_file = PathBuf::from(args.next().ok_or_else(|| {
        ClientError::Local("usage: operator TEMPLATE.toml [name=value ...]".into())
    })?);
    let params = args
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => Ok((name.to_string(), value.to_string())),
            None => Err(ClientError::Local(format!("`{pair}` is not name=value"))),
        })
        .collect::<Result<_, _>>()?;

    let client = Client::new(&url, &token)?;
    let me = client.me().await?;
    println!("operator {} ({})", me.name, me.id);

    let template = client.submit_template_file(&template_file).await?;
    println!("template {} is {}", template.id, template.state);
    let template = client
        .wait_template_decided(&template.id, Duration::from_secs(24 * 3600))
        .await?;
    if template.state != "approved" {
        return Err(ClientError::Local(format!(
            "the bureau did not approve the template: {} ({})",
            template.state,
            template.reasons.unwrap_or_default()
        )));
    }

    let job = SubmitJob {
        template: template.id.clone(),
        params,
        grant: None,
    };
    let check = client.dry_run(&job).await?;
    println!(
        "a run costs ε {} and {} fen; ε {} of {} would remain this month",
        check.epsilon, check.price_fen, check.epsilon_remaining_after, check.epsilon_per_period
    );
    if !check.passes {
        return Err(ClientError::Refused {
            message: "the job would be refused".into(),
            violations: check.violations,
        });
    }

    // The key names this run: rerunning the program resumes it rather than paying again.
    let key = format!("operator-example-{}", template.id);
    let submitted = client.submit_job(&job, Some(&key)).await?;
    let ended = client
        .wait_job_with(&submitted.job.id, Duration::from_secs(3600), |job| {
            eprintln!("  job {}: {}", job.id, job.state)
        })
        .await?;
    let Some(product) = ended.product_id else {
        return Err(ClientError::Refused {
            message: format!("job {} ended {}", ended.id, ended.state),
            violations: ended.violations,
        });
    };

    let dir = std::env::temp_dir().join(&product);
    client.download_product(&product, &dir, |_, _| {}).await?;
    let key = client.platform_key().await?;
    let public = parse_key(&key.public_key_hex)?;
    let verified = veil_sdk::manifest::verify_product_dir(&dir, Some(&public))
        .map_err(|e| ClientError::Local(format!("the product does not verify: {e}")))?;
    println!(
        "product {} verified in {}: {} rows, ε {}, k {}",
        product,
        dir.display(),
        verified.manifest.rows,
        verified.manifest.privacy.epsilon,
        verified.manifest.privacy.k
    );
    Ok(())
}

fn parse_key(hex_text: &str) -> Result<veil_sdk::manifest::VerifyingKey, ClientError> {
    veil_sdk::manifest::parse_public_key(hex_text).map_err(|e| ClientError::Local(e.to_string()))
}
