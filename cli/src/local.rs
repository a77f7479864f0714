//! The `veil` command line, by role: the bureau (init, datasets, grants, template decisions,
//! meter, audit, prices, ledger, settlement, product sale and recall), operators (templates,
//! jobs) and buyers (product verification).

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::demo;
use crate::output::{print_dry_run, print_json, print_meter, print_table};
use crate::progress::Meter;
use crate::terms::{ApprovalTerms, GrantTerms, JobArgs};
use veil_gate::rules::Refusal;
use veil_runtime::error::{Error, Result};
use veil_runtime::grants;
use veil_runtime::ids::{Fen, ProductId};
use veil_runtime::jobs::{self, JobOutcome};
use veil_runtime::principals::Role;
use veil_runtime::store::Store;
use veil_runtime::templates::{self, SpecRules, TemplateSpec};
use veil_runtime::{audit, catalog, keys, metering};
use veil_runtime::{ledger, market, prices, settlement};
use veil_testkit::demo_data;

/// Veil: a compute sandbox for authorized operation of public data.
/// Raw data does not leave the domain; only noisy, k-anonymous, signed products do.
#[derive(Debug, Parser)]
#[command(name = "veil", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct StoreArg {
    /// The domain store folder (created by `veil init`).
    #[arg(long, env = "VEIL_DATA_DIR")]
    pub data_dir: PathBuf,
}

