//! Statistical disclosure rules beyond k, for released sums of magnitude data: the p % rule
//! and the (n, k) dominance rule, as statistics offices apply them to magnitude tables
//! (the UK Office for National Statistics, ACRO/SACRO). The bureau declares them per column in
//! the dataset policy (`p_percent = 10`, `dominance = [n, k]`); a SUM over that column carries
//! them ([`crate::analysis::MeasureKind::Sum`]), and each released cell of that SUM is checked.
//!
//! # The rules, as margins
//! Let a cell's contributions be the capped per-unit sums the bounding fold adds to it (one per
//! (unit, group) slot, see `bounding`), `T` their total and `x1 ≥ x2 ≥ …` the largest of them
//! (missing ones count as 0). With `q = p / 100` and `κ = k / 100`:
//! - **p % rule**: the second-largest contributor, who knows its own `x2`, can estimate the
//!   largest as `T − x2`; the cell is sensitive when that estimate is within p % of `x1`, i.e.
//!   when the margin `m_p = T − x1 − x2 − q·x1` is negative.
//! - **(n, k) dominance rule**: the cell is sensitive when its `n` largest contributors make up
//!   more than k % of it, i.e. when `m_d = κ·T − (x1 + … + xn)` is negative.
//!
//! A column with both rules is checked on one margin, `m = min(m_p, m_d / s_d)` with
//! `s_d = max(κ, 1 − κ)`: it is negative exactly when either rule calls the cell sensitive
//! (dividing by `s_d > 0` keeps the sign), and it needs one noisy draw, not two.
//!
//! # The decision is taken on a noisy margin
//! A cell withheld because its *true* margin is negative is an exact oracle: one enterprise
//! more or less in a cell can flip it, and the product then says so with certainty. So the
//! margin of every released cell gets Laplace noise from OpenDP (`plan` makes the draw,
//! `protected` adds it), with its own share of the run's ε, and the cell is **protected**
//! when the noisy margin is below a threshold `t` fixed in the plan. Which cells are protected
//! is therefore a function of the noisy margins, the plan and the released keys only —
//! post-processing of a differentially private release, which costs nothing beyond its ε share
//! and depends on the data only through that DP quantity (and the selection's noisy counts).
//!
//! ## The threshold
//! A sensitive cell's margin is never far below zero: `m_p ≥ −q·x1 ≥ −q·C` and
//! `m_d / s_d ≥ −C` (see below for `C`), while the noise has a scale of at least `C / ε`. A
//! threshold of 0 would protect a dominated cell about as often as a coin lands heads, and by
//! differential privacy no threshold can do better *and* release the same cell without its
//! dominant unit. The threshold therefore leans towards protecting, as the k threshold τ leans
//! towards suppressing: `t = b · ln(1 / 2β)`, with `b` the Laplace scale and
//! `β` = [`SENSITIVE_CELL_MISS_PROBABILITY`], so that a sensitive cell (`m < 0`) is protected
//! with probability at least `1 − β`: `P(m + noise < t) ≥ P(noise < t) = 1 − ½·e^(−t/b)`.
//! The price is that a cell is released with the same confidence only when its margin is at
//! least `2t`; since a margin is at most `T` and the sum's own noise has the same scale `b`
//! when the ε shares are equal, the cells withheld without being sensitive are those whose
//! noisy sum would be mostly noise anyway.
//!
//! # Proof of the sensitivity
//! Neighbouring datasets differ by all rows of one unit `u`, present in one and absent from the
//! other (the model of `bounding`'s proof). After bounding, `u` holds at most `max_groups`
//! (unit, group) slots, and no other unit's slots depend on `u`. Values are clamped into
//! `[lo, hi]` with `lo ≥ 0` (the policy allows the rules only then), and a slot's kept sum is
//! scaled to at most `max_rows` values' worth, so each contribution `c` lies in `[0, C]` with
//! `C = max_rows · hi`. In a group `u` touches, the multiset of contributions gains (or, the
//! other way round, loses) one element `c ∈ [0, C]`; every other group's is unchanged.
//! Adding `c` to contributions `x1 ≥ x2 ≥ … ≥ 0` (padded with zeros), `T` grows by `c` and:
//! - `m_p`, with `q ≤ 1` (the policy allows `0 < p ≤ 100`):
//!   - if `c ≥ x1`, the two largest become `c, x1`: `Δ = c − (1+q)(c − x1) − (x1 − x2)
//!     = x2 − q(c − x1)`, within `[−qC, C]`;
//!   - if `x1 > c ≥ x2`, they become `x1, c`: `Δ = c − (c − x2) = x2`, within `[0, C]`;
//!   - if `c < x2`, they stay: `Δ = c`, within `[0, C]`.
//!
//!   So `|Δm_p| ≤ max(1, q)·C = C`.
//! - `m_d`: if `c ≤ xn` the n largest keep their sum and `Δ = κc ∈ [0, κC]`; otherwise `c`
//!   replaces `xn` among them and `Δ = κc − (c − xn) = xn − (1 − κ)c`, within
//!   `[−(1 − κ)C, κC]` as `0 ≤ xn < c ≤ C`. So `|Δm_d| ≤ s_d·C` and `|Δ(m_d / s_d)| ≤ C`.
//! - `min` moves by at most the larger of its arguments' moves, so `|Δm| ≤ C`.
//!
//! Removing `u` is the same change backwards. Over the vector of groups, one unit therefore
//! moves the margins by at most `max_groups · C` in L1 (`sensitivity`) and `√max_groups · C`
//! in L2 (for a Gaussian draw). A group with no contributor has `T = 0` and margin 0, the value
//! the zero padding gives, so groups present in only one of the two datasets are covered too.
//! The unit tests check these bounds against every neighbour of small crafted data.
//!
//! The margins are computed in `f64` from exact contributions (integer contributions are exact
//! below 2^53; floating-point ones carry the rounding of their partial sums, as the sum does).
//!
//! ## Expressions
//! The gate sums only a column passed through (renamed or cast), so a sum's contributions are
//! the column's own values and its rules are that column's. Both margins are positively
//! homogeneous (`m(a·x) = a·m(x)` for `a > 0`), so should sums of positively scaled columns
//! ever be allowed, the rules would keep their meaning with `C` taken from the scaled bound;
//! anything that can make a value negative would break the `lo ≥ 0` premise and must not carry
//! them.
//!
//! # What a protected cell looks like
//! Its sum is released as NULL, like a cell marked below τ; its row and key stay, and so do
//! the row's other columns. The manifest counts protected cells per column and names the rule
//! and its parameters ([`DisclosureRules::describe`]); the count is post-processing of the
//! noisy decisions too.

