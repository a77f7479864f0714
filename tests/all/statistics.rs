//! The noise and the bounds are what the manifest says they are.
//!
//! - OpenDP's draws, as the gate calls them, have the variance and the distribution that the
//!   scale `b = Δ/ε` implies (discrete Laplace on integers, Laplace on floats);
//! - the noise scales a product's manifest records are `sensitivity / ε-share`, computed
//!   independently here from the approval;
//! - one privacy unit with 10,000 rows moves a released count and sum by no more than
//!   `max_groups × max_rows` rows (values clamped to the declared bounds).
//!
//! Every statistical check has a tolerance derived from a stated false-failure probability, so
//! a failure means the behaviour is wrong, not that the test was unlucky.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use veil_gate::noise::{Draw, Source};
use veil_runtime::jobs::{self, JobOutcome, JobRequest};
use veil_runtime::templates::ApprovalRequest;
use veil_sdk::manifest::{MANIFEST_FILE, SignedManifest};

use crate::support::{self, OPERATOR};

/// Draws per distribution check. Large enough for tight bands, small enough for a debug build.
const DRAWS: usize = 20_000;
/// Largest acceptable false-failure probability of one statistical check.
const ALPHA: f64 = 1e-6;
/// Standard deviations allowed by the variance checks (normal approximation; see below).
const SIGMAS: f64 = 6.0;

/// The value the noise is added to; the draws are centred on it.
const TRUE_VALUE: i64 = 1_000;

/// Kolmogorov–Smirnov critical value for `n` draws at false-failure probability `alpha`, from
/// the Dvoretzky–Kiefer–Wolfowitz inequality with Massart's constant:
/// `P(sup |F_n − F| > c) ≤ 2·exp(−2·n·c²)`, so `c = sqrt(ln(2/alpha) / (2n))`. The inequality
/// holds for every distribution, discrete ones included (for them it is conservative), so it
/// bounds the false-failure probability without any approximation. For n = 20,000 and
/// α = 1e-6, c ≈ 0.0191.
fn ks_critical(n: usize, alpha: f64) -> f64 {
    ((2.0 / alpha).ln() / (2.0 * n as f64)).sqrt()
}

/// `p = e^{−1/b}`, the ratio of a discrete Laplace distribution's neighbouring probabilities.
fn ratio(scale: f64) -> f64 {
    (-1.0 / scale).exp()
}

/// P(X = x) for discrete Laplace with scale `b`: `(1−p)/(1+p) · p^|x|`.
fn discrete_laplace_pmf(scale: f64, x: i64) -> f64 {
    let p = ratio(scale);
    (1.0 - p) / (1.0 + p) * p.powi(x.unsigned_abs() as i32)
}

/// P(X ≤ x) for discrete Laplace with scale `b`: `p^|x|/(1+p)` below zero,
/// `1 − p^{x+1}/(1+p)` from zero on.
fn discrete_laplace_cdf(scale: f64, x: i64) -> f64 {
    let p = ratio(scale);
    if x < 0 {
        p.powi(x.unsigned_abs() as i32) / (1.0 + p)
    } else {
        1.0 - p.powi(x as i32 + 1) / (1.0 + p)
    }
}

/// Variance of discrete Laplace with scale `b`: `2p/(1−p)²`.
fn discrete_laplace_variance(scale: f64) -> f64 {
    let p = ratio(scale);
    2.0 * p / (1.0 - p).powi(2)
}

/// Fourth central moment of discrete Laplace, summed from its mass function (the tail beyond
/// |x| = 4000 weighs less than 1e-300 at b = 2).
fn discrete_laplace_fourth_moment(scale: f64) -> f64 {
    (-4000..=4000_i64)
        .map(|x| (x as f64).powi(4) * discrete_laplace_pmf(scale, x))
        .sum()
}

/// Continuous Laplace CDF with scale `b`.
fn laplace_cdf(scale: f64, x: f64) -> f64 {
    if x < 0.0 {
        0.5 * (x / scale).exp()
    } else {
        1.0 - 0.5 * (-x / scale).exp()
    }
}

