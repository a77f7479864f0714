//! The intervals a release states hold the truth as often as they say, under real OpenDP
//! noise, for both mechanisms; and a Gaussian plan spends what OpenDP's zCDP conversion says.
//!
//! Each check runs many releases of one query over a table whose true answer is known, and
//! counts the cells whose true value lies inside the released `_ci_low`/`_ci_high` interval.
//! The cells' noises are independent, so the count is binomial; a check fails only when the
//! coverage is below 95 % by more than [`SIGMAS`] standard deviations (a false failure is
//! rarer than one in ten million runs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::accuracy::CONFIDENCE;
use crate::analysis::{self, Analysis, Tables};
use crate::bounding::Limits;
use crate::budget::Reserved;
use crate::ids::DatasetId;
use crate::noise::{self, Mechanism, Source};
use crate::policy::{Dataset, Policy};
use crate::release::{self as gate, ReleaseConfig};
use crate::sandbox::SandboxBuilder;
use crate::terms::{MicroEpsilon, PicoDelta};

/// Standard deviations of the binomial coverage count a check allows below 95 %.
const SIGMAS: f64 = 5.5;
/// Releases per check.
const RUNS: usize = 60;
const TABLE: &str = "incomes";
const CITIES: [&str; 11] = [
    "Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong", "Yuncheng",
    "Xinzhou", "Linfen", "Lvliang",
];
const INCOME_HI: i64 = 20_000;
const POLICY: &str = r#"
provider = "Test Department"
classification_level = 2
sharing = "conditional"
acquired_on = "2026-01-01"
privacy_unit = "person_id"
unit_kind = "person"
[columns.person_id]
role = "identifier"
[columns.city]
role = "quasi"
keys = ["Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong", "Yuncheng", "Xinzhou", "Linfen", "Lvliang"]
[columns.gender]
role = "quasi"
keys = ["F", "M"]
[columns.income]
role = "sensitive"
bounds = [0, 20000]
"#;
const SQL: &str = "SELECT city, gender, COUNT(DISTINCT person_id) AS persons, \
    AVG(income) AS avg_income FROM incomes GROUP BY city, gender";

/// The true answer per (city, gender): persons and average income.
type Truth = HashMap<(String, String), (i64, f64)>;

/// One row per person, 100 to 600 persons per group, incomes spread over the bounds.
fn table() -> (RecordBatch, Truth) {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (mut ids, mut cities, mut genders, mut incomes) = (vec![], vec![], vec![], vec![]);
    let mut sums: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for city in CITIES {
        for gender in ["F", "M"] {
            let persons = rng.random_range(100..600);
            for _ in 0..persons {
                let income = rng.random_range(0..=INCOME_HI);
                ids.push(ids.len() as i64);
                cities.push(city);
                genders.push(gender);
                incomes.push(income);
                let entry = sums.entry((city.into(), gender.into())).or_default();
                entry.0 += 1;
                entry.1 += income;
            }
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Int64, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("gender", DataType::Utf8, false),
        Field::new("income", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(cities)),
            Arc::new(StringArray::from(genders)),
            Arc::new(Int64Array::from(incomes)),
        ],
    )
    .expect("the table");
    let truth = sums
        .into_iter()
        .map(|(key, (n, total))| (key, (n, total as f64 / n as f64)))
        .collect();
    (batch, truth)
}

fn config(mechanism: Mechanism) -> ReleaseConfig {
    ReleaseConfig {
        epsilon: 1.0,
        delta: 1e-6,
        k: 10,
        limits: Limits {
            max_groups: 1,
            max_rows: 1,
        },
        units_hint: 0,
        noise: Source::OpenDp,
        mechanism,
    }
}

/// Cells inside their interval, and cells checked, per measure (persons, average income).
#[derive(Debug, Default)]
struct Coverage {
    persons: (usize, usize),
    average: (usize, usize),
}