use crate::analysis::{Analysis, MeasureKind};
use crate::bounding::{Bounded, GroupKeyBytes, Limits, Total};
use crate::noise::{self, Draw, Mechanism, NoiseError};
use crate::policy::ColumnPolicy;
use datafusion::arrow::datatypes::DataType;

/// The largest `p` of a p % rule, in percent. With `p ≤ 100` the p % margin moves by at most
/// one contribution's bound when one unit comes or goes (see the module proof); statistics
/// offices use 10 to 20.
pub const P_PERCENT_MAX: f64 = 100.0;

/// The most contributors `n` a dominance rule may name. The bounding fold keeps this many of
/// each group's largest contributions per ruled sum; statistics offices use 1 to 3.
pub const DOMINANCE_CONTRIBUTORS_MAX: u32 = 10;

/// The largest probability that a sensitive cell is released anyway, because the noise lifted
/// its margin over the threshold (see "The threshold"). 5 %, the complement of the 95 %
/// confidence at which every released figure states its accuracy.
pub const SENSITIVE_CELL_MISS_PROBABILITY: f64 = 0.05;

/// The (n, k) dominance rule: a cell is sensitive when its `n` largest contributors make up
/// more than `k_percent` % of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dominance {
    pub n: u32,
    pub k_percent: f64,
}

/// A column's statistical disclosure rules, as its policy declares them (at least one is set).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisclosureRules {
    /// The p % rule's `p`, in percent.
    pub p_percent: Option<f64>,
    pub dominance: Option<Dominance>,
}