/// Tolerance of the variance check. The estimator `S² = Σ(x − v)²/n` (the true value `v` is
/// known, so no mean is estimated) is unbiased with `Var(S²) = (μ₄ − σ⁴)/n`. By the central
/// limit theorem `S²` is close to normal at n = 20,000, and a band of [`SIGMAS`] = 6 standard
/// deviations is left with probability about 2·10⁻⁹ under that approximation — far below
/// the false-failure budget of 10⁻⁶ per check, which leaves room for the approximation's error
/// in the tails. (Chebyshev alone would need a band of 1000 standard deviations for 10⁻⁶ and
/// could not tell a wrong scale from the right one.)
fn variance_tolerance(variance: f64, fourth_moment: f64, n: usize) -> f64 {
    SIGMAS * ((fourth_moment - variance * variance) / n as f64).sqrt()
}

#[test]
fn integer_noise_has_the_variance_and_distribution_its_scale_implies() {
    let (sensitivity, epsilon) = (1_i64, 0.5);
    let scale = sensitivity as f64 / epsilon; // b = 2
    let draw = Draw::new("test", sensitivity as f64, epsilon, true).expect("draw");
    assert_eq!(draw.scale, scale, "reported scale");
    let keys = vec![b"".as_slice(); DRAWS];
    let values = draw
        .integers(Source::OpenDp, &keys, vec![TRUE_VALUE; DRAWS])
        .expect("noise");
    assert_eq!(values.len(), DRAWS);
    let noise: Vec<i64> = values.iter().map(|v| v - TRUE_VALUE).collect();

    // Variance: 2p/(1−p)² with p = e^{−1/2}, about 7.84.
    let expected = discrete_laplace_variance(scale);
    let measured = noise.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / DRAWS as f64;
    let tolerance = variance_tolerance(expected, discrete_laplace_fourth_moment(scale), DRAWS);
    assert!(
        (measured - expected).abs() <= tolerance,
        "variance {measured:.3}, expected {expected:.3} ± {tolerance:.3} (scale {scale})"
    );
    // The band is narrow enough to tell a 10% error in the scale from the right one.
    assert!(discrete_laplace_variance(scale * 1.1) - expected > tolerance);

    // Distribution: the largest gap between the empirical and the true CDF, at every integer
    // from just below the smallest draw to the largest (both CDFs are flat in between, and
    // beyond that range the gap only shrinks).
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for x in &noise {
        *counts.entry(*x).or_default() += 1;
    }
    let (lo, hi) = (
        *counts.keys().next().expect("draws"),
        *counts.keys().next_back().expect("draws"),
    );
    let mut below = 0usize;
    let mut largest_gap: f64 = 0.0;
    for x in lo - 1..=hi {
        below += counts.get(&x).copied().unwrap_or(0);
        let gap = (below as f64 / DRAWS as f64 - discrete_laplace_cdf(scale, x)).abs();
        largest_gap = largest_gap.max(gap);
    }
    let critical = ks_critical(DRAWS, ALPHA);
    assert!(
        largest_gap <= critical,
        "KS distance {largest_gap:.4} to discrete Laplace(b = {scale}) above the critical value {critical:.4}"
    );
}

#[test]
fn float_noise_has_the_variance_and_distribution_its_scale_implies() {
    let (sensitivity, epsilon) = (1.0, 0.5);
    let scale = sensitivity / epsilon; // b = 2
    let centre = TRUE_VALUE as f64;
    let draw = Draw::new("test", sensitivity, epsilon, false).expect("draw");
    assert_eq!(draw.scale, scale, "reported scale");
    let keys = vec![b"".as_slice(); DRAWS];
    let values = draw
        .floats(Source::OpenDp, &keys, vec![centre; DRAWS])
        .expect("noise");
    let mut noise: Vec<f64> = values.iter().map(|v| v - centre).collect();

    // Laplace: variance 2b², fourth central moment 24b⁴.
    let expected = 2.0 * scale * scale;
    let measured = noise.iter().map(|x| x * x).sum::<f64>() / DRAWS as f64;
    let tolerance = variance_tolerance(expected, 24.0 * scale.powi(4), DRAWS);
    assert!(
        (measured - expected).abs() <= tolerance,
        "variance {measured:.3}, expected {expected:.3} ± {tolerance:.3} (scale {scale})"
    );
    assert!(2.0 * (scale * 1.1).powi(2) - expected > tolerance);

    // KS statistic of a continuous distribution: at the i-th smallest draw the empirical CDF
    // jumps from (i−1)/n to i/n.
    noise.sort_by(f64::total_cmp);
    let n = DRAWS as f64;
    let largest_gap = noise
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let f = laplace_cdf(scale, *x);
            ((i + 1) as f64 / n - f).max(f - i as f64 / n)
        })
        .fold(0.0, f64::max);
    let critical = ks_critical(DRAWS, ALPHA);
    assert!(
        largest_gap <= critical,
        "KS distance {largest_gap:.4} to Laplace(b = {scale}) above the critical value {critical:.4}"
    );
}

