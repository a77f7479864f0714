//! Registration as the bureau meets it: bad data is refused with what to fix, or registered
//! knowingly with its quality report; CSV files in GBK and with other delimiters; CSV errors
//! that name the line and the column; empty and header-only files. All through the `veil`
//! binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{self, Run};

/// Runs `veil` with `args`, with none of the caller's Veil settings in its environment.
fn veil<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = Command::new(support::veil_bin())
        .env_remove("VEIL_DATA_DIR")
        .env_remove("VEIL_CLOCK")
        .args(args)
        .output()
        .expect("run veil");
    Run::from(output)
}

/// A fresh store in a temporary folder.
struct Bureau {
    dir: tempfile::TempDir,
}

impl Bureau {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let bureau = Self { dir };
        let init = veil([
            OsStr::new("init"),
            OsStr::new("--data-dir"),
            bureau.store().as_os_str(),
        ]);
        assert_eq!(init.code, Some(0), "{init}");
        bureau
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Writes `bytes` to a file named `name` in the temporary folder.
    fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write a file");
        path
    }

    /// `veil dataset register --name NAME --file FILE --policy POLICY EXTRA…`.
    fn register(&self, name: &str, file: &Path, policy: &Path, extra: &[&str]) -> Run {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("dataset"),
            OsStr::new("register"),
            OsStr::new("--data-dir"),
        ];
        let store = self.store();
        args.push(store.as_os_str());
        args.extend([OsStr::new("--name"), OsStr::new(name), OsStr::new("--file")]);
        args.push(file.as_os_str());
        args.push(OsStr::new("--policy"));
        args.push(policy.as_os_str());
        args.extend(extra.iter().map(OsStr::new));
        veil(args)
    }

    fn show(&self, name: &str) -> Run {
        let store = self.store();
        let run = veil([
            OsStr::new("dataset"),
            OsStr::new("show"),
            OsStr::new("--data-dir"),
            store.as_os_str(),
            OsStr::new(name),
        ]);
        assert_eq!(run.code, Some(0), "{run}");
        run
    }

    /// Names of the registered datasets.
    fn datasets(&self) -> Vec<String> {
        let store = self.store();
        let run = veil([
            OsStr::new("dataset"),
            OsStr::new("list"),
            OsStr::new("--data-dir"),
            store.as_os_str(),
        ]);
        assert_eq!(run.code, Some(0), "{run}");
        run.stdout
            .lines()
            .skip_while(|line| !line.starts_with('─'))
            .skip(1)
            .filter(|line| !line.trim().is_empty() && *line != "(none)")
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

/// A policy for (person_id, city, income) with `keys` as the city key set.
fn policy(keys: &str) -> String {
    format!(
        r#"
provider = "Shanxi Provincial Department of Civil Affairs"
classification_level = 3
sharing = "conditional"
acquired_on = "2026-10-31"
privacy_unit = "person_id"
unit_kind = "person"
[columns.person_id]
role = "identifier"
[columns.city]
role = "quasi"
keys = {keys}
[columns.income]
role = "sensitive"
bounds = [0, 100000]
"#
    )
}

#[test]
fn a_misspelt_key_is_refused_naming_the_nearest_key_then_accepted_knowingly() {
    let bureau = Bureau::new();
    let mut csv = String::from("person_id,city,income\n");
    for person in 1..=30 {
        let city = if person % 3 == 0 { "Datong" } else { "Taiyuan" };
        csv.push_str(&format!("{person},{city},{}\n", 3000 + person));
    }
    // One income above the bounds: noted, clamped, never a refusal.
    csv.push_str("31,Datong,250000\n");
    let file = bureau.file("people.csv", csv);
    let policy = bureau.file(
        "people.toml",
        policy(r#"["Taiyaun", "Datong", "Yangquan"]"#),
    );

    let refused = bureau.register("people", &file, &policy, &[]);
    assert_eq!(refused.code, Some(2), "{refused}");
    assert!(
        refused.stderr.contains(
            "column `city`: 1 value(s) outside its key set, in 20 row(s): `Taiyuan` × 20 (nearest key `Taiyaun`)"
        ),
        "{refused}"
    );
    assert!(
        refused.stderr.contains("--accept-quality-issues"),
        "{refused}"
    );
    assert!(bureau.datasets().is_empty(), "nothing was registered");

    let accepted = bureau.register("people", &file, &policy, &["--accept-quality-issues"]);
    assert_eq!(accepted.code, Some(0), "{accepted}");
    assert!(
        accepted
            .stdout
            .contains("registered with these issues accepted"),
        "{accepted}"
    );
    // Not a terminal: no progress line on stderr.
    assert_eq!(accepted.stderr, "", "{accepted}");
    assert_eq!(bureau.datasets(), ["people"]);

    let show = bureau.show("people");
    for expected in [
        "the bureau registered it with the issues below accepted",
        "key set of `city`: 1 value(s) outside it, in 20 row(s); keys no row has: `Taiyaun`, `Yangquan`",
        "`Taiyuan` × 20: nearest key `Taiyaun` (2 edit(s))",
        "bounds of `income` [0, 100000]: 0 value(s) below, 1 above",
        "privacy unit `person_id`: 31 units; 0 row(s) without a unit",
        "rows per unit: min 1, median 1, 99th percentile 1, max 1",
        "nulls: none",
    ] {
        assert!(
            show.stdout.contains(expected),
            "`{expected}` not in:\n{show}"
        );
    }
}

#[test]
fn a_gbk_file_with_semicolons_registers_with_its_chinese_values_intact() {
    let bureau = Bureau::new();
    let text = "person_id;city;income\n1;太原;5000\n2;太原;6000\n3;大同;4000\n4;晋中;4500\n";
    let (gbk, _, unmappable) = encoding_rs::GBK.encode(text);
    assert!(!unmappable);
    let file = bureau.file("people.csv", &gbk);
    let policy = bureau.file("people.toml", policy(r#"["太原", "大同"]"#));

    // Read as UTF-8, the GBK bytes of 大同 are not text: the line, the column and the fix.
    let as_utf8 = bureau.register("people", &file, &policy, &["--delimiter", ";"]);
    assert_eq!(as_utf8.code, Some(2), "{as_utf8}");
    assert!(
        as_utf8.stderr.contains("line 4, column `city` (column 2)")
            && as_utf8.stderr.contains("--encoding gbk"),
        "{as_utf8}"
    );

    // Decoded, the values are what the provider wrote: 晋中 is outside the key set, by name.
    let decoded = ["--encoding", "gbk", "--delimiter", ";"];
    let refused = bureau.register("people", &file, &policy, &decoded);
    assert_eq!(refused.code, Some(2), "{refused}");
    assert!(
        refused.stderr.contains("`晋中` × 1 (nearest key `太原`)"),
        "{refused}"
    );

    let accepted = bureau.register(
        "people",
        &file,
        &policy,
        &[decoded.as_slice(), &["--accept-quality-issues"]].concat(),
    );
    assert_eq!(accepted.code, Some(0), "{accepted}");
    let show = bureau.show("people");
    assert!(
        show.stdout
            .contains("key set of `city`: 1 value(s) outside it, in 1 row(s)")
            && show.stdout.contains("`晋中` × 1: nearest key `太原`"),
        "{show}"
    );
    // 太原 and 大同 decoded to themselves, so they are in the key set, not outside it.
    assert!(
        !show.stdout.contains("`太原` ×") && !show.stdout.contains("`大同` ×"),
        "{show}"
    );
    assert!(!show.stdout.contains("keys no row has"), "{show}");
}

#[test]
fn a_row_without_a_privacy_unit_is_refused() {
    let bureau = Bureau::new();
    let file = bureau.file(
        "people.csv",
        "person_id,city,income\n1,Datong,5000\n,Datong,7000\n3,Datong,4000\n",
    );
    let policy = bureau.file("people.toml", policy(r#"["Datong"]"#));
    let refused = bureau.register("people", &file, &policy, &[]);
    assert_eq!(refused.code, Some(2), "{refused}");
    assert!(
        refused
            .stderr
            .contains("privacy unit `person_id`: 1 row(s) name no unit (1 null, 0 empty or blank)"),
        "{refused}"
    );
    assert!(bureau.datasets().is_empty());
}

#[test]
fn a_bad_csv_row_is_named_by_line_and_column() {
    let bureau = Bureau::new();
    let policy = bureau.file("people.toml", policy(r#"["Datong"]"#));

    // A row with a field too many, among the rows the types are inferred from.
    let extra = bureau.file(
        "extra.csv",
        "person_id,city,income\n1,Datong,5000\n2,Datong,7000,oops\n",
    );
    let run = bureau.register("extra", &extra, &policy, &[]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr.contains(
            "line 3: column 4 has no name in the header — expected 3 fields separated by `,`"
        ),
        "{run}"
    );

    // A value that does not fit the type the first rows gave its column, far down the file.
    let mut csv = String::from("person_id,city,income\n");
    for person in 1..=10_050 {
        let income = if person == 10_040 {
            "12x".to_string()
        } else {
            (1000 + person).to_string()
        };
        csv.push_str(&format!("{person},Datong,{income}\n"));
    }
    let late = bureau.file("late.csv", csv);
    let run = bureau.register("late", &late, &policy, &[]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains("line 10041, column `income` (column 3): expected an integer, found `12x`"),
        "{run}"
    );
    assert!(bureau.datasets().is_empty());
}

#[test]
fn empty_and_header_only_files_have_their_own_messages() {
    let bureau = Bureau::new();
    let policy = bureau.file("people.toml", policy(r#"["Datong"]"#));
    let empty = bureau.file("empty.csv", "");
    let run = bureau.register("empty", &empty, &policy, &[]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains("is empty; a CSV file needs a header row"),
        "{run}"
    );

    let header = bureau.file("header.csv", "person_id,city,income\n");
    let run = bureau.register("header", &header, &policy, &[]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains("has a header row (`person_id`, `city`, `income`) but no data rows"),
        "{run}"
    );

    // CSV options on a Parquet file are refused rather than ignored.
    let raw = bureau.dir.path().join("raw");
    let data = veil([
        OsStr::new("demo-data"),
        OsStr::new("--rows"),
        OsStr::new("200"),
        OsStr::new("--out"),
        raw.as_os_str(),
    ]);
    assert_eq!(data.code, Some(0), "{data}");
    let social_policy =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies/social_insurance.toml");
    let run = bureau.register(
        "social_insurance",
        &raw.join("social_insurance.parquet"),
        &social_policy,
        &["--encoding", "gbk"],
    );
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("apply to CSV files only"), "{run}");
    // And without them the demo data registers by default, its key sets covering it.
    let run = bureau.register(
        "social_insurance",
        &raw.join("social_insurance.parquet"),
        &social_policy,
        &[],
    );
    assert_eq!(run.code, Some(0), "{run}");
    let show = bureau.show("social_insurance");
    assert!(
        show.stdout
            .contains("key set of `city`: every value is in it"),
        "{show}"
    );
}

#[test]
fn a_store_from_before_quality_reports_is_upgraded_and_says_it_has_none() {
    let bureau = Bureau::new();
    let file = bureau.file("people.csv", "person_id,city,income\n1,Datong,5000\n");
    let policy = bureau.file("people.toml", policy(r#"["Datong"]"#));
    let run = bureau.register("people", &file, &policy, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    {
        // Back to version 6: no quality table.
        let conn = rusqlite::Connection::open(bureau.store().join("veil.db")).expect("open");
        conn.execute_batch(
            "DROP TABLE dataset_quality;
             UPDATE meta SET value = '6' WHERE key = 'schema_version';",
        )
        .expect("make it version 6");
    }
    let show = bureau.show("people");
    assert!(show.stdout.contains("no data-quality report"), "{show}");
    // The upgrade added the table: the next registration keeps its report.
    let run = bureau.register("people_again", &file, &policy, &[]);
    assert_eq!(run.code, Some(0), "{run}");
    let show = bureau.show("people_again");
    assert!(show.stdout.contains("nulls: none"), "{show}");
}