impl DisclosureRules {
    /// The rules a column's policy declares; `None` when it declares none. The values are
    /// taken as [`check_column`] allowed them.
    pub fn of(column: &ColumnPolicy) -> Option<Self> {
        let rules = Self {
            p_percent: column.p_percent,
            dominance: column.dominance.map(|[n, k]| Dominance {
                n: n as u32,
                k_percent: k,
            }),
        };
        (rules.p_percent.is_some() || rules.dominance.is_some()).then_some(rules)
    }

    /// How many of a cell's largest contributions the margins read.
    pub fn contributors(&self) -> usize {
        let p = if self.p_percent.is_some() { 2 } else { 0 };
        let n = self.dominance.map_or(0, |d| d.n as usize);
        p.max(n)
    }

    /// The rules in words, for the manifest and the column's description.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.p_percent {
            parts.push(format!("p % rule (p = {p})"));
        }
        if let Some(Dominance { n, k_percent }) = self.dominance {
            parts.push(format!(
                "({n}, {k_percent}) dominance rule (the {n} largest contributors above {k_percent} % of the cell)"
            ));
        }
        parts.join("; ")
    }

    /// The cell's margin `min(m_p, m_d / s_d)` (see the module docs): negative when either
    /// rule calls the cell sensitive. `largest` holds the cell's largest contributions,
    /// largest first; missing ones count as 0.
    pub fn margin(&self, total: f64, largest: &[f64]) -> f64 {
        let x = |i: usize| largest.get(i).copied().unwrap_or(0.0);
        let mut margin = f64::INFINITY;
        if let Some(p) = self.p_percent {
            margin = margin.min(total - x(0) - x(1) - p / 100.0 * x(0));
        }
        if let Some(Dominance { n, k_percent }) = self.dominance {
            let kappa = k_percent / 100.0;
            let top: f64 = (0..n as usize).map(x).sum();
            margin = margin.min((kappa * total - top) / kappa.max(1.0 - kappa));
        }
        margin
    }
}

/// The problems of a column's `p_percent` and `dominance` settings, each naming the column and
/// the fix. [`crate::policy::Policy::check`] calls it for every column that sets either.
pub fn check_column(name: &str, data_type: &DataType, column: &ColumnPolicy) -> Vec<String> {
    let mut problems = Vec::new();
    if column.p_percent.is_none() && column.dominance.is_none() {
        return problems;
    }
    if !data_type.is_numeric() {
        problems.push(format!(
            "column `{name}` has disclosure rules (`p_percent`, `dominance`) but type {data_type}; they apply to sums of numeric magnitude columns, remove them"
        ));
    }
    match column.bounds {
        None => problems.push(format!(
            "column `{name}` has disclosure rules but no bounds; add bounds = [0, high], so each contribution to a sum has a known size"
        )),
        Some([lo, hi]) if !(lo >= 0.0 && hi > 0.0) => problems.push(format!(
            "column `{name}`: disclosure rules apply to magnitude data (values ≥ 0, like capital or turnover), but its bounds are [{lo}, {hi}]; set bounds = [0, high] with high > 0, or remove `p_percent` and `dominance`"
        )),
        Some(_) => {}
    }
    if let Some(p) = column.p_percent
        && !(p > 0.0 && p <= P_PERCENT_MAX)
    {
        problems.push(format!(
            "column `{name}`: p_percent = {p}; write a percentage above 0 and at most {P_PERCENT_MAX} (statistics offices use 10 to 20)"
        ));
    }
    if let Some([n, k]) = column.dominance {
        if !(n.fract() == 0.0 && n >= 1.0 && n <= f64::from(DOMINANCE_CONTRIBUTORS_MAX)) {
            problems.push(format!(
                "column `{name}`: dominance = [{n}, {k}] names {n} contributors; write n as a whole number from 1 to {DOMINANCE_CONTRIBUTORS_MAX}, e.g. dominance = [3, 75]"
            ));
        }
        if !(k > 0.0 && k < 100.0) {
            problems.push(format!(
                "column `{name}`: dominance = [{n}, {k}] has k = {k}; write k as a percentage strictly between 0 and 100, e.g. dominance = [3, 75]"
            ));
        }
    }
    problems
}

