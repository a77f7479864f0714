"""The utility benchmark's OpenDP side: the DP aggregate benchmark's query through OpenDP's
own Polars API, run many times on the same Parquet file, scored against the true answer.

Run it through ``examples/utility/run_opendp.sh ROWS RUNS``, which creates the virtual
environment with the pinned ``opendp[polars]``. The file is
``target/bench-data/ROWS/social_insurance.parquet``, the table ``bench_dp_aggregate`` and
``bench_utility`` generate (or pass ``--file``).

The query, as Veil's benchmark template states it::

    SELECT city, gender, COUNT(DISTINCT person_id) AS persons, AVG(monthly_income) AS avg_income
    FROM social_insurance GROUP BY city, gender

approved with ε = 1, δ = 10⁻⁶, k = 10, at most 1 group and 3 rows per person, and
``monthly_income`` bounded to [0, 100000] by the dataset's policy.

How the two are made comparable
-------------------------------

*The privacy unit.* Veil's unit is the person (``person_id``), whatever number of rows a
person has. OpenDP's Context gets the same unit: ``dp.unit_of(contributions=1,
identifier="person_id")``, every row sharing an identifier belongs to one individual.

*Contribution bounds.* Veil's approval lets a person reach at most 1 group with at most 3
rows in it (``max_groups = 1``, ``max_rows = 3``), and enforces it in the gate. This table has
1 to 3 rows per person (one per contribution year) and one city and gender per person, so
Veil's bounding drops nothing; the script checks both facts on the data and refuses to run on
a table where they fail. OpenDP is told the same: the rows of a person and group become one
row (``group_by(person_id, city, gender)``, OpenDP's identifier truncation) holding the
person's row count ``n`` and the sum ``s`` of their clamped incomes, which the noisy sums below
clip to [0, 3] and [0, 3 × 100000], what ``max_rows = 3`` allows; and the privacy unit declares
that a person reaches one (city, gender) group (``dp.polars.Bound(by=[city, gender],
num_groups=1)``). OpenDP's recommended way to bound groups, ``truncate_num_groups(1, …)``,
cannot be used: in OpenDP 0.16 with Polars 1.36 it filters on Polars' dense rank, which
starts at 1, with ``rank < k``, so ``k = 1`` keeps no row at all (every count is pure noise),
and ``k = 2`` keeps one group but is accounted as two (twice the noise). Declaring the bound
gives the noise scales a working truncation to one group would (checked with
``summarize``: 3, 900000 and 9 at ε = 1).

*The released measures.* Per group, OpenDP releases ``dp.len()`` (distinct persons,
sensitivity 1), ``s.dp.sum((0, 300000))`` and ``n.dp.sum((0, 3))``: the same three noisy
quantities, with the same sensitivities, as Veil's gate draws for ``COUNT(DISTINCT
person_id)`` and ``AVG`` (noisy sum over noisy row count). The average is their ratio, taken
after release (post-processing). OpenDP divides ε evenly over the three.

*Public keys.* Veil's policy declares the 11 cities and 2 genders as public key sets, so every
one of the 22 groups is a row and no threshold is spent. OpenDP's equivalent is
``.with_keys(keys)`` on the 22 keys: the result is joined onto the public key set, and OpenDP
then needs no threshold and spends no δ (its summary shows no threshold column). δ = 10⁻⁶ is
still passed to the Context, as Veil's approval sets it.

*ε per run.* Each run is one fresh Context with ε = 1, as each Veil job spends ε = 1 of its
grant. OpenDP draws its noise from the operating system's randomness; the runs are
independent.

Scoring, per run: the mean over the 22 groups of the relative error |released − true| / true,
for the counts and for the averages; over all runs, the mean of those. Coverage: the share of
cells whose true value lies in a 95 % interval built from OpenDP's own accuracy figure
(``summarize(alpha=…)``): for a count, released ± its accuracy at α = 0.05; for an average,
``[(s − a_s) / (n + a_n), (s + a_s) / (n − a_n)]`` with ``a_s`` and ``a_n`` the accuracies of the
sum and the count at α = 0.025 each, so that by the union bound the interval holds with at
least 95 % (a conservative interval: between 95 % and 100 %; about 97.5 % here, where the
sum's noise dominates the count's).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
from pathlib import Path

import opendp.prelude as dp
import polars as pl

dp.enable_features("contrib")
OPENDP_VERSION = importlib.metadata.version("opendp")

# The DP aggregate benchmark's approval and the social-insurance policy's bounds.
EPSILON = 1.0
DELTA = 1e-6
INCOME_BOUNDS = (0, 100_000)
MAX_GROUPS_PER_PERSON = 1
MAX_ROWS_PER_PERSON = 3
# The public key sets of examples/policies/social_insurance.toml.
CITIES = [
    "Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou",
    "Jinzhong", "Yuncheng", "Xinzhou", "Linfen", "Lvliang",
]
GENDERS = ["F", "M"]
BY = ["city", "gender"]
# The 95 % intervals: α for a count; half of it for each of an average's two parts.
ALPHA = 0.05


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="?", type=int, default=10_000_000,
                        help="rows of the bench table (default 10000000)")
    parser.add_argument("runs", nargs="?", type=int, default=20,
                        help="releases to score (default 20, at least 20 for a figure)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2],
                        help="the repository (default: two folders up)")
    parser.add_argument("--file", type=Path, default=None,
                        help="the Parquet file (default target/bench-data/ROWS/social_insurance.parquet)")
    return parser.parse_args()


def check_bounds(lf: pl.LazyFrame) -> None:
    """Says whether the approval's contribution bounds drop any row of this table."""
    per_person = lf.group_by("person_id").agg(
        rows=pl.len(), groups=pl.struct(BY).n_unique()
    )
    summary = per_person.select(
        persons=pl.len(),
        rows_max=pl.col("rows").max(),
        groups_max=pl.col("groups").max(),
    ).collect()
    persons, rows_max, groups_max = summary.row(0)
    histogram = per_person.group_by("rows").agg(persons=pl.len()).sort("rows").collect()
    shares = ", ".join(f"{r} row(s): {p}" for r, p in histogram.iter_rows())
    print(f"persons: {persons}; rows per person: {shares}; most groups per person: {groups_max}")
    if rows_max > MAX_ROWS_PER_PERSON or groups_max > MAX_GROUPS_PER_PERSON:
        # The privacy unit below declares these bounds instead of enforcing them; on a table
        # that breaks them the release would not be ε-DP, so it is not run.
        sys.exit(
            f"a person has {rows_max} rows or {groups_max} groups, more than the "
            f"{MAX_ROWS_PER_PERSON} rows and {MAX_GROUPS_PER_PERSON} group the comparison "
            "assumes; this script fits only the bench table"
        )