impl Coverage {
    fn add(&mut self, batch: &RecordBatch, truth: &Truth) {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("the product has `{name}`"))
                .clone()
        };
        let (city, gender) = (column("city"), column("gender"));
        let (city, gender) = (city.as_string::<i32>(), gender.as_string::<i32>());
        let persons = column("persons");
        let (low, high) = (column("persons_ci_low"), column("persons_ci_high"));
        let (persons, low, high) = (
            persons.as_primitive::<Int64Type>(),
            low.as_primitive::<Int64Type>(),
            high.as_primitive::<Int64Type>(),
        );
        let average = column("avg_income");
        let (a_low, a_high) = (column("avg_income_ci_low"), column("avg_income_ci_high"));
        let (average, a_low, a_high) = (
            average.as_primitive::<Float64Type>(),
            a_low.as_primitive::<Float64Type>(),
            a_high.as_primitive::<Float64Type>(),
        );
        for row in 0..batch.num_rows() {
            let key = (city.value(row).to_string(), gender.value(row).to_string());
            let (true_persons, true_average) = truth[&key];
            // Every group has at least 100 persons, far above τ: no cell is marked.
            assert!(persons.is_valid(row), "{key:?} was marked");
            assert!(low.value(row) <= persons.value(row) && persons.value(row) <= high.value(row));
            assert!(
                a_low.value(row) <= average.value(row) && average.value(row) <= a_high.value(row)
            );
            self.persons.1 += 1;
            self.persons.0 +=
                usize::from((low.value(row)..=high.value(row)).contains(&true_persons));
            self.average.1 += 1;
            self.average.0 +=
                usize::from(a_low.value(row) <= true_average && true_average <= a_high.value(row));
        }
    }
}

/// The smallest coverage count that is not evidence of intervals narrower than 95 %.
fn floor(cells: usize) -> f64 {
    let n = cells as f64;
    n * CONFIDENCE - SIGMAS * (n * CONFIDENCE * (1.0 - CONFIDENCE)).sqrt()
}

/// The table in a sandbox of its own under `policy`, and [`SQL`]'s analysis over it.
async fn prepared(batch: RecordBatch, policy: &str) -> (crate::sandbox::Sandbox, Analysis) {
    let dataset = Dataset {
        id: DatasetId::new("ds-accuracy"),
        name: TABLE.into(),
        policy: Policy::parse(policy).expect("the policy"),
        file: String::new(),
        rows: batch.num_rows() as u64,
        bytes: 0,
        content_blake3: String::new(),
        registered_at: String::new(),
    };
    let tables: Tables = HashMap::from([(TABLE.to_string(), dataset)]);
    let sandbox = SandboxBuilder::new(std::env::temp_dir())
        .memory_table(TABLE, batch.schema(), vec![batch])
        .build()
        .await
        .expect("the sandbox");
    let plan = sandbox.plan_query(SQL, &[]).await.expect("the plan");
    let analysis = analysis::analyse(&plan, &tables).expect("the analysis");
    (sandbox, analysis)
}

async fn coverage(mechanism: Mechanism) -> Coverage {
    let (batch, truth) = table();
    let (sandbox, analysis) = prepared(batch, POLICY).await;
    let config = config(mechanism);
    let noise_plan = gate::plan_noise(&analysis, &config).expect("the ε plan");
    let mut coverage = Coverage::default();
    for _ in 0..RUNS {
        let reserved = Reserved::in_child(
            "accuracy".into(),
            MicroEpsilon(1_000_000),
            PicoDelta(1_000_000),
        );
        let released = gate::release(reserved, &sandbox, &analysis, config, &noise_plan)
            .await
            .map_err(|(e, _)| e)
            .expect("a release");
        assert_eq!(released.batch.num_rows(), 22);
        coverage.add(&released.batch, &truth);
    }
    coverage
}

fn assert_covers(coverage: &Coverage, what: &str) {
    for (name, (inside, cells)) in [
        ("persons", coverage.persons),
        ("avg_income", coverage.average),
    ] {
        assert!(
            inside as f64 >= floor(cells),
            "{what}: `{name}`'s 95 % intervals hold the truth in only {inside} of {cells} cells"
        );
    }
    // A count's interval is OpenDP's, rounded to whole persons: not much wider than it says.
    let (inside, cells) = coverage.persons;
    assert!(
        (inside as f64) < cells as f64 * 0.995,
        "{what}: the count intervals are far wider than 95 % ({inside} of {cells})"
    );
}

#[tokio::test]
async fn laplace_intervals_hold_the_truth_in_95_percent_of_cells() {
    let coverage = coverage(Mechanism::Laplace).await;
    assert_covers(&coverage, "Laplace");
}

#[tokio::test]
async fn gaussian_intervals_hold_the_truth_in_95_percent_of_cells() {
    let coverage = coverage(Mechanism::Gaussian).await;
    assert_covers(&coverage, "Gaussian");
}