/// Reads a product's signed manifest.
fn manifest_of(dir: &Path) -> SignedManifest {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE)).expect("manifest.json");
    serde_json::from_slice(&bytes).expect("a signed manifest")
}

fn released_dir(outcome: &JobOutcome) -> &Path {
    match outcome {
        JobOutcome::Released { dir, .. } => dir,
        other => panic!("expected a released product, got {other:?}"),
    }
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: {actual}, expected {expected}"
    );
}

#[tokio::test]
async fn the_manifest_records_the_scale_sensitivity_over_epsilon_share() {
    let mut fixture = crate::support::Fixture::with_budget(2_000, 100.0);

    // One noisy draw: COUNT(DISTINCT unit) over public keys. A unit changes the vector of
    // distinct counts by at most max_groups, so b = max_groups / ε.
    let approval = ApprovalRequest {
        epsilon: 0.8,
        max_groups: 3,
        ..support::approval()
    };
    let outcome = fixture
        .run_sql(
            "SELECT city, COUNT(DISTINCT person_id) AS persons FROM social_insurance \
             WHERE year = :year GROUP BY city",
            &[("year", "2025")],
            approval,
        )
        .await
        .expect("job");
    let privacy = manifest_of(released_dir(&outcome)).manifest.privacy;
    // The distinct-unit count, then the count of units whose contributions were cut, which
    // takes a fixed 5 % of ε.
    assert_eq!(privacy.noise_scales.len(), 2, "{:?}", privacy.noise_scales);
    let units = &privacy.noise_scales[0];
    assert_close(
        units.epsilon,
        0.8 * 0.95,
        "ε share of the only measure's draw",
    );
    assert_close(units.sensitivity, 3.0, "sensitivity of distinct units");
    assert_close(units.scale, 3.0 / units.epsilon, "scale of distinct units");
    let truncated = &privacy.noise_scales[1];
    assert_close(
        truncated.epsilon,
        0.8 * 0.05,
        "ε share of the truncation count",
    );
    assert_close(
        truncated.sensitivity,
        1.0,
        "sensitivity of the truncation count",
    );

    // Three measure draws: the distinct-unit count every release draws (k-anonymity is
    // decided on it) has sensitivity max_groups, COUNT(*) max_groups·max_rows, SUM over
    // monthly_income (bounds [0, 100000]) max_groups·max_rows·100000. Each carries one output
    // column's whole error, so the split weighs them alike: 95 % of ε in three equal shares.
    let approval = ApprovalRequest {
        epsilon: 1.0,
        max_groups: 2,
        max_rows: 3,
        ..support::approval()
    };
    let outcome = fixture
        .run_sql(
            "SELECT gender, COUNT(*) AS n, SUM(monthly_income) AS total FROM social_insurance \
             WHERE year = :year GROUP BY gender",
            &[("year", "2024")],
            approval,
        )
        .await
        .expect("job");
    let privacy = manifest_of(released_dir(&outcome)).manifest.privacy;
    assert_eq!(privacy.noise_scales.len(), 4, "{:?}", privacy.noise_scales);
    let sensitivities = [2.0, 2.0 * 3.0, 2.0 * 3.0 * 100_000.0];
    for (scale, sensitivity) in privacy.noise_scales.iter().zip(sensitivities) {
        let share = 0.95 / 3.0;
        assert_close(
            scale.epsilon,
            share,
            &format!("ε share of {}", scale.column),
        );
        assert_close(
            scale.sensitivity,
            sensitivity,
            &format!("sensitivity of {}", scale.column),
        );
        assert_close(
            scale.scale,
            sensitivity / scale.epsilon,
            &format!("scale of {}", scale.column),
        );
        assert_eq!(scale.alpha, Some(0.05));
        assert!(scale.half_width.is_some_and(|h| h > 0.0), "{scale:?}");
    }
    let spent: f64 = privacy.noise_scales.iter().map(|s| s.epsilon).sum();
    assert!(
        spent <= privacy.epsilon,
        "the shares ({spent}) exceed the run's ε"
    );
    assert_close(spent, privacy.epsilon, "shares add up to the run's ε");
}