/// The flags of a command that prints a list or an object: the store, and `--json` for
/// scripts (valid JSON on standard output; errors still go to standard error).
#[derive(Debug, Args, Clone)]
pub(crate) struct ViewArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the whole flow on generated data in a temporary store and tell the story.
    Demo {
        /// Rows of generated social-insurance records.
        #[arg(long, default_value_t = 200_000)]
        rows: u64,
        /// Keep the store in this folder instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// (bureau) Create an empty domain store.
    Init(StoreArg),
    /// Write a deterministic synthetic Shanxi data set (Parquet).
    DemoData {
        /// Social-insurance records to generate.
        #[arg(long)]
        rows: u64,
        /// Folder to write the Parquet files into.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the generator: the same seed writes the same data.
        #[arg(long, default_value_t = demo_data::DEMO_SEED)]
        seed: u64,
    },
    /// (bureau) The dataset catalog.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// (bureau) Authorizations of datasets to operators.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// (bureau) Principals — bureau, providers, operators, buyers — and their API keys.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// (operator submits, bureau decides) Job templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// (operator) Run and inspect jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// (buyer, operator) Released products.
    #[command(subcommand)]
    Product(ProductCommand),
    /// (bureau) Meter records.
    #[command(subcommand)]
    Meter(MeterCommand),
    /// (bureau) The price book: rows fee and sale shares.
    #[command(subcommand)]
    Price(PriceCommand),
    /// (bureau) The double-entry ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// (bureau) Buyers' disputes of purchases: list, uphold (refund) or reject.
    #[command(subcommand)]
    Dispute(crate::disputes::DisputeCommand),
    /// (bureau) Correction requests against datasets and products: list, answer.
    #[command(subcommand)]
    Correction(crate::corrections::CorrectionCommand),
    /// (bureau) The emergency stop: freeze the platform, a dataset, an operator or a grant
    /// (`--scope … --reason …`), `lift` a freeze, or `list` the incident log.
    Freeze(crate::freezes::FreezeArgs),
    /// (bureau) Settle a closed month: write each operator's and provider's statement.
    Settle {
        #[command(flatten)]
        store: StoreArg,
        /// The month to settle, YYYY-MM in bureau time; it must have ended.
        #[arg(long)]
        period: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// (bureau) The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the platform's public key (what buyers pin to verify products).
    PlatformKey(ViewArgs),
    /// (bureau) Serve the HTTP API for every role over this store. Each setting is taken from
    /// its flag, else its environment variable, else the --config file, else its default.
    Serve {
        /// The domain store folder (created by `veil init`).
        #[arg(long, env = "VEIL_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// A TOML file with any of these settings (data_dir, listen, workers, queue,
        /// sweep_seconds, grace_seconds, log_format).
        #[arg(long, env = "VEIL_CONFIG")]
        config: Option<PathBuf>,
        /// host:port to listen on [default: 127.0.0.1:8080]; keep it on loopback behind the
        /// bureau's TLS proxy (any other address is warned about).
        #[arg(long, env = "VEIL_LISTEN")]
        listen: Option<String>,
        /// Jobs that run at the same time [default: 2].
        #[arg(long, env = "VEIL_WORKERS")]
        workers: Option<usize>,
        /// Jobs queued or running at once; more submissions get 429 until one ends [default: 256].
        #[arg(long, env = "VEIL_QUEUE")]
        queue: Option<usize>,
        /// Seconds between sweeps that remove files the store does not know (crash debris)
        /// [default: 300].
        #[arg(long, env = "VEIL_SWEEP_SECONDS")]
        sweep_seconds: Option<u64>,
        /// On SIGTERM or Ctrl-C, seconds running jobs get to end before they are cancelled
        /// [default: 60].
        #[arg(long, env = "VEIL_GRACE_SECONDS")]
        grace_seconds: Option<u64>,
        /// The log on standard error: `text` for people, `json` for one JSON object per line
        /// [default: text].
        #[arg(long, env = "VEIL_LOG_FORMAT", value_parser = veil_server::LogFormat::NAMES)]
        log_format: Option<String>,
        /// Run SQL jobs' folds on Veil's executors (`veil executor`), host:port,… ; the file's
        /// `[cluster]` section also sets `bytes_per_partition`.
        #[arg(long, env = "VEIL_CLUSTER", value_delimiter = ',')]
        cluster: Vec<String>,
    },
    /// (bureau) Serve as one of Veil's executors: run the folds of SQL jobs that a `veil serve
    /// --cluster` sends here. Reads the store folder's data and its cluster token (copy both
    /// from the Veil server); keep it on the domain's own network.
    Executor {
        /// The store folder (its data, and `cluster.token`).
        #[arg(long, env = "VEIL_DATA_DIR")]
        data_dir: PathBuf,
        /// host:port to listen on (e.g. 10.0.0.5:50051; port 0: any free port, printed).
        #[arg(long, env = "VEIL_EXECUTOR_LISTEN")]
        listen: String,
        /// Memory the executor's running folds and scans may hold together, in bytes
        /// [default: 2 GiB].
        #[arg(long)]
        memory_bytes: Option<usize>,
    },
    /// (operator, buyer, provider, bureau) Talk to a Veil server through the SDK.
    Client(crate::client::ClientArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum DatasetCommand {
    /// Register a Parquet or CSV file with its policy (TOML). The data's quality is checked
    /// first: rows without a privacy unit and values outside a key set are refused unless
    /// --accept-quality-issues is given; `veil dataset show` prints the report.
    Register {
        #[command(flatten)]
        store: StoreArg,
        /// Table name operators use in SQL.
        #[arg(long)]
        name: String,
        /// The provider's file: .parquet or .csv; or a Parquet object in the domain's object
        /// storage, `s3://BUCKET/KEY.parquet`, read where it lives with the credentials of the
        /// store's object-storage.toml.
        #[arg(long)]
        file: PathBuf,
        /// The dataset's policy (TOML): each column's role, bounds and key set, and the privacy
        /// unit.
        #[arg(long)]
        policy: PathBuf,
        /// A CSV file's text encoding: utf-8 (the default), gbk, gb18030, or any WHATWG label;
        /// a byte-order mark in the file wins.
        #[arg(long)]
        encoding: Option<String>,
        /// A CSV file's field delimiter: one ASCII character, or `tab` [default: ,].
        #[arg(long)]
        delimiter: Option<String>,
        /// Register even with rows that name no privacy unit or values outside a key set,
        /// knowingly; the quality report records it.
        #[arg(long)]
        accept_quality_issues: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Register a new version of a dataset: a new file under the same name, id and policy,
    /// with the same checks. Jobs read it from their next run; products name the version they
    /// read; the dataset's budget is shared by all its versions.
    Update {
        #[command(flatten)]
        store: StoreArg,
        /// The dataset's name or id.
        name: String,
        /// The provider's new file: .parquet or .csv, or `s3://BUCKET/KEY.parquet`.
        #[arg(long)]
        file: PathBuf,
        /// A CSV file's text encoding: utf-8 (the default), gbk, gb18030, or any WHATWG label;
        /// a byte-order mark in the file wins.
        #[arg(long)]
        encoding: Option<String>,
        /// A CSV file's field delimiter: one ASCII character, or `tab` [default: ,].
        #[arg(long)]
        delimiter: Option<String>,
        /// Register even with rows that name no privacy unit or values outside a key set,
        /// knowingly; the quality report records it.
        #[arg(long)]
        accept_quality_issues: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A dataset's asset card: provider, classification, cadence, versions, grants, use per
    /// month, products, the provider's revenue and the valuation with its method.
    Card {
        #[command(flatten)]
        store: StoreArg,
        /// The dataset's name or id.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the asset register (every dataset's card) for the finance department:
    /// `asset-register.csv` (one row per dataset, money in fen) and `asset-register.json`.
    RegisterExport {
        #[command(flatten)]
        store: StoreArg,
        /// The folder to write both files into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// List a dataset's versions: rows, content hash and when each was registered.
    Versions {
        #[command(flatten)]
        store: StoreArg,
        /// The dataset's name or id.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List registered datasets.
    List(ViewArgs),
    /// Show one dataset and its policy.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// Dataset name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GrantCommand {
    /// Grant datasets to an operator for a purpose and term, with a monthly ε budget.
    Create {
        #[command(flatten)]
        store: StoreArg,
        /// The operator the grant is for (its principal name).
        #[arg(long)]
        operator: String,
        #[command(flatten)]
        terms: GrantTerms,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List grants with their budget spent this month.
    List(ViewArgs),
    /// Run the disposition of every grant whose term has ended, once per grant: `destroy`
    /// takes its products off sale and deletes their result files (manifests and ledger lines
    /// stay), `archive` takes them off sale for good, `return` hands them to the bureau.
    /// `veil serve` does this by itself at start and with every sweep.
    Dispose {
        #[command(flatten)]
        store: StoreArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PrincipalCommand {
    /// Add a principal; its API key is printed once and only its hash is stored.
    Add {
        #[command(flatten)]
        store: StoreArg,
        /// bureau | provider | operator | buyer
        #[arg(long)]
        role: String,
        /// The organisation's name (an operator's name is the `--operator` of its jobs).
        #[arg(long)]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List principals (never their keys).
    List(ViewArgs),
    /// Revoke a principal's key.
    Revoke {
        #[command(flatten)]
        store: StoreArg,
        /// Principal id or name.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a principal a new API key, printed once: the old key stops working at once, and
    /// the identity stays (its grants, templates, jobs and purchases stay its own). A revoked
    /// principal is active again with the new key.
    Rotate {
        #[command(flatten)]
        store: StoreArg,
        /// Principal id or name.
        id: String,
        #[command(flatten)]
        expiry: crate::terms::KeyExpiry,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TemplateCommand {
    /// Submit a template: a template file (SQL, or WASM with a [wasm] table), or a WASM
    /// template given by flags. The gate's static rules are checked first.
    Submit {
        #[command(flatten)]
        store: StoreArg,
        /// The operator submitting the template (its principal name).
        #[arg(long)]
        operator: String,
        /// A template file (TOML).
        #[arg(long, conflicts_with_all = ["wasm", "name"])]
        file: Option<PathBuf>,
        /// WASM template: the mapper module (built for wasm32-unknown-unknown).
        #[arg(long, requires_all = ["name", "input_sql", "output_schema", "release_sql"])]
        wasm: Option<PathBuf>,
        /// WASM template: its name.
        #[arg(long)]
        name: Option<String>,
        /// WASM template: the SQL choosing the rows the mapper sees (must output the unit).
        #[arg(long)]
        input_sql: Option<String>,
        /// WASM template: a TOML file of [[output]] columns (name, type, bounds/keys, default).
        #[arg(long)]
        output_schema: Option<PathBuf>,
        /// WASM template: the aggregate over the mapper's output table `mapped`.
        #[arg(long)]
        release_sql: Option<String>,
        /// WASM template: output rows one unit may contribute.
        #[arg(long, default_value_t = 1)]
        max_rows_per_unit: u32,
        /// WASM template: what a failed unit contributes: none | default.
        #[arg(long, default_value = "none")]
        fallback: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve a submitted template, pinning its privacy parameters and price.
    Approve {
        #[command(flatten)]
        store: StoreArg,
        /// Template id, unique prefix (at least 8 characters) or name.
        id: String,
        #[command(flatten)]
        terms: ApprovalTerms,
        /// Only state what these terms would give (each output column's error at 95 %,
        /// grouping warnings), without approving.
        #[arg(long)]
        preview: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Reject a submitted template.
    Reject {
        #[command(flatten)]
        store: StoreArg,
        /// Template id, unique prefix (at least 8 characters) or name.
        id: String,
        #[command(flatten)]
        reason: crate::terms::ReasonArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an approved template.
    Revoke {
        #[command(flatten)]
        store: StoreArg,
        /// Template id, unique prefix (at least 8 characters) or name.
        id: String,
        #[command(flatten)]
        reason: crate::terms::ReasonArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    List(ViewArgs),
    /// Show a template: its SQL, parameters, state and approval terms.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// Template id, unique prefix (at least 8 characters) or name.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Run an approved template.
    Run {
        #[command(flatten)]
        store: StoreArg,
        /// The operator running the job (its principal name).
        #[arg(long)]
        operator: String,
        #[command(flatten)]
        job: JobArgs,
        /// Print the ended job as JSON instead of text (the exit code is the same).
        #[arg(long)]
        json: bool,
    },
    /// Pre-flight: would the job pass, what would it cost, what budget would remain? Reads
    /// no data row and spends nothing.
    Check {
        #[command(flatten)]
        store: StoreArg,
        /// The operator who would run the job (its principal name).
        #[arg(long)]
        operator: String,
        #[command(flatten)]
        job: JobArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a job: its state, and its product or why it was refused.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// Job id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    List(ViewArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProductCommand {
    /// Verify a product folder offline: file digests and the platform signature.
    Verify {
        /// The product folder: manifest.json and the files it lists.
        dir: PathBuf,
        /// The platform's public key (64 hex digits, from `veil platform-key`).
        #[arg(long)]
        public_key: Option<String>,
        /// Or read the public key from a store.
        #[arg(long, env = "VEIL_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    List(ViewArgs),
    /// (operator of the product, or bureau) List a product for sale, or change its price.
    Sell {
        #[command(flatten)]
        store: StoreArg,
        /// Product id.
        id: String,
        /// Price in fen.
        #[arg(long)]
        price_fen: i64,
        /// Sell as this operator instead of as the bureau.
        #[arg(long)]
        operator: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// (bureau) Recall a product: no listing, purchase or download works afterwards.
    Recall {
        #[command(flatten)]
        store: StoreArg,
        /// Product id.
        id: String,
        #[command(flatten)]
        reason: crate::terms::ReasonArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MeterCommand {
    List(ViewArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum PriceCommand {
    /// Show the price book in force and its history.
    Show {
        #[command(flatten)]
        store: StoreArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Set a new price book version, in force from now on.
    Set {
        #[command(flatten)]
        store: StoreArg,
        /// Fee per million rows a released run scanned, in fen (rounded down per run).
        #[arg(long)]
        per_million_rows_fen: i64,
        /// Providers' share of a sale, in basis points (the three shares sum to 10000).
        #[arg(long)]
        provider_bp: i64,
        /// The platform's share of a sale, in basis points.
        #[arg(long)]
        platform_bp: i64,
        /// The operator's share of a sale, in basis points.
        #[arg(long)]
        operator_bp: i64,
        /// The rate the asset register capitalises a dataset's trailing-twelve-month revenue
        /// at, in basis points (1000 = 10 %: a value of ten years' revenue).
        #[arg(long, default_value_t = prices::DEFAULT_CAPITALISATION_RATE_BP)]
        capitalisation_rate_bp: i64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
    /// List postings and their lines, oldest first.
    List {
        #[command(flatten)]
        store: StoreArg,
        /// Only this month (YYYY-MM, bureau time).
        #[arg(long)]
        period: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the keyed hash chain against every signed checkpoint in audit.checkpoints, then
    /// cross-check products, meter records, ledger postings, purchases and settled statements
    /// against their audit entries; exit 5 naming the first mismatch.
    Verify(StoreArg),
}

/// `veil executor`: listens, prints its address, and serves until SIGTERM or Ctrl-C.
async fn executor(data_dir: PathBuf, listen: &str, memory_bytes: Option<usize>) -> Result<i32> {
    use veil_runtime::cluster;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::invalid(format!(
            "cannot listen on {listen} ({e}): give a free host:port with --listen"
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("reading the listening address: {e}")))?;
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::internal(format!("installing the SIGTERM handler: {e}")))?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    let memory_bytes = memory_bytes.unwrap_or(cluster::EXECUTOR_MEMORY_BYTES_DEFAULT);
    // The token is read before the address is printed: an executor that would refuse every
    // request says so and stops instead.
    cluster::token(&data_dir, false)?;
    println!("veil executor: listening on {local}");
    cluster::serve_executor(listener, &data_dir, memory_bytes, shutdown).await?;
    Ok(0)
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })
}

/// Runs one command; returns the process exit code.
pub(crate) async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Demo { rows, keep } => {
            let summary = demo::run(rows, keep.as_deref(), &mut std::io::stdout()).await?;
            println!(
                "\nDemo done: {} jobs released, {} refused, {} products verified offline, {} audit entries verified.",
                summary.released_jobs,
                summary.rejected_jobs,
                summary.products_verified,
                summary.audit_entries
            );
            // A product that fails to verify already ended the demo with an error; a story
            // that released nothing at all is a fault too.
            if summary.released_jobs == 0 || summary.products_verified == 0 {
                eprintln!("error: the demo released no product");
                return Ok(1);
            }
            Ok(0)
        }
        Command::Init(store) => {
            let s = Store::init(&store.data_dir)?;
            println!(
                "initialized an empty Veil store in {}",
                store.data_dir.display()
            );
            println!(
                "platform public key: {}",
                hex::encode(s.signing_key().verifying_key().to_bytes())
            );
            Ok(0)
        }
        Command::DemoData { rows, out, seed } => {
            if rows == 0 {
                return Err(Error::invalid("--rows must be at least 1"));
            }
            let mut meter = Meter::stderr();
            let written =
                demo_data::write_demo_data_with_progress(rows, &out, seed, &mut |rows, bytes| {
                    meter.show("generating demo data", rows, bytes, false)
                });
            meter.finish();
            let summary = written.map_err(|e| Error::invalid(e.to_string()))?;
            println!(
                "wrote {} social-insurance records of {} persons and {} enterprises:",
                summary.social_insurance_rows, summary.persons, summary.enterprises
            );
            for file in summary.files {
                println!("  {}", file.display());
            }
            Ok(0)
        }
        Command::Dataset(command) => dataset(command),
        Command::Grant(command) => grant(command),
        Command::Template(command) => template(command).await,
        Command::Principal(command) => principal(command),
        Command::Job(command) => job(command).await,
        Command::Serve {
            data_dir,
            config,
            listen,
            workers,
            queue,
            sweep_seconds,
            grace_seconds,
            log_format,
            cluster,
        } => {
            // Flags and environment variables (clap has merged them) over the file.
            let given = veil_server::config::ServeSettings {
                data_dir,
                listen,
                workers,
                queue,
                sweep_seconds,
                grace_seconds,
                log_format: log_format
                    .as_deref()
                    .and_then(veil_server::LogFormat::parse),
                cluster: (!cluster.is_empty()).then_some(veil_server::config::ClusterSettings {
                    executors: cluster,
                    bytes_per_partition: None,
                }),
            };
            let file = match &config {
                Some(path) => veil_server::config::ServeSettings::from_file(path)?,
                None => Default::default(),
            };
            veil_server::serve_with(given.or(file).resolve()?, veil_console::router).await?;
            Ok(0)
        }
        Command::Executor {
            data_dir,
            listen,
            memory_bytes,
        } => executor(data_dir, &listen, memory_bytes).await,
        Command::Client(args) => crate::client::run(args).await,
        Command::Dispute(command) => crate::disputes::run(command),
        Command::Correction(command) => crate::corrections::run(command),
        Command::Freeze(args) => crate::freezes::run(args),
        Command::Product(command) => product(command),
        Command::Meter(MeterCommand::List(view)) => {
            let store = Store::open(&view.store.data_dir)?;
            let records = metering::list(store.conn())?;
            if view.json {
                print_json(&records)?;
            } else {
                print_meter(&records);
            }
            Ok(0)
        }
        Command::Price(command) => price(command),
        Command::Ledger(LedgerCommand::List {
            store,
            period,
            json,
        }) => {
            let store = Store::open(&store.data_dir)?;
            let period = period
                .as_deref()
                .map(settlement::parse_period)
                .transpose()?;
            let postings = ledger::postings(store.conn(), period.as_ref())?;
            if json {
                print_json(&postings)?;
            } else {
                let rows: Vec<Vec<String>> = postings
                    .iter()
                    .flat_map(|p| {
                        p.lines.iter().map(move |l| {
                            vec![
                                p.id.to_string(),
                                l.id.to_string(),
                                p.period.to_string(),
                                p.kind.clone(),
                                format!("{} {}", p.source_kind, p.source_id),
                                l.account.clone(),
                                l.item.clone(),
                                if l.debit.0 > 0 {
                                    l.debit.to_string()
                                } else {
                                    String::new()
                                },
                                if l.credit.0 > 0 {
                                    l.credit.to_string()
                                } else {
                                    String::new()
                                },
                            ]
                        })
                    })
                    .collect();
                print_table(
                    &[
                        "posting", "line", "period", "kind", "source", "account", "item", "debit",
                        "credit",
                    ],
                    &rows,
                );
            }
            Ok(0)
        }
        Command::Settle {
            store,
            period,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let settled = settlement::settle(&mut store, &period, "bureau")?;
            if json {
                print_json(&settled)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = settled
                .statements
                .iter()
                .map(|f| {
                    vec![
                        f.party.clone(),
                        f.lines.to_string(),
                        f.total_debit.to_string(),
                        f.total_credit.to_string(),
                        f.net.to_string(),
                        f.csv
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            println!(
                "settled {}: debits {} = credits {}",
                settled.period, settled.total_debit, settled.total_credit
            );
            print_table(
                &[
                    "party",
                    "lines",
                    "debit",
                    "credit",
                    "net",
                    "file (.csv, .json)",
                ],
                &rows,
            );
            println!("statements are in {}", settled.dir.display());
            Ok(0)
        }
        Command::Audit(AuditCommand::Verify(store)) => {
            let store = Store::open(&store.data_dir)?;
            match audit::verify(&store)? {
                Ok(v) => {
                    println!(
                        "audit log verified: {} entries, head {}; {} signed checkpoints (the newest at entry {}){}",
                        v.entries,
                        v.head_hash,
                        v.checkpoints,
                        v.checkpoint_seq,
                        if v.keyed_from > 1 {
                            format!(
                                "; entries before {} were carried over from unkeyed hashes",
                                v.keyed_from
                            )
                        } else {
                            String::new()
                        }
                    );
                    println!(
                        "cross-checked: {} products, {} meter records, {} ledger postings, {} statement files",
                        v.products, v.meter_records, v.postings, v.statement_files
                    );
                    Ok(0)
                }
                Err(broken) => {
                    println!("audit log BROKEN: {broken}");
                    Ok(5)
                }
            }
        }
        Command::PlatformKey(view) => {
            let store = Store::open(&view.store.data_dir)?;
            let key = hex::encode(store.signing_key().verifying_key().to_bytes());
            if view.json {
                // The same object `GET /v1/platform/key` answers.
                print_json(&veil_sdk::api::PlatformKey {
                    algorithm: "ed25519".into(),
                    public_key_hex: key,
                })?;
            } else {
                println!("{key}");
            }
            Ok(0)
        }
    }
}

/// How a registration's progress shows on a terminal (a first registration and a new version).
fn registration_progress(meter: &mut Meter, p: catalog::Progress) {
    match p.stage {
        catalog::Stage::Reading => meter.show("reading", p.rows, p.bytes, false),
        catalog::Stage::Checking => {
            let what = format!("checking the data quality of {} rows", p.rows);
            meter.show(&what, 0, 0, false);
        }
    }
}

fn dataset(command: DatasetCommand) -> Result<i32> {
    match command {
        DatasetCommand::Register {
            store,
            name,
            file,
            policy,
            encoding,
            delimiter,
            accept_quality_issues,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let policy = catalog::Policy::parse(&read_text(&policy, "policy")?)?;
            let csv = catalog::CsvOptions::parse(encoding.as_deref(), delimiter.as_deref())?;
            let mut meter = Meter::stderr();
            let mut progress = |p: catalog::Progress| registration_progress(&mut meter, p);
            let registered = catalog::register_with(
                &mut store,
                &name,
                &file,
                policy,
                catalog::RegisterOptions {
                    csv,
                    accept_quality_issues,
                    progress: Some(&mut progress),
                },
            );
            meter.finish();
            let dataset = registered?;
            if json {
                let quality = catalog::quality_report(&store, &dataset.id)?;
                print_json(&serde_json::json!({ "dataset": dataset, "quality": quality }))?;
                return Ok(0);
            }
            println!(
                "registered dataset `{}` ({}): {} rows, BLAKE3 {}",
                dataset.name, dataset.id, dataset.rows, dataset.content_blake3
            );
            if let Some(report) = catalog::quality_report(&store, &dataset.id)? {
                let findings: Vec<String> = report
                    .blocking()
                    .into_iter()
                    .chain(report.notes())
                    .collect();
                if report.issues_accepted {
                    println!("data quality: registered with these issues accepted:");
                } else if !findings.is_empty() {
                    println!("data quality:");
                }
                for finding in &findings {
                    println!("  - {finding}");
                }
                println!(
                    "`veil dataset show {}` prints the whole quality report",
                    dataset.name
                );
            }
            Ok(0)
        }
        DatasetCommand::Update {
            store,
            name,
            file,
            encoding,
            delimiter,
            accept_quality_issues,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let csv = catalog::CsvOptions::parse(encoding.as_deref(), delimiter.as_deref())?;
            let mut meter = Meter::stderr();
            let mut progress = |p: catalog::Progress| registration_progress(&mut meter, p);
            let registered = catalog::register_version(
                &mut store,
                &name,
                &file,
                catalog::RegisterOptions {
                    csv,
                    accept_quality_issues,
                    progress: Some(&mut progress),
                },
            );
            meter.finish();
            let (dataset, version) = registered?;
            if json {
                print_json(&version)?;
                return Ok(0);
            }
            println!(
                "registered version {} of dataset `{}` ({}): {} rows, BLAKE3 {}; jobs read it from their next run",
                version.version, dataset.name, dataset.id, version.rows, version.content_blake3
            );
            Ok(0)
        }
        DatasetCommand::Card { store, name, json } => {
            let store = Store::open(&store.data_dir)?;
            let card = veil_runtime::assets::card(&store, &name)?;
            if json {
                print_json(&card)?;
                return Ok(0);
            }
            let latest = card.versions.last();
            println!(
                "asset card of `{}` ({}), as of {}",
                card.name, card.dataset_id, card.as_of
            );
            println!("  provider        {}", card.provider);
            println!(
                "  classification  level {} · sharing {} · update cadence {}",
                card.classification_level,
                card.sharing,
                card.update_cadence.as_deref().unwrap_or("not stated")
            );
            println!(
                "  acquired        {} · registered {}",
                card.acquired_on, card.registered_at
            );
            if let Some(v) = latest {
                println!(
                    "  versions        {} (latest: version {}, {} rows, BLAKE3 {})",
                    card.versions.len(),
                    v.version,
                    v.rows,
                    v.content_blake3
                );
            }
            println!("  grants          {}", card.grants.len());
            for g in &card.grants {
                println!(
                    "    {} {} {} – {}: {}",
                    g.id, g.operator, g.valid_from, g.valid_to, g.purpose
                );
            }
            println!(
                "  jobs            {} · products {}",
                card.jobs,
                card.products.len()
            );
            for m in &card.use_per_month {
                println!(
                    "    {}: {} jobs, ε {}",
                    m.period,
                    m.jobs,
                    m.micro_epsilon as f64 / 1e6
                );
            }
            println!(
                "  provider revenue {} to date, {} in the last 12 months",
                card.provider_revenue_fen, card.trailing_revenue_fen
            );
            println!(
                "  value           {} at {} bp ({})",
                card.value_fen, card.capitalisation_rate_bp, card.valuation_method
            );
            Ok(0)
        }
        DatasetCommand::RegisterExport { store, out } => {
            let store = Store::open(&store.data_dir)?;
            let cards = veil_runtime::assets::register(&store)?;
            std::fs::create_dir_all(&out).map_err(|e| {
                Error::invalid(format!(
                    "cannot create {}: {e}; choose a folder you can write",
                    out.display()
                ))
            })?;
            let json = serde_json::to_vec_pretty(&cards)
                .map_err(|e| Error::internal(format!("encoding the register: {e}")))?;
            let csv_path = out.join("asset-register.csv");
            let json_path = out.join("asset-register.json");
            veil_runtime::files::write_atomic(
                &csv_path,
                veil_runtime::assets::register_csv(&cards).as_bytes(),
                false,
            )?;
            veil_runtime::files::write_atomic(&json_path, &json, false)?;
            println!(
                "asset register of {} datasets written to {} and {}",
                cards.len(),
                csv_path.display(),
                json_path.display()
            );
            Ok(0)
        }
        DatasetCommand::Versions { store, name, json } => {
            let store = Store::open(&store.data_dir)?;
            let dataset = catalog::get(&store, &name)?;
            let versions = catalog::versions(&store, &dataset)?;
            if json {
                print_json(&versions)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = versions
                .into_iter()
                .map(|v| {
                    vec![
                        v.version.to_string(),
                        v.rows.to_string(),
                        v.content_blake3,
                        v.registered_at,
                    ]
                })
                .collect();
            print_table(&["version", "rows", "blake3", "registered"], &rows);
            Ok(0)
        }
        DatasetCommand::List(view) => {
            let store = Store::open(&view.store.data_dir)?;
            let datasets = catalog::list(&store)?;
            if view.json {
                print_json(&datasets)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = datasets
                .into_iter()
                .map(|d| {
                    vec![
                        d.name,
                        d.id.to_string(),
                        d.policy.provider,
                        d.policy.classification_level.to_string(),
                        format!("{:?}", d.policy.sharing).to_lowercase(),
                        d.policy.acquired_on,
                        d.rows.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "name", "id", "provider", "level", "sharing", "acquired", "rows",
                ],
                &rows,
            );
            Ok(0)
        }
        DatasetCommand::Show { store, name, json } => {
            let store = Store::open(&store.data_dir)?;
            let d = catalog::get(&store, &name)?;
            if json {
                // The report holds in-domain values; this is the bureau's local command.
                let quality = catalog::quality_report(&store, &d.id)?;
                print_json(&serde_json::json!({ "dataset": d, "quality": quality }))?;
                return Ok(0);
            }
            println!("dataset `{}` ({})", d.name, d.id);
            println!("  provider:        {}", d.policy.provider);
            println!("  classification:  level {}", d.policy.classification_level);
            println!("  sharing:         {:?}", d.policy.sharing);
            println!("  acquired on:     {}", d.policy.acquired_on);
            println!(
                "  privacy unit:    {} ({})",
                d.policy.privacy_unit, d.policy.unit_kind
            );
            println!("  rows:            {}", d.rows);
            println!("  content BLAKE3:  {}", d.content_blake3);
            println!("  registered at:   {}", d.registered_at);
            let rows: Vec<Vec<String>> = d
                .policy
                .columns
                .iter()
                .map(|(name, c)| {
                    vec![
                        name.clone(),
                        c.role.as_str().to_string(),
                        c.bounds
                            .map_or(String::new(), |[lo, hi]| format!("[{lo}, {hi}]")),
                        match (c.key_range, c.key_set()) {
                            (Some([lo, hi]), Some(k)) => format!("{lo} to {hi} ({} keys)", k.len()),
                            (_, Some(k)) => format!("{} keys", k.len()),
                            (_, None) => String::new(),
                        },
                    ]
                })
                .collect();
            print_table(&["column", "role", "bounds", "public keys"], &rows);
            // The report holds in-domain values; this is the bureau's local command.
            match catalog::quality_report(&store, &d.id)? {
                Some(report) => print!("\n{report}"),
                None => println!("\nno data-quality report: registered before Veil made them"),
            }
            Ok(0)
        }
    }
}

fn grant(command: GrantCommand) -> Result<i32> {
    match command {
        GrantCommand::Dispose { store, json } => {
            let mut store = Store::open(&store.data_dir)?;
            let done = grants::dispose_expired(&mut store)?;
            if json {
                print_json(&done)?;
                return Ok(0);
            }
            if done.is_empty() {
                println!("no grant's term has ended since its disposition last ran");
            }
            for d in &done {
                println!(
                    "grant {}: disposition `{}` ran over {} product(s)",
                    d.grant_id,
                    d.disposition,
                    d.products.len()
                );
            }
            Ok(0)
        }
        GrantCommand::Create {
            store,
            operator,
            terms,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let grant = grants::create(&mut store, terms.request(operator))?;
            if json {
                print_json(&grant)?;
                return Ok(0);
            }
            println!(
                "granted {} dataset(s) to `{}` as {} ({} to {}, ε {} per month)",
                grant.datasets.len(),
                grant.operator,
                grant.id,
                grant.valid_from,
                grant.valid_to,
                grant.micro_epsilon_per_month.epsilon()
            );
            Ok(0)
        }
        GrantCommand::List(view) => {
            let store = Store::open(&view.store.data_dir)?;
            let period = veil_runtime::budget::Period::of(veil_runtime::clock::now());
            let mut rows = Vec::new();
            let mut objects = Vec::new();
            for g in grants::list(&store)? {
                let spent =
                    veil_runtime::budget::spent_by_grant(store.conn(), g.id.as_str(), &period)?;
                if view.json {
                    objects.push(serde_json::json!({
                        "grant": g,
                        "period": period.to_string(),
                        "epsilon_spent": spent.micro_epsilon.epsilon(),
                    }));
                    continue;
                }
                rows.push(vec![
                    g.id.to_string(),
                    g.operator,
                    g.purpose,
                    format!("{} – {}", g.valid_from, g.valid_to),
                    format!(
                        "{} / {}",
                        spent.micro_epsilon.epsilon(),
                        g.micro_epsilon_per_month.epsilon()
                    ),
                    format!("{}", g.pico_delta_per_month.delta()),
                    g.disposition.as_str().to_string(),
                ]);
            }
            if view.json {
                print_json(&objects)?;
                return Ok(0);
            }
            print_table(
                &[
                    "grant",
                    "operator",
                    "purpose",
                    "term",
                    &format!("ε spent {period}"),
                    "δ/month",
                    "after term",
                ],
                &rows,
            );
            Ok(0)
        }
    }
}

/// A principal with its new key, as `--json` prints it: the same object
/// `POST /v1/principals/{name}/rotate` answers.
fn key_object(
    principal: veil_runtime::principals::Principal,
    key: &veil_runtime::principals::ApiKey,
) -> veil_sdk::api::RotatedKey {
    veil_sdk::api::RotatedKey {
        id: principal.id,
        role: principal.role,
        name: principal.name,
        key: key.expose().to_string(),
        key_expires_at: principal.key_expires_at,
    }
}

fn principal(command: PrincipalCommand) -> Result<i32> {
    match command {
        PrincipalCommand::Add {
            store,
            role,
            name,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let role = veil_runtime::principals::parse_role(&role)?;
            let (principal, key) = veil_runtime::principals::add(&mut store, role, &name)?;
            if json {
                print_json(&key_object(principal, &key))?;
                return Ok(0);
            }
            println!(
                "added {} `{}`: {}",
                principal.role.as_str(),
                principal.name,
                principal.id
            );
            println!(
                "API key (shown once; only its hash is stored): {}",
                key.expose()
            );
            Ok(0)
        }
        PrincipalCommand::List(view) => {
            let store = Store::open(&view.store.data_dir)?;
            let principals = veil_runtime::principals::list(&store)?;
            if view.json {
                print_json(&principals)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = principals
                .into_iter()
                .map(|p| {
                    vec![
                        p.id,
                        p.role.as_str().to_string(),
                        p.name,
                        p.created_at,
                        p.revoked_at.unwrap_or_else(|| "-".into()),
                        p.key_expires_at.unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(
                &["id", "role", "name", "added", "revoked", "key expires"],
                &rows,
            );
            Ok(0)
        }
        PrincipalCommand::Rotate {
            store,
            id,
            expiry,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let (principal, key) =
                veil_runtime::principals::rotate(&mut store, &id, expiry.expires_in_days)?;
            if json {
                print_json(&key_object(principal, &key))?;
                return Ok(0);
            }
            println!(
                "new API key for {} `{}` ({}); the old key no longer works",
                principal.role.as_str(),
                principal.name,
                principal.id
            );
            if let Some(at) = &principal.key_expires_at {
                println!("it expires at {at}");
            }
            println!(
                "API key (shown once; only its hash is stored): {}",
                key.expose()
            );
            Ok(0)
        }
        PrincipalCommand::Revoke { store, id, json } => {
            let mut store = Store::open(&store.data_dir)?;
            let id = veil_runtime::principals::get(&store, &id)?.id;
            let principal = veil_runtime::principals::revoke(&mut store, &id)?;
            if json {
                print_json(&principal)?;
                return Ok(0);
            }
            println!("revoked the key of `{}` ({})", principal.name, principal.id);
            Ok(0)
        }
    }
}

async fn template(command: TemplateCommand) -> Result<i32> {
    match command {
        TemplateCommand::Submit {
            store,
            operator,
            file,
            wasm,
            name,
            input_sql,
            output_schema,
            release_sql,
            max_rows_per_unit,
            fallback,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let (spec, module) = match (file, wasm) {
                (Some(file), _) => {
                    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
                    TemplateSpec::parse_file(&read_text(&file, "template")?, &base)?
                }
                (None, Some(module)) => wasm_template_from_flags(WasmFlags {
                    module,
                    name: name.unwrap_or_default(),
                    input_sql: input_sql.unwrap_or_default(),
                    output_schema: output_schema.unwrap_or_default(),
                    release_sql: release_sql.unwrap_or_default(),
                    max_rows_per_unit,
                    fallback,
                })?,
                (None, None) => {
                    return Err(Error::invalid(
                        "give a template file (--file T.toml) or a WASM template (--wasm M.wasm --name … --input-sql … --output-schema … --release-sql …)",
                    ));
                }
            };
            // The domain's one submission runs the gate's static checks, the same ones the HTTP
            // API runs; a refusal is listed here with its rules and nothing is stored.
            let template =
                match templates::submit_checked(&mut store, &operator, spec, module).await {
                    Ok(template) => template,
                    Err(Error::Refused(refusal)) => {
                        print_refusal("template refused before submission", &refusal);
                        return Ok(3);
                    }
                    Err(error) => return Err(error),
                };
            if json {
                print_json(&template)?;
                return Ok(0);
            }
            println!(
                "submitted template `{}`: {} (waiting for the bureau's approval)",
                template.spec.name, template.id
            );
            Ok(0)
        }
        TemplateCommand::Approve {
            store,
            id,
            terms,
            preview,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let approval = terms.request();
            if preview {
                let stated = match templates::preview(&store, &id, &approval).await {
                    Err(Error::Refused(refusal)) => {
                        print_refusal(
                            "the gate refuses this template; reject it instead",
                            &refusal,
                        );
                        return Ok(3);
                    }
                    stated => stated?,
                };
                if json {
                    print_json(&stated)?;
                } else {
                    println!("approving with these terms would give:");
                    crate::output::print_accuracy(&stated.accuracy, &stated.warnings);
                }
                return Ok(0);
            }
            let template = match templates::approve_checked(&mut store, &id, approval.clone()).await
            {
                Err(Error::Refused(refusal)) => {
                    print_refusal(
                        "the gate refuses this template; reject it instead",
                        &refusal,
                    );
                    return Ok(3);
                }
                approved => approved?,
            };
            if json {
                print_json(&template)?;
                return Ok(0);
            }
            println!(
                "approved template `{}` {} (ε {}, δ {}, k {}, ≤{} groups and ≤{} rows per unit, {} per run)",
                template.spec.name,
                template.id,
                approval.epsilon,
                approval.delta,
                approval.k,
                approval.max_groups,
                approval.max_rows,
                veil_runtime::ids::Fen(approval.price_per_run_fen)
            );
            // What the approved terms give each column; the approval stands either way.
            match templates::preview(&store, &id, &approval).await {
                Ok(stated) => crate::output::print_accuracy(&stated.accuracy, &stated.warnings),
                Err(e) => eprintln!("(the accuracy statement could not be made: {e})"),
            }
            Ok(0)
        }
        TemplateCommand::Reject {
            store,
            id,
            reason,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let template = templates::reject(&mut store, &id, &reason.reason)?;
            if json {
                print_json(&template)?;
            } else {
                println!("rejected template {}", template.id);
            }
            Ok(0)
        }
        TemplateCommand::Revoke {
            store,
            id,
            reason,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let template = templates::revoke(&mut store, &id, &reason.reason)?;
            if json {
                print_json(&template)?;
            } else {
                println!("revoked template {}", template.id);
            }
            Ok(0)
        }
        TemplateCommand::List(view) => {
            let store = Store::open(&view.store.data_dir)?;
            let templates = templates::list(&store)?;
            if view.json {
                print_json(&templates)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = templates
                .into_iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.spec.name,
                        t.operator,
                        t.state.as_str().to_string(),
                        t.approval.map_or(String::new(), |a| {
                            format!("ε {} k {} {}", a.epsilon(), a.k, a.price_per_run)
                        }),
                    ]
                })
                .collect();
            print_table(
                &["template", "name", "operator", "state", "approval"],
                &rows,
            );
            Ok(0)
        }
        TemplateCommand::Show { store, id, json } => {
            let store = Store::open(&store.data_dir)?;
            let t = templates::get(&store, &id)?;
            if json {
                print_json(&t)?;
                return Ok(0);
            }
            println!("template `{}` {}", t.spec.name, t.id);
            println!("  operator:  {}", t.operator);
            println!("  state:     {}", t.state.as_str());
            if let Some(reason) = &t.reasons {
                println!("  reason:    {reason}");
            }
            if let Some(a) = &t.approval {
                println!(
                    "  approval:  ε {} δ {} k {} max_groups {} max_rows {} price {}",
                    a.epsilon(),
                    a.delta(),
                    a.k,
                    a.max_groups,
                    a.max_rows,
                    a.price_per_run
                );
            }
            for p in &t.spec.params {
                println!(
                    "  param:     {} ({:?}){}",
                    p.name,
                    p.kind,
                    p.allowed
                        .as_ref()
                        .map_or(String::new(), |a| format!(" one of {}", a.join(", ")))
                );
            }
            println!("  sql:\n{}", t.spec.sql);
            Ok(0)
        }
    }
}

/// A WASM template given by `template submit` flags.
struct WasmFlags {
    module: PathBuf,
    name: String,
    input_sql: String,
    output_schema: PathBuf,
    release_sql: String,
    max_rows_per_unit: u32,
    fallback: String,
}

/// A WASM template from flags (no parameters: declare those in a template file).
fn wasm_template_from_flags(flags: WasmFlags) -> Result<(TemplateSpec, Option<Vec<u8>>)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct OutputFile {
        output: Vec<templates::OutputSpec>,
    }
    let output: OutputFile = toml::from_str(&read_text(&flags.output_schema, "output schema")?)
        .map_err(|e| {
            Error::invalid(format!(
                "output schema {}: {e}; write one [[output]] table per column",
                flags.output_schema.display()
            ))
        })?;
    let fallback = match flags.fallback.as_str() {
        "none" => templates::Fallback::None,
        "default" => templates::Fallback::Default,
        other => {
            return Err(Error::invalid(format!(
                "--fallback is `{other}`; use none or default"
            )));
        }
    };
    let (wasm, module) = templates::WasmSpec::from_module_file(
        &flags.module,
        flags.input_sql,
        output.output,
        flags.max_rows_per_unit,
        fallback,
    )
    .map_err(templates::file_error)?;
    let spec = TemplateSpec {
        name: flags.name,
        sql: flags.release_sql,
        params: Vec::new(),
        wasm: Some(wasm),
        versions: Default::default(),
    };
    Ok((spec, Some(module)))
}

async fn job(command: JobCommand) -> Result<i32> {
    match command {
        JobCommand::Run {
            store,
            operator,
            job,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let outcome = jobs::run(&mut store, job.request(operator)).await?;
            if json {
                print_json(&jobs::get(&store, outcome_job_id(&outcome))?)?;
                return Ok(outcome_code(&outcome));
            }
            Ok(print_outcome(&outcome))
        }
        JobCommand::Check {
            store,
            operator,
            job,
            json,
        } => {
            let store = Store::open(&store.data_dir)?;
            let answer = jobs::dry_run(&store, &job.request(operator)).await?;
            if json {
                print_json(&answer)?;
            } else {
                print_dry_run(&answer);
            }
            Ok(if answer.passes { 0 } else { 3 })
        }
        JobCommand::Show { store, id, json } => {
            let store = Store::open(&store.data_dir)?;
            let j = jobs::get(&store, &id)?;
            if json {
                print_json(&j)?;
                return Ok(0);
            }
            println!("job {}", j.id);
            println!("  operator:  {}", j.operator);
            println!("  template:  {}", j.template_id);
            println!("  grant:     {}", j.grant_id.unwrap_or_default());
            println!(
                "  params:    {}",
                j.params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            println!("  state:     {}", j.state);
            if let Some(product) = j.product_id {
                println!("  product:   {product}");
            }
            if let Some(from) = j.reused_from {
                println!("  reused:    the product of identical job {from} (no ε spent)");
            }
            if let Some(refusal) = j.reasons {
                for v in refusal.violations {
                    println!("  reason:    [{}] {}", v.rule, v.message);
                }
            }
            if let Some(failure) = j.failure {
                println!("  failure:   {failure}");
            }
            println!("  created:   {}", j.created_at);
            println!("  finished:  {}", j.finished_at.unwrap_or_default());
            Ok(0)
        }
        JobCommand::List(view) => {
            let store = Store::open(&view.store.data_dir)?;
            let jobs = jobs::list(&store)?;
            if view.json {
                print_json(&jobs)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = jobs
                .into_iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        j.operator,
                        j.template_id.chars().take(12).collect(),
                        j.state.to_string(),
                        j.product_id.unwrap_or_default(),
                        j.created_at,
                    ]
                })
                .collect();
            print_table(
                &["job", "operator", "template", "state", "product", "created"],
                &rows,
            );
            Ok(0)
        }
    }
}

/// Prints a job outcome and returns the exit code (0 released, 3 rejected, 1 failed).
/// The id of the job that ended with `outcome`.
fn outcome_job_id(outcome: &JobOutcome) -> &str {
    match outcome {
        JobOutcome::Released { job_id, .. }
        | JobOutcome::Rejected { job_id, .. }
        | JobOutcome::Failed { job_id, .. }
        | JobOutcome::Cancelled { job_id } => job_id.as_str(),
    }
}

/// The exit code of a job's end: 0 released, 3 refused, 6 for a full disk, 1 otherwise.
fn outcome_code(outcome: &JobOutcome) -> i32 {
    match outcome {
        JobOutcome::Released { .. } => 0,
        JobOutcome::Rejected { .. } => 3,
        JobOutcome::Failed { reason, .. } if reason == veil_runtime::jobs::STORAGE_FULL_REASON => 6,
        JobOutcome::Failed { .. } | JobOutcome::Cancelled { .. } => 1,
    }
}

pub(crate) fn print_outcome(outcome: &JobOutcome) -> i32 {
    match outcome {
        JobOutcome::Released {
            job_id,
            product_id,
            dir,
            reused,
            ..
        } => {
            if *reused {
                println!(
                    "job {job_id} released: identical to an earlier job, so its product {product_id} is returned and no ε was spent"
                );
            } else {
                println!("job {job_id} released product {product_id}");
            }
            println!("  files: {}", dir.display());
        }
        JobOutcome::Rejected { job_id, refusal } => {
            print_refusal(&format!("job {job_id} rejected"), refusal);
        }
        JobOutcome::Failed { job_id, reason } => println!("job {job_id} failed: {reason}"),
        JobOutcome::Cancelled { job_id } => println!("job {job_id} was cancelled"),
    }
    outcome_code(outcome)
}

fn print_refusal(heading: &str, refusal: &Refusal) {
    println!("{heading}:");
    for v in &refusal.violations {
        println!("  - [{}] {}", v.rule, v.message);
    }
}

fn product(command: ProductCommand) -> Result<i32> {
    match command {
        ProductCommand::Verify {
            dir,
            public_key,
            data_dir,
        } => {
            // A folder that is not there is a wrong path (bad input, exit 2), not a product
            // that fails to verify (exit 5).
            if !dir.is_dir() {
                return Err(Error::invalid(format!(
                    "{} is not a folder; give the folder a product was downloaded into",
                    dir.display()
                )));
            }
            let pinned = match (public_key, data_dir) {
                (Some(hex), _) => Some(keys::parse_public(&hex)?),
                (None, Some(data_dir)) => {
                    Some(Store::open(&data_dir)?.signing_key().verifying_key())
                }
                (None, None) => None,
            };
            match veil_sdk::manifest::verify_product_dir(&dir, pinned.as_ref()) {
                Ok(verified) => {
                    let m = &verified.manifest;
                    println!(
                        "product {} verified: every file matches its BLAKE3 digest and the signature is valid",
                        m.product_id
                    );
                    if !verified.key_pinned {
                        println!(
                            "  note: checked against the key inside the manifest; pin the platform key with --public-key to know who signed it"
                        );
                    }
                    println!(
                        "  job {} · template {} ({})",
                        m.job_id, m.template_name, m.template_id
                    );
                    for s in &m.sources {
                        println!(
                            "  source: {} from {}, acquired {}",
                            s.name, s.provider, s.acquired_on
                        );
                    }
                    let suppressed = match m.privacy.groups_suppressed {
                        Some(n) => format!(", {n} marked below k"),
                        None => String::new(),
                    };
                    println!(
                        "  privacy: ε {} δ {} · {} · k {} · {} groups released{suppressed}",
                        m.privacy.epsilon,
                        m.privacy.delta,
                        m.privacy.mechanism,
                        m.privacy.k,
                        m.privacy.groups_released,
                    );
                    if let Some(checkpoint) = &m.audit_checkpoint {
                        // A witness the buyer keeps: the bureau's `veil audit verify` checks
                        // that the platform's log still holds this entry with this hash.
                        println!(
                            "  audit checkpoint: entry {} with hash {} (signed)",
                            checkpoint.seq, checkpoint.hash
                        );
                    }
                    Ok(0)
                }
                Err(e) => {
                    println!("product NOT verified: {e}");
                    Ok(5)
                }
            }
        }
        ProductCommand::Sell {
            store,
            id,
            price_fen,
            operator,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let (role, actor) = match &operator {
                Some(name) => (Role::Operator, name.as_str()),
                None => (Role::Bureau, "bureau"),
            };
            let listing = market::list_for_sale(
                &mut store,
                role,
                actor,
                &ProductId::new(id),
                Fen(price_fen),
            )?;
            if json {
                print_json(&listing)?;
                return Ok(0);
            }
            println!(
                "product {} is for sale at {} (listed by {})",
                listing.product_id, listing.price, listing.listed_by
            );
            Ok(0)
        }
        ProductCommand::Recall {
            store,
            id,
            reason,
            json,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let recall = market::recall(&mut store, &ProductId::new(id), &reason.reason)?;
            if json {
                print_json(&recall)?;
                return Ok(0);
            }
            crate::output::print_recall(&recall.product_id, &recall.reason, &recall.buyers);
            Ok(0)
        }
        ProductCommand::List(view) => {
            let store = Store::open(&view.store.data_dir)?;
            if view.json {
                print_json(&veil_runtime::products::list(store.conn())?)?;
                return Ok(0);
            }
            let mut statement = store.conn().prepare(
                "SELECT id, job_id, operator, rows, bytes, created_at, dir FROM products ORDER BY created_at, rowid",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(vec![
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?.to_string(),
                    row.get::<_, i64>(4)?.to_string(),
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                ])
            })?;
            let mut table = Vec::new();
            for row in rows {
                table.push(row?);
            }
            print_table(
                &[
                    "product", "job", "operator", "rows", "bytes", "created", "folder",
                ],
                &table,
            );
            Ok(0)
        }
    }
}

fn price(command: PriceCommand) -> Result<i32> {
    match command {
        PriceCommand::Show { store, json } => {
            let store = Store::open(&store.data_dir)?;
            let current = prices::current(store.conn())?;
            let history = prices::history(store.conn())?;
            if json {
                print_json(&serde_json::json!({ "current": current, "history": history }))?;
                return Ok(0);
            }
            let book_row = |b: &prices::PriceBook| {
                vec![
                    b.version.to_string(),
                    b.set_at.clone().unwrap_or_else(|| "(default)".into()),
                    b.fee_per_million_rows.to_string(),
                    b.shares.provider_bp.to_string(),
                    b.shares.platform_bp.to_string(),
                    b.shares.operator_bp.to_string(),
                ]
            };
            let headers = [
                "version",
                "from",
                "per million rows",
                "provider bp",
                "platform bp",
                "operator bp",
            ];
            println!("in force:");
            print_table(&headers, &[book_row(&current)]);
            println!("history:");
            print_table(&headers, &history.iter().map(book_row).collect::<Vec<_>>());
            println!(
                "the per-run fee is set per template when the bureau approves it (--price-fen)"
            );
            Ok(0)
        }
        PriceCommand::Set {
            store,
            per_million_rows_fen,
            provider_bp,
            platform_bp,
            operator_bp,
            capitalisation_rate_bp,
        } => {
            let mut store = Store::open(&store.data_dir)?;
            let book = prices::set(
                &mut store,
                "bureau",
                &prices::PriceRequest {
                    fee_per_million_rows_fen: per_million_rows_fen,
                    shares: prices::Shares {
                        provider_bp,
                        platform_bp,
                        operator_bp,
                    },
                    capitalisation_rate_bp,
                },
            )?;
            println!(
                "price book version {} in force from {}: {} per million rows; shares provider {} bp, platform {} bp, operator {} bp; assets capitalised at {} bp",
                book.version,
                book.set_at.unwrap_or_default(),
                book.fee_per_million_rows,
                book.shares.provider_bp,
                book.shares.platform_bp,
                book.shares.operator_bp,
                book.capitalisation_rate_bp
            );
            Ok(0)
        }
    }
}
