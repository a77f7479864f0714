//! The comparison behind the neighbouring-datasets tests (`tests/all/neighbours.rs` on the demo
//! data, `tests/attacks/neighbours.rs` on the canary domain): two outcomes of one query on
//! datasets one person apart, with the same test-only seeded noise, must differ only as the
//! release gate's noise allows (see `tests/all/neighbours.rs` for the promise, point by point).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::util::display::array_value_to_string;
use veil_runtime::Error;
use veil_runtime::jobs::JobOutcome;
use veil_sdk::manifest::Manifest;

/// Compares the outcomes of one query on the two datasets (`context` names the query in a
/// failure); panics where one person shows through.
pub(crate) fn compare_outcomes(
    context: &str,
    a: veil_runtime::Result<JobOutcome>,
    b: veil_runtime::Result<JobOutcome>,
    max_groups: u32,
) -> Compared {
    match (a, b) {
        (
            Ok(JobOutcome::Released {
                rows: Some(a),
                dir: dir_a,
                ..
            }),
            Ok(JobOutcome::Released {
                rows: Some(b),
                dir: dir_b,
                ..
            }),
        ) => {
            let a = Product::read(&a, &dir_a);
            let b = Product::read(&b, &dir_b);
            let differing = compare_products(context, &a, &b, max_groups);
            Compared::Released { differing }
        }
        // An identical earlier job's product came back on both sides.
        (
            Ok(JobOutcome::Released { rows: None, .. }),
            Ok(JobOutcome::Released { rows: None, .. }),
        ) => Compared::Released { differing: 0 },
        (
            Ok(JobOutcome::Rejected { refusal: a, .. }),
            Ok(JobOutcome::Rejected { refusal: b, .. }),
        ) => {
            assert_eq!(a.to_string(), b.to_string(), "{context}");
            Compared::Refused(a.codes().join(","))
        }
        (Ok(JobOutcome::Failed { reason: a, .. }), Ok(JobOutcome::Failed { reason: b, .. })) => {
            assert_eq!(a, b, "{context}");
            Compared::Failed(a)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "{context}");
            match a {
                Error::Refused(refusal) => Compared::Refused(refusal.codes().join(",")),
                other => Compared::Failed(other.to_string()),
            }
        }
        (a, b) => panic!(
            "one person changed the outcome: {context}\n  with them: {a:?}\n  without: {b:?}"
        ),
    }
}

pub(crate) enum Compared {
    Released { differing: usize },
    Refused(String),
    Failed(String),
}

/// What a run of comparisons saw.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub released: usize,
    /// Groups shown or marked on one side only, over all queries.
    pub differing_groups: usize,
    pub refused: BTreeMap<String, usize>,
    pub failed: Vec<(String, String)>,
}

impl Tally {
    pub(crate) fn add(&mut self, compared: Compared, sql: &str) {
        match compared {
            Compared::Released { differing } => {
                self.released += 1;
                self.differing_groups += differing;
            }
            Compared::Refused(codes) => *self.refused.entry(codes).or_default() += 1,
            Compared::Failed(reason) => self.failed.push((sql.to_string(), reason)),
        }
    }
}

/// A released product as the comparison needs it.
pub(crate) struct Product {
    /// Column names and kinds, in order.
    columns: Vec<(String, String)>,
    /// Measures of each group, by its key (the key columns' values, rendered); `None` where
    /// the product has NULL.
    groups: BTreeMap<String, Vec<Option<f64>>>,
    manifest: Manifest,
}

impl Product {
    pub(crate) fn read(batch: &RecordBatch, dir: &Path) -> Self {
        let manifest = veil_sdk::manifest::read_manifest(dir)
            .expect("the product's manifest")
            .manifest;
        let columns: Vec<(String, String)> = manifest
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.kind.clone()))
            .collect();
        let mut groups = BTreeMap::new();
        for row in 0..batch.num_rows() {
            let mut key = Vec::new();
            let mut values = Vec::new();
            for (i, (_, kind)) in columns.iter().enumerate() {
                let column = batch.column(i);
                if kind == "group key" {
                    key.push(if column.is_null(row) {
                        "NULL".to_string()
                    } else {
                        array_value_to_string(column, row).expect("a printable key")
                    });
                } else {
                    values.push(number(column.as_ref(), row));
                }
            }
            let previous = groups.insert(key.join(" | "), values);
            assert!(previous.is_none(), "a product shows one group twice");
        }
        Self {
            columns,
            groups,
            manifest,
        }
    }

    /// The measure columns, in order, with their kinds.
    fn measures(&self) -> Vec<(&str, &str)> {
        self.columns
            .iter()
            .filter(|(_, kind)| kind != "group key")
            .map(|(n, k)| (n.as_str(), k.as_str()))
            .collect()
    }

    /// Position, among the measures, of the noisy distinct-unit count, if the query shows it.
    fn units_measure(&self) -> Option<usize> {
        self.measures().iter().position(|(name, _)| {
            interval_of(name).is_none()
                && self
                    .manifest
                    .privacy
                    .noise_scales
                    .iter()
                    .all(|s| s.column != *name && s.column != format!("{name} (sum)"))
                && self
                    .manifest
                    .privacy
                    .noise_scales
                    .iter()
                    .any(|s| s.column == "distinct units")
        })
    }

    /// The L1 sensitivity the manifest states for a measure (its own draw's, or the
    /// distinct-unit draw's for COUNT(DISTINCT unit)); an interval's end moves with its value.
    fn sensitivity(&self, name: &str) -> f64 {
        let name = interval_of(name).unwrap_or(name);
        let scales = &self.manifest.privacy.noise_scales;
        scales
            .iter()
            .find(|s| s.column == name || s.column == format!("{name} (sum)"))
            .or_else(|| scales.iter().find(|s| s.column == "distinct units"))
            .map(|s| s.sensitivity)
            .expect("every measure has a draw")
    }
}