/// Cities of the bounding test; all are in the policy's public key set.
const CITIES: [&str; 11] = [
    "Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong", "Yuncheng",
    "Xinzhou", "Linfen", "Lvliang",
];
const ORDINARY_PERSONS: i64 = 200;
const HEAVY_ROWS: i64 = 10_000;
const HEAVY_PERSON: i64 = 0;
const AMOUNT_HI: i64 = 100;

const PAYMENTS_POLICY: &str = r#"
provider = "Test Department of Payments"
classification_level = 3
sharing = "conditional"
acquired_on = "2026-10-31"
privacy_unit = "person_id"
unit_kind = "person"

[columns.person_id]
role = "identifier"

[columns.city]
role = "quasi"
keys = ["Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong", "Yuncheng", "Xinzhou", "Linfen", "Lvliang"]

[columns.amount]
role = "sensitive"
bounds = [0, 100]
"#;

/// Writes the payments file: one person with 10,000 rows of amount 1,000,000 spread over all
/// cities, and 200 ordinary persons with one row each (amount 10..90). Returns the ordinary
/// persons' rows per city and their total amount.
fn write_payments(path: &Path) -> (BTreeMap<String, i64>, i64) {
    let mut person = Vec::new();
    let mut city = Vec::new();
    let mut amount = Vec::new();
    for i in 0..HEAVY_ROWS {
        person.push(HEAVY_PERSON);
        city.push(CITIES[i as usize % CITIES.len()]);
        amount.push(1_000_000);
    }
    let mut ordinary_rows: BTreeMap<String, i64> = BTreeMap::new();
    let mut ordinary_total = 0;
    for i in 0..ORDINARY_PERSONS {
        let c = CITIES[i as usize % CITIES.len()];
        let a = 10 + (i * 7) % 81;
        person.push(i + 1);
        city.push(c);
        amount.push(a);
        *ordinary_rows.entry(c.to_string()).or_default() += 1;
        ordinary_total += a;
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Int64, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(person)),
            Arc::new(StringArray::from(city)),
            Arc::new(Int64Array::from(amount)),
        ],
    )
    .expect("batch");
    let mut writer =
        ArrowWriter::try_new(File::create(path).expect("file"), schema, None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    (ordinary_rows, ordinary_total)
}