def true_answer(lf: pl.LazyFrame) -> pl.DataFrame:
    """The exact answer: distinct persons and the average clamped income per group."""
    return (
        lf.group_by(BY)
        .agg(
            true_persons=pl.col("person_id").n_unique().cast(pl.Float64),
            true_avg=pl.col("monthly_income").clip(*INCOME_BOUNDS).cast(pl.Float64).mean(),
        )
        .collect()
    )


def query(lf: pl.LazyFrame, keys: pl.LazyFrame):
    """One ε = 1 release of the benchmark's query, in a fresh Context."""
    context = dp.Context.compositor(
        data=lf,
        # One identifier per person, and (checked on the data by `check_bounds`) one city
        # and gender per person: see "Contribution bounds" in the module's docs for why this
        # is declared here rather than truncated.
        privacy_unit=dp.unit_of(
            contributions=[
                dp.polars.Bound(per_group=1),
                dp.polars.Bound(by=BY, num_groups=MAX_GROUPS_PER_PERSON),
            ],
            identifier="person_id",
        ),
        privacy_loss=dp.loss_of(epsilon=EPSILON, delta=DELTA),
        split_evenly_over=1,
        # OpenDP needs a bound on a group's rows for sums; the table's size is always one.
        margins=[dp.polars.Margin(max_length=lf.select(pl.len()).collect().item())],
    )
    income = pl.col("monthly_income").clip(*INCOME_BOUNDS)
    return (
        context.query()
        .group_by("person_id", *BY)
        .agg(n=pl.len(), s=income.sum())
        .group_by(BY)
        .agg(
            dp.len(signed=True).alias("persons"),
            pl.col("s").dp.sum((0, MAX_ROWS_PER_PERSON * INCOME_BOUNDS[1])),
            pl.col("n").dp.sum((0, MAX_ROWS_PER_PERSON)),
        )
        .with_keys(keys)
    )