/// The measure whose 95 % interval end column `name` is, if it is one.
fn interval_of(name: &str) -> Option<&str> {
    name.strip_suffix("_ci_low")
        .or_else(|| name.strip_suffix("_ci_high"))
}

/// Whether measure column `name` of `kind` is an average or one of its interval's ends: they
/// are post-processed quotients, without an L1 sensitivity of their own.
fn is_average(measures: &[(&str, &str)], name: &str, kind: &str) -> bool {
    let base = interval_of(name).unwrap_or(name);
    kind.starts_with("noisy average")
        || measures
            .iter()
            .any(|(n, k)| *n == base && k.starts_with("noisy average"))
}

fn number(column: &dyn Array, row: usize) -> Option<f64> {
    if column.is_null(row) {
        return None;
    }
    let as_float = cast(&column.slice(row, 1), &DataType::Float64).expect("a numeric measure");
    Some(as_float.as_primitive::<Float64Type>().value(0))
}

/// Checks two products one person apart; returns how many groups the threshold decided
/// differently.
pub(crate) fn compare_products(context: &str, a: &Product, b: &Product, max_groups: u32) -> usize {
    assert_eq!(a.columns, b.columns, "the columns differ: {context}");
    let tau = a.manifest.privacy.threshold.expect("a threshold");
    assert_eq!(
        Some(tau),
        b.manifest.privacy.threshold,
        "τ is fixed by the approval alone: {context}"
    );
    assert_eq!(
        a.manifest.privacy.noise_scales, b.manifest.privacy.noise_scales,
        "the noise plan is fixed by the query and the approval alone: {context}"
    );
    let measures = a.measures();
    let units = a.units_measure();
    // A marked row has NULL measures (its distinct-unit count among them).
    let marked = |values: &[Option<f64>]| match units {
        Some(i) => values[i].is_none(),
        None => values.iter().all(Option::is_none),
    };
    // Where one side shows a group the other hides or marks, the side that shows it must
    // have met τ exactly: with the same noise, the other's count is one less.
    let decided_here = |values: &[Option<f64>], key: &str| {
        if let Some(i) = units {
            assert_eq!(
                values[i],
                Some(tau),
                "group `{key}` is shown on one side only, but its noisy distinct-unit count is \
                 not at the threshold τ = {tau}: {context}"
            );
        }
    };
    let keys: BTreeSet<&String> = a.groups.keys().chain(b.groups.keys()).collect();
    let mut differing = 0;
    let mut distance = vec![0.0f64; measures.len()];
    let mut magnitude = vec![0.0f64; measures.len()];
    for key in keys {
        match (a.groups.get(key), b.groups.get(key)) {
            (Some(va), Some(vb)) => match (marked(va), marked(vb)) {
                (false, false) => {
                    for (i, (x, y)) in va.iter().zip(vb).enumerate() {
                        match (x, y) {
                            (Some(x), Some(y)) => {
                                distance[i] += (x - y).abs();
                                magnitude[i] += x.abs() + y.abs();
                            }
                            (None, None) => {}
                            // An average whose noisy count is not positive is NULL on its own.
                            _ if is_average(&measures, measures[i].0, measures[i].1) => {}
                            _ => panic!(
                                "group `{key}`: measure `{}` is NULL on one side only: {context}",
                                measures[i].0
                            ),
                        }
                    }
                }
                (true, true) => {}
                (false, true) => {
                    differing += 1;
                    decided_here(va, key);
                }
                (true, false) => {
                    differing += 1;
                    decided_here(vb, key);
                }
            },
            (Some(va), None) => {
                differing += 1;
                decided_here(va, key);
            }
            (None, Some(vb)) => {
                differing += 1;
                decided_here(vb, key);
            }
            (None, None) => unreachable!("the key came from one of them"),
        }
    }
    assert!(
        differing <= max_groups as usize,
        "{differing} groups differ, but one person reaches at most {max_groups}: {context}"
    );
    for (i, (name, kind)) in measures.iter().enumerate() {
        if is_average(&measures, name, kind) {
            continue;
        }
        let sensitivity = a.sensitivity(name);
        let tolerance = 1e-9 * magnitude[i] + 1e-6;
        assert!(
            distance[i] <= sensitivity + tolerance,
            "measure `{name}` moved by {} over its groups, more than its stated sensitivity \
             {sensitivity}: {context}",
            distance[i]
        );
    }
    differing
}