/// The smallest `t` with `P(|S| ≥ t) ≤ alpha` for `S` the sum of `terms` independent discrete
/// Laplace draws of scale `b`, by the Chernoff bound `P(S ≥ t) ≤ M(s)^terms · e^{−st}` with
/// the moment generating function `M(s) = (1−p)² / ((1−p·e^s)(1−p·e^{−s}))`, `0 < s < 1/b`,
/// minimised over a grid of `s`, doubled for two sides. Rigorous: no approximation.
fn discrete_laplace_sum_tolerance(scale: f64, terms: usize, alpha: f64) -> f64 {
    let p = ratio(scale);
    let log_bound = |t: f64| -> f64 {
        (1..1000)
            .map(|i| {
                let s = i as f64 / 1000.0 / scale;
                let log_mgf =
                    2.0 * (1.0 - p).ln() - (1.0 - p * s.exp()).ln() - (1.0 - p * (-s).exp()).ln();
                terms as f64 * log_mgf - s * t + 2f64.ln()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let (mut lo, mut hi) = (0.0, 1e9);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if log_bound(mid) <= alpha.ln() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[tokio::test]
async fn one_person_with_ten_thousand_rows_moves_the_release_by_at_most_the_limits() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let file = dir.path().join("payments.parquet");
    let (ordinary_rows, ordinary_total) = write_payments(&file);
    let mut store = support::store_with_dataset(dir.path(), "payments", &file, PAYMENTS_POLICY);
    let (epsilon, max_groups, max_rows) = (10.0, 1_i64, 2_i64);
    // `COUNT(*) AS n` is planned as an alias of the alias `count(*)`; the gate unwraps both.
    let template = support::submit_and_approve(
        &mut store,
        "SELECT city, COUNT(*) AS n, SUM(amount) AS total FROM payments GROUP BY city",
        &[],
        ApprovalRequest {
            epsilon,
            delta: 1e-6,
            k: 5,
            max_groups: max_groups as u32,
            max_rows: max_rows as u32,
            price_per_run_fen: 0,
            ..ApprovalRequest::default()
        },
    )
    .expect("template");
    let outcome = jobs::run(
        &mut store,
        JobRequest {
            operator: OPERATOR.into(),
            template,
            params: Vec::new(),
            grant: None,
        },
    )
    .await
    .expect("job");
    let JobOutcome::Released {
        rows: Some(batch),
        dir: product,
        ..
    } = &outcome
    else {
        panic!("expected a released product with rows, got {outcome:?}");
    };
    assert_eq!(
        batch.num_rows(),
        CITIES.len(),
        "every public key is released"
    );

    // Three draws (the distinct-unit count k-anonymity is decided on, COUNT, SUM), 0.95·ε/3
    // each (5 % goes to the count of persons the bounds cut, the fourth draw): count scale
    // max_groups·max_rows/share ≈ 0.63, sum scale max_groups·max_rows·100/share ≈ 63. Three
    // checks share the false-failure budget of 10⁻⁶ (the per-city one by a union bound over
    // the cities).
    let share = epsilon * 0.95 / 3.0;
    let count_scale = (max_groups * max_rows) as f64 / share;
    let sum_scale = (max_groups * max_rows * AMOUNT_HI) as f64 / share;
    let privacy = manifest_of(product).manifest.privacy;
    let recorded: Vec<f64> = privacy.noise_scales.iter().map(|s| s.scale).collect();
    assert_eq!(recorded.len(), 4);
    assert_close(
        recorded[0],
        max_groups as f64 / share,
        "distinct-unit scale",
    );
    assert_close(recorded[1], count_scale, "count scale");
    assert_close(recorded[2], sum_scale, "sum scale");
    let groups = CITIES.len();
    let alpha = ALPHA / 3.0;
    let one_count = discrete_laplace_sum_tolerance(count_scale, 1, alpha / groups as f64);
    let all_counts = discrete_laplace_sum_tolerance(count_scale, groups, alpha);
    let all_sums = discrete_laplace_sum_tolerance(sum_scale, groups, alpha);

    // Whichever string layout the product uses, read the keys as plain strings.
    let cities = datafusion::arrow::compute::cast(
        batch.column_by_name("city").expect("city"),
        &DataType::Utf8,
    )
    .expect("city as text");
    let cities = cities.as_string::<i32>();
    let n = batch
        .column_by_name("n")
        .expect("n")
        .as_primitive::<Int64Type>();
    let total = batch
        .column_by_name("total")
        .expect("total")
        .as_primitive::<Int64Type>();
    // What the heavy person may add at most: max_groups groups × max_rows rows, each row
    // clamped to the upper bound.
    let heavy_rows = max_groups * max_rows;
    let heavy_amount = heavy_rows * AMOUNT_HI;
    let mut excess_rows = 0;
    for i in 0..batch.num_rows() {
        assert!(cities.is_valid(i) && n.is_valid(i) && total.is_valid(i));
        let ordinary = ordinary_rows[cities.value(i)];
        let excess = n.value(i) - ordinary;
        assert!(
            (excess as f64) <= heavy_rows as f64 + one_count && (excess as f64) >= -one_count,
            "{}: n = {}, ordinary persons {ordinary}; one person may add at most {heavy_rows} rows (noise tolerance {one_count})",
            cities.value(i),
            n.value(i)
        );
        excess_rows += excess;
    }
    // Without bounding the heavy person would add 10,000 rows; with max_rows only, 22; with
    // max_groups only, about 909. Bounded, exactly 2.
    assert!(
        (excess_rows as f64 - heavy_rows as f64).abs() <= all_counts,
        "released rows exceed the ordinary persons' {ORDINARY_PERSONS} by {excess_rows}; expected {heavy_rows} ± {all_counts}"
    );
    // Without clamping and bounding the heavy person would add 10¹⁰ to the totals.
    let released_total: i64 = total.values().iter().sum();
    let expected_total = ordinary_total + heavy_amount;
    assert!(
        (released_total as f64 - expected_total as f64).abs() <= all_sums,
        "released total {released_total}; ordinary total {ordinary_total} + at most {heavy_amount} from one person, ± {all_sums}"
    );
}