/// The rules a measure's cells are checked against, if any.
pub(crate) fn rules_of(kind: &MeasureKind) -> Option<&DisclosureRules> {
    match kind {
        MeasureKind::Sum { disclosure, .. } | MeasureKind::Avg { disclosure, .. } => {
            disclosure.as_ref()
        }
        _ => None,
    }
}

/// A group's largest per-unit contributions to one ruled sum, largest first: what the margins
/// read besides the total. The bounding fold fills one per ruled measure and group, from the
/// final capped contribution of each (unit, group) slot (`bounding::add_slot`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Largest {
    /// The measure's index in the analysis.
    measure: usize,
    /// How many it keeps ([`DisclosureRules::contributors`]).
    keep: usize,
    values: Vec<f64>,
}

impl Largest {
    pub(crate) fn new(measure: usize, keep: usize) -> Self {
        Self {
            measure,
            keep,
            values: Vec::new(),
        }
    }

    pub(crate) fn measure(&self) -> usize {
        self.measure
    }

    /// How many contributions it keeps.
    #[cfg(feature = "cluster")]
    pub(crate) fn keep(&self) -> usize {
        self.keep
    }

    /// Adds one unit's contribution, keeping the `keep` largest.
    pub(crate) fn push(&mut self, value: f64) {
        if self.values.len() == self.keep {
            match self.values.last() {
                Some(smallest) if *smallest < value => {
                    self.values.pop();
                }
                _ => return,
            }
        }
        let at = self.values.partition_point(|v| *v >= value);
        self.values.insert(at, value);
    }

    /// Adds another share of the same group's contributions (shares hold disjoint units, so
    /// the largest of the union are the largest of the two lists).
    pub(crate) fn merge(&mut self, other: &Largest) {
        for value in &other.values {
            self.push(*value);
        }
    }

    pub(crate) fn values(&self) -> &[f64] {
        &self.values
    }
}

/// An empty list for every measure with rules, in measure order: what each group's
/// contributions start from. Empty when no measure has rules, and then the fold does nothing
/// more than before.
pub(crate) fn lists(analysis: &Analysis) -> Vec<Largest> {
    analysis
        .measures
        .iter()
        .enumerate()
        .filter_map(|(j, m)| rules_of(&m.kind).map(|r| Largest::new(j, r.contributors())))
        .collect()
}

/// The sensitivity of the margins over the vector of groups (see the module proof): L1
/// `max_groups · max_rows · hi` for a Laplace draw, L2 `√max_groups · max_rows · hi` for a
/// Gaussian one.
pub(crate) fn sensitivity(hi: f64, limits: Limits, mechanism: Mechanism) -> f64 {
    let groups = f64::from(limits.max_groups);
    let groups = match mechanism {
        Mechanism::Laplace => groups,
        Mechanism::Gaussian => groups.sqrt(),
    };
    groups * f64::from(limits.max_rows) * hi
}

/// The noisy part of one ruled sum: its margin draw and the threshold a noisy margin is
/// compared with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DisclosurePlan {
    pub(crate) rules: DisclosureRules,
    /// One Laplace draw over the released groups' margins.
    pub(crate) draw: Draw,
    /// `t`: a cell whose noisy margin is below it is protected.
    pub(crate) threshold: f64,
}

/// The label of a ruled measure's margin draw.
pub(crate) fn label(name: &str) -> String {
    format!("{name} (disclosure margin)")
}

/// Plans the margin draw of a ruled measure (a SUM or AVG over a column bounded by `[lo, hi]`
/// with `rules`): `draw` is its noise, made by the ε plan with [`sensitivity`] and the
/// measure's share. One draw per ruled measure, whatever rules it has; it depends on the
/// query and the approval only, so it belongs in the ε plan. The threshold is the draw's
/// one-sided tail at [`SENSITIVE_CELL_MISS_PROBABILITY`]: its two-sided half-width at twice
/// that (for Laplace, `b · ln(1 / 2β)`).
pub(crate) fn plan(rules: DisclosureRules, draw: Draw) -> Result<DisclosurePlan, NoiseError> {
    let threshold = draw.half_width(2.0 * SENSITIVE_CELL_MISS_PROBABILITY)?;
    Ok(DisclosurePlan {
        rules,
        draw,
        threshold,
    })
}