/// The ρ of a Gaussian plan converts, by OpenDP's own zCDP-to-approximate-DP map, to the
/// approved ε at the δ left after the threshold, to within the search's precision; and its
/// draws' ρ shares add up to it.
#[tokio::test]
async fn a_gaussian_plan_spends_what_the_zcdp_conversion_states() {
    use opendp::combinators::make_zCDP_to_approxDP;
    use opendp::domains::AtomDomain;
    use opendp::measurements::make_gaussian;
    use opendp::measures::ZeroConcentratedDivergence;
    use opendp::metrics::AbsoluteDistance;

    let (batch, _) = table();
    let (_sandbox, analysis) = prepared(batch, POLICY).await;
    let config = config(Mechanism::Gaussian);
    let noise_plan = gate::plan_noise(&analysis, &config).expect("the ε plan");
    let accounting = noise_plan
        .accounting()
        .cloned()
        .expect("a Gaussian plan accounts in zCDP");
    let shares: f64 = noise_plan.scales().iter().filter_map(|s| s.rho).sum();
    assert!(
        shares <= accounting.rho * (1.0 + 1e-12),
        "{shares} > {}",
        accounting.rho
    );
    assert!(
        shares >= accounting.rho * 0.999,
        "{shares} wastes ρ {}",
        accounting.rho
    );
    // Public keys: no threshold δ, the whole δ goes to the conversion.
    assert_eq!(accounting.threshold_delta, 0.0);

    // An independent OpenDP measurement with exactly this ρ (a Gaussian of scale 1/√(2ρ) at
    // sensitivity 1), converted by OpenDP's combinator.
    let scale = 1.0 / (2.0 * accounting.rho).sqrt();
    let measurement = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        AtomDomain::<f64>::new_non_nan(),
        AbsoluteDistance::<f64>::default(),
        scale,
        None,
    )
    .expect("a Gaussian measurement");
    let rho = measurement.map(&1.0).expect("its ρ");
    assert!(
        (rho - accounting.rho).abs() <= 1e-9 * accounting.rho,
        "{rho}"
    );
    let profile = make_zCDP_to_approxDP(measurement)
        .expect("the conversion")
        .map(&1.0)
        .expect("the profile");
    let epsilon = profile.epsilon(config.delta).expect("ε at δ");
    assert!(
        epsilon <= config.epsilon * (1.0 + 1e-9),
        "ε {epsilon} above the approved ε"
    );
    assert!(
        epsilon >= config.epsilon * (1.0 - 1e-6),
        "ε {epsilon} wastes the approved ε"
    );
    assert!(
        (accounting.epsilon - epsilon).abs() <= 1e-9,
        "{} vs {epsilon}",
        accounting.epsilon
    );
    // The conversion needs δ > 0.
    assert!(matches!(
        noise::rho_for(1.0, 0.0),
        Err(noise::NoiseError::GaussianWithoutDelta)
    ));
}

/// With private group keys, a Gaussian plan thresholds with OpenDP's thresholded Gaussian,
/// keeps its δ within half the approved δ (the conversion has the other half), and releases
/// the groups that clear τ.
#[tokio::test]
async fn a_gaussian_plan_over_private_keys_splits_delta_and_releases_large_groups() {
    let (batch, truth) = table();
    // The same table, with no public key set for the city: the groups' existence is private.
    let policy = POLICY.replace(
        "keys = [\"Taiyuan\", \"Datong\", \"Yangquan\", \"Changzhi\", \"Jincheng\", \"Shuozhou\", \"Jinzhong\", \"Yuncheng\", \"Xinzhou\", \"Linfen\", \"Lvliang\"]\n",
        "",
    );
    assert_ne!(policy, POLICY, "the city's key set was removed");
    let (sandbox, analysis) = prepared(batch, &policy).await;
    assert!(!analysis.keys_are_public());
    let config = config(Mechanism::Gaussian);
    let noise_plan = gate::plan_noise(&analysis, &config).expect("the ε plan");
    let accounting = noise_plan.accounting().cloned().expect("zCDP accounting");
    assert_eq!(accounting.threshold_delta, config.delta / 2.0);
    let epsilon = noise::epsilon_of_rho(accounting.rho, config.delta / 2.0).expect("ε");
    assert!(epsilon <= config.epsilon * (1.0 + 1e-9), "{epsilon}");
    let reserved = Reserved::in_child(
        "accuracy".into(),
        MicroEpsilon(1_000_000),
        PicoDelta(1_000_000),
    );
    let released = gate::release(reserved, &sandbox, &analysis, config, &noise_plan)
        .await
        .map_err(|(e, _)| e)
        .expect("a release");
    // Every group has at least 100 persons, far above τ: all 22 clear it.
    assert!(noise_plan.threshold() < 100, "τ {}", noise_plan.threshold());
    assert_eq!(released.batch.num_rows(), truth.len());
}