def accuracies(q) -> dict[tuple[str, float], float]:
    """OpenDP's accuracy of each released column at the α each interval uses."""
    found = {}
    for alpha in (ALPHA, ALPHA / 2):
        for row in q.summarize(alpha=alpha).iter_rows(named=True):
            found[(row["column"], alpha)] = row["accuracy"]
    return found


def main() -> None:
    args = parse_args()
    if args.runs < 1:
        sys.exit("RUNS must be at least 1")
    path = args.file or args.root / "target" / "bench-data" / str(args.rows) / "social_insurance.parquet"
    if not path.exists():
        sys.exit(
            f"{path} does not exist: generate it first, e.g. with "
            f"`cargo run -p veil-examples --example bench_utility -- {args.rows} 1`"
        )
    lf = pl.scan_parquet(path)
    keys = pl.DataFrame({"city": CITIES}).join(pl.DataFrame({"gender": GENDERS}), how="cross").lazy()

    print(f"file: {path}")
    print(f"opendp {OPENDP_VERSION}, polars {pl.__version__}")
    check_bounds(lf)
    truth = true_answer(lf)
    plan = query(lf, keys)
    print("OpenDP's plan (one run):")
    print(plan.summarize(alpha=ALPHA))
    accuracy = accuracies(plan)

    count_errors, avg_errors = [], []
    count_cells = count_inside = avg_cells = avg_inside = 0
    started = time.monotonic()
    for run in range(args.runs):
        released = query(lf, keys).release().collect()
        joined = released.join(truth, on=BY, how="left").with_columns(
            avg=pl.col("s") / pl.col("n"),
        )
        if joined.height != len(CITIES) * len(GENDERS):
            sys.exit(f"run {run}: {joined.height} groups released, expected 22")
        if joined["true_persons"].null_count() > 0:
            sys.exit(f"run {run}: a released group has no true value (a group without rows)")
        count_rel = ((joined["persons"] - joined["true_persons"]).abs() / joined["true_persons"]).mean()
        avg_rel = ((joined["avg"] - joined["true_avg"]).abs() / joined["true_avg"]).mean()
        count_errors.append(count_rel)
        avg_errors.append(avg_rel)

        a_count = accuracy[("persons", ALPHA)]
        a_s, a_n = accuracy[("s", ALPHA / 2)], accuracy[("n", ALPHA / 2)]
        for row in joined.iter_rows(named=True):
            count_cells += 1
            count_inside += abs(row["persons"] - row["true_persons"]) <= a_count
            avg_cells += 1
            low = (row["s"] - a_s) / (row["n"] + a_n)
            high = (row["s"] + a_s) / (row["n"] - a_n) if row["n"] > a_n else float("inf")
            avg_inside += low <= row["true_avg"] <= high
        print(f"run {run}: mean relative error: counts {count_rel:.6%}, averages {avg_rel:.6%}",
              file=sys.stderr)
    seconds = (time.monotonic() - started) / args.runs

    print(f"rows: {args.rows}, runs: {args.runs}, ε = {EPSILON}, δ = {DELTA} "
          f"({seconds:.2f} s per run)")
    print("| side | counts: mean relative error | averages: mean relative error "
          "| cells inside their 95 % interval |")
    print("|---|---|---|---|")
    print(
        f"| OpenDP {OPENDP_VERSION} (Polars API) | {statistics.mean(count_errors):.5%} "
        f"(runs {min(count_errors):.5%}–{max(count_errors):.5%}) "
        f"| {statistics.mean(avg_errors):.5%} "
        f"(runs {min(avg_errors):.5%}–{max(avg_errors):.5%}) "
        f"| counts {count_inside / count_cells:.1%}, averages {avg_inside / avg_cells:.1%} "
        f"(of {count_cells} each; averages' interval by the union bound) |"
    )


if __name__ == "__main__":
    main()