/// One cell's true figures: its bounded total and its largest contributions, largest first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cell<'a> {
    pub(crate) total: f64,
    pub(crate) largest: &'a [f64],
}

/// Whether each cell is protected: its margin plus the plan's noise is below the threshold.
/// `keys` name the cells (the released groups, in order); only the test-only seeded source
/// reads them.
pub(crate) fn protected(
    plan: &DisclosurePlan,
    source: noise::Source,
    keys: &[&[u8]],
    cells: &[Cell<'_>],
) -> Result<Vec<bool>, NoiseError> {
    let margins = cells
        .iter()
        .map(|c| plan.rules.margin(c.total, c.largest))
        .collect();
    Ok(plan
        .draw
        .floats(source, keys, margins)?
        .into_iter()
        .map(|noisy| noisy < plan.threshold)
        .collect())
}

/// [`protected`] for measure `measure` of a release: the cells are the groups `keys` (the
/// selection, in its order), read from the bounding fold's totals. A key the fold never saw
/// is a cell without contributors.
pub(crate) fn protected_groups(
    plan: &DisclosurePlan,
    source: noise::Source,
    bounded: &Bounded,
    keys: &[GroupKeyBytes],
    measure: usize,
) -> Result<Vec<bool>, NoiseError> {
    let cells: Vec<Cell<'_>> = keys
        .iter()
        .map(|key| match bounded.groups.get(key) {
            Some(group) => Cell {
                total: match group.totals.get(measure) {
                    Some(Total::IntSum { sum, .. }) => *sum as f64,
                    Some(Total::FloatSum { sum, .. }) => *sum,
                    _ => 0.0,
                },
                largest: group.largest(measure),
            },
            None => Cell {
                total: 0.0,
                largest: &[],
            },
        })
        .collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
    protected(plan, source, &refs, &cells)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::policy::Role;

    /// A Laplace margin plan, as the ε plan makes one.
    fn laplace_plan(
        name: &str,
        rules: DisclosureRules,
        hi: f64,
        limits: Limits,
        epsilon: f64,
    ) -> Result<DisclosurePlan, NoiseError> {
        let sensitivity = sensitivity(hi, limits, Mechanism::Laplace);
        plan(rules, Draw::new(label(name), sensitivity, epsilon, false)?)
    }

    const P10: DisclosureRules = DisclosureRules {
        p_percent: Some(10.0),
        dominance: None,
    };

    fn dominance(n: u32, k_percent: f64) -> DisclosureRules {
        DisclosureRules {
            p_percent: None,
            dominance: Some(Dominance { n, k_percent }),
        }
    }

    fn both() -> DisclosureRules {
        DisclosureRules {
            p_percent: Some(15.0),
            dominance: Some(Dominance {
                n: 2,
                k_percent: 80.0,
            }),
        }
    }

    /// A cell's total and largest contributions, from all its contributions.
    fn cell_of(contributions: &[f64], keep: usize) -> (f64, Vec<f64>) {
        let mut largest = Largest::new(0, keep);
        for c in contributions {
            largest.push(*c);
        }
        (contributions.iter().sum(), largest.values)
    }

    fn margin(rules: &DisclosureRules, contributions: &[f64]) -> f64 {
        let (total, largest) = cell_of(contributions, rules.contributors());
        rules.margin(total, &largest)
    }

    #[test]
    fn the_margins_say_what_the_rules_say() {
        // One enterprise with 1000 and three with 10: the second-largest (10) estimates the
        // largest as 1030 − 10 = 1020, within 10 % of 1000, and one contributor holds 97 %.
        let dominated = [1000.0, 10.0, 10.0, 10.0];
        assert!(margin(&P10, &dominated) < 0.0);
        assert!(margin(&dominance(1, 75.0), &dominated) < 0.0);
        assert!(margin(&both(), &dominated) < 0.0);
        // Forty equal contributors: the estimate misses the largest by 38 times its size.
        let even = [100.0; 40];
        assert!(margin(&P10, &even) > 0.0);
        assert!(margin(&dominance(3, 75.0), &even) > 0.0);
        assert!(margin(&both(), &even) > 0.0);
        // Either rule alone makes the combined margin negative: two equal large contributors
        // and four small ones. The p % rule is silent (either large one estimates the other as
        // 140 = 100 + 40, off by 40 %), but the two hold 200 of 240, above 80 %.
        let pair = [100.0, 100.0, 10.0, 10.0, 10.0, 10.0];
        let p_only = DisclosureRules {
            p_percent: Some(15.0),
            dominance: None,
        };
        assert!(margin(&p_only, &pair) > 0.0);
        assert!(margin(&dominance(2, 80.0), &pair) < 0.0);
        assert!(margin(&both(), &pair) < 0.0);
    }

    #[test]
    fn the_largest_contributions_are_kept_whatever_the_order_and_split() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for _ in 0..200 {
            let keep = rng.random_range(1..=4);
            let values: Vec<f64> = (0..rng.random_range(0..12))
                .map(|_| f64::from(rng.random_range(0..20u32)))
                .collect();
            let mut sorted = values.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            sorted.truncate(keep);
            let split = rng.random_range(0..=values.len());
            let (mut a, mut b) = (Largest::new(0, keep), Largest::new(0, keep));
            values[..split].iter().for_each(|v| a.push(*v));
            values[split..].iter().for_each(|v| b.push(*v));
            a.merge(&b);
            assert_eq!(a.values(), sorted.as_slice());
        }
    }

    /// Every multiset of up to `size` contributions from `0..=bound`, largest first.
    fn multisets(bound: u32, size: usize) -> Vec<Vec<f64>> {
        let mut all = vec![Vec::new()];
        let mut frontier: Vec<Vec<f64>> = vec![Vec::new()];
        for _ in 0..size {
            let mut next = Vec::new();
            for set in &frontier {
                let below = set.last().map_or(bound, |v: &f64| *v as u32);
                for v in 0..=below {
                    let mut longer = set.clone();
                    longer.push(f64::from(v));
                    next.push(longer);
                }
            }
            all.extend(next.iter().cloned());
            frontier = next;
        }
        all
    }

    #[test]
    fn one_contribution_moves_a_margin_by_at_most_its_bound_and_that_bound_is_reached() {
        // The per-group step of the proof, on every cell of up to four contributions from
        // 0..=6 and every added contribution: the largest move is exactly C = 6.
        const C: u32 = 6;
        let cells = multisets(C, 4);
        for rules in [
            P10,
            DisclosureRules {
                p_percent: Some(100.0),
                dominance: None,
            },
            dominance(1, 50.0),
            dominance(2, 90.0),
            dominance(3, 10.0),
            both(),
        ] {
            let mut widest = 0.0f64;
            for cell in &cells {
                let before = margin(&rules, cell);
                for c in 0..=C {
                    let mut with = cell.clone();
                    with.push(f64::from(c));
                    widest = widest.max((margin(&rules, &with) - before).abs());
                }
            }
            assert!(widest <= f64::from(C) + 1e-9, "{rules:?} moved by {widest}");
            assert!(
                widest >= f64::from(C) - 1e-9,
                "{rules:?}: the bound is tight"
            );
        }
    }

    /// The margins of every group, from rows of (unit, group, contribution).
    fn margins(rules: &DisclosureRules, rows: &[(u32, u32, f64)], groups: u32) -> Vec<f64> {
        (0..groups)
            .map(|g| {
                let cell: Vec<f64> = rows.iter().filter(|r| r.1 == g).map(|r| r.2).collect();
                margin(rules, &cell)
            })
            .collect()
    }

    #[test]
    fn the_stated_sensitivity_holds_for_every_neighbour_of_crafted_data() {
        // Crafted data that bounding would produce: each unit in at most `max_groups` groups,
        // each (unit, group) contribution within [0, max_rows · hi]. Removing any one unit
        // moves the vector of margins by at most the stated L1 sensitivity.
        let mut rng = ChaCha8Rng::seed_from_u64(2026);
        let limits = Limits {
            max_groups: 2,
            max_rows: 3,
        };
        let hi = 5.0;
        let bound = sensitivity(hi, limits, Mechanism::Laplace);
        let mut widest = 0.0f64;
        for _ in 0..300 {
            let (units, groups) = (rng.random_range(1..8u32), rng.random_range(1..4u32));
            let mut rows = Vec::new();
            for unit in 0..units {
                let mut mine: Vec<u32> = (0..groups).collect();
                mine.truncate(rng.random_range(1..=limits.max_groups as usize));
                for g in mine {
                    let c = rng.random_range(0..=(f64::from(limits.max_rows) * hi) as u32);
                    rows.push((unit, g, f64::from(c)));
                }
            }
            for rules in [P10, dominance(2, 60.0), both()] {
                let full = margins(&rules, &rows, groups);
                for gone in 0..units {
                    let rest: Vec<_> = rows.iter().copied().filter(|r| r.0 != gone).collect();
                    let moved: f64 = margins(&rules, &rest, groups)
                        .iter()
                        .zip(&full)
                        .map(|(a, b)| (a - b).abs())
                        .sum();
                    assert!(moved <= bound + 1e-9, "moved by {moved} > {bound}");
                    widest = widest.max(moved);
                }
            }
        }
        // The crafted data come close to the bound, so the check is not vacuous.
        assert!(widest >= bound * 0.8, "widest move {widest} of {bound}");
    }

    #[test]
    fn a_plan_states_one_laplace_draw_and_a_threshold_that_misses_five_percent() {
        let limits = Limits {
            max_groups: 3,
            max_rows: 1,
        };
        let plan = laplace_plan("capital", P10, 5000.0, limits, 0.5).unwrap();
        assert_eq!(plan.draw.sensitivity, 15_000.0);
        assert_eq!(plan.draw.scale, 30_000.0);
        assert_eq!(plan.draw.label, "capital (disclosure margin)");
        // P(Laplace(b) ≥ t) = ½·exp(−t/b) is the miss probability.
        let miss = 0.5 * (-plan.threshold / plan.draw.scale).exp();
        assert!((miss - SENSITIVE_CELL_MISS_PROBABILITY).abs() < 1e-12);
    }

    #[cfg(feature = "test-noise")]
    #[test]
    fn a_dominated_cell_is_protected_and_a_cell_of_many_equal_contributors_is_not() {
        // max_groups 1, max_rows 1, values in [0, 100], ε share 1: noise of scale 100.
        let limits = Limits {
            max_groups: 1,
            max_rows: 1,
        };
        let plan = laplace_plan("capital", P10, 100.0, limits, 1.0).unwrap();
        // One enterprise at the bound and three small ones; and 200 enterprises of 50 each.
        let (dominated_total, dominated) = cell_of(&[100.0, 1.0, 1.0, 1.0], 2);
        let (even_total, even) = cell_of(&[50.0; 200], 2);
        let cells = [
            Cell {
                total: dominated_total,
                largest: &dominated,
            },
            Cell {
                total: even_total,
                largest: &even,
            },
        ];
        let keys: [&[u8]; 2] = [b"dominated", b"even"];
        let runs = 400;
        let mut protected_counts = [0usize; 2];
        for seed in 0..runs {
            let decided = protected(&plan, noise::Source::Seeded(seed), &keys, &cells).unwrap();
            for (count, p) in protected_counts.iter_mut().zip(decided) {
                *count += usize::from(p);
            }
        }
        // At least 95 % in expectation; 90 % is more than four standard deviations below.
        assert!(
            protected_counts[0] * 10 >= runs as usize * 9,
            "the dominated cell was protected in {} of {runs} runs",
            protected_counts[0]
        );
        assert_eq!(protected_counts[1], 0, "the even cell was never protected");
    }

    fn column(
        bounds: Option<[f64; 2]>,
        p: Option<f64>,
        dominance: Option<[f64; 2]>,
    ) -> ColumnPolicy {
        let mut column: ColumnPolicy = toml::from_str("role = \"sensitive\"").unwrap();
        column.bounds = bounds;
        column.p_percent = p;
        column.dominance = dominance;
        column
    }

    #[test]
    fn the_policy_allows_the_rules_only_on_magnitude_columns_and_names_the_fix() {
        let int = DataType::Int64;
        assert!(
            check_column(
                "capital",
                &int,
                &column(Some([0.0, 5000.0]), Some(10.0), Some([3.0, 75.0]))
            )
            .is_empty()
        );
        let text = check_column(
            "city",
            &DataType::Utf8,
            &column(Some([0.0, 1.0]), Some(10.0), None),
        );
        assert!(
            text[0].contains("`city`") && text[0].contains("numeric"),
            "{text:?}"
        );
        let unbounded = check_column("capital", &int, &column(None, Some(10.0), None));
        assert!(unbounded[0].contains("bounds = [0, high]"), "{unbounded:?}");
        let signed = check_column(
            "profit",
            &int,
            &column(Some([-10.0, 10.0]), None, Some([1.0, 50.0])),
        );
        assert!(
            signed[0].contains("`profit`") && signed[0].contains("values ≥ 0"),
            "{signed:?}"
        );
        let wide_p = check_column(
            "capital",
            &int,
            &column(Some([0.0, 1.0]), Some(150.0), None),
        );
        assert!(wide_p[0].contains("p_percent = 150"), "{wide_p:?}");
        let bad_n = check_column(
            "capital",
            &int,
            &column(Some([0.0, 1.0]), None, Some([2.5, 75.0])),
        );
        assert!(bad_n[0].contains("whole number"), "{bad_n:?}");
        let bad_k = check_column(
            "capital",
            &int,
            &column(Some([0.0, 1.0]), None, Some([3.0, 100.0])),
        );
        assert!(bad_k[0].contains("strictly between 0 and 100"), "{bad_k:?}");
        // A column without rules is never questioned here.
        assert!(check_column("city", &DataType::Utf8, &column(None, None, None)).is_empty());
        assert_eq!(column(None, None, None).role, Role::Sensitive);
    }

    #[test]
    fn the_demo_registry_applies_the_p_percent_rule_to_capital() {
        let policy = crate::policy::Policy::parse(include_str!(
            "../../examples/policies/enterprise_registry.toml"
        ))
        .unwrap();
        let capital = policy.column("registered_capital").unwrap();
        assert!(check_column("registered_capital", &DataType::Int64, capital).is_empty());
        let rules = DisclosureRules::of(capital).unwrap();
        assert_eq!(rules.p_percent, Some(10.0));
        assert_eq!(rules.contributors(), 2);
        // Registration's check runs the rules' check on every column: the demo passes, and
        // the rule on a text column is refused, naming it.
        use datafusion::arrow::datatypes::{Field, Schema};
        let text = ["city", "industry", "credit_rating"];
        let schema = Schema::new(
            [
                "enterprise_id",
                "legal_rep_id",
                "city",
                "industry",
                "established_year",
                "registered_capital",
                "employees",
                "credit_rating",
            ]
            .map(|name| {
                let data_type = if text.contains(&name) {
                    DataType::Utf8
                } else {
                    DataType::Int64
                };
                Field::new(name, data_type, false)
            })
            .to_vec(),
        );
        assert_eq!(policy.check(&schema), Vec::<String>::new());
        let mut wrong = policy.clone();
        if let Some(city) = wrong.columns.get_mut("city") {
            city.p_percent = Some(10.0);
        }
        let problems = wrong.check(&schema);
        assert!(
            problems.len() == 2 && problems.iter().all(|p| p.contains("`city`")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_policy_names_its_rules_and_a_stored_policy_without_them_still_loads() {
        let ruled: ColumnPolicy = toml::from_str(
            "role = \"sensitive\"\nbounds = [0, 5000]\np_percent = 10\ndominance = [3, 75]",
        )
        .unwrap();
        let rules = DisclosureRules::of(&ruled).unwrap();
        assert_eq!(rules.contributors(), 3);
        assert_eq!(
            rules.describe(),
            "p % rule (p = 10); (3, 75) dominance rule (the 3 largest contributors above 75 % of the cell)"
        );
        let plain: ColumnPolicy =
            serde_json::from_str(r#"{"role":"sensitive","bounds":[0,1]}"#).unwrap();
        assert_eq!(DisclosureRules::of(&plain), None);
        // Nothing new is written for a column without rules.
        let written = serde_json::to_string(&plain).unwrap();
        assert!(
            !written.contains("p_percent") && !written.contains("dominance"),
            "{written}"
        );
    }
}
