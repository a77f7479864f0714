//! Synthetic, seeded demo data for a Shanxi provincial data bureau.
//!
//! Veil is built for a bureau that holds public data it may let operators *use* but never
//! *see*. Demonstrations, benchmarks and end-to-end tests therefore need tables that look
//! like what such a bureau really holds, without holding a single real person's data. This
//! module writes two of them as Parquet files:
//!
//! * `social_insurance.parquet` — one row per person and year (2023–2025) of pension
//!   contributions, as the Provincial Department of Human Resources and Social Security
//!   would hold them. A person has one to three consecutive yearly records ending in 2025,
//!   so the table has several rows per privacy unit, which is exactly what the release
//!   gate's contribution bounding has to handle.
//! * `enterprise_registry.parquet` — market-regulation registrations whose legal
//!   representative is a person from the first table, so the two tables join on
//!   `legal_rep_id = person_id`. A few representatives hold more than one enterprise,
//!   again so that bounding per privacy unit matters after a join.
//!
//! The distributions are chosen to make aggregate queries answer plausibly rather than
//! uniformly: cities are weighted by their real population, coal mining is heavier in
//! Datong, Shuozhou, Lvliang and Jincheng, incomes are log-normal (right-skewed, median
//! near 4,800 yuan a month), and cumulative contribution months are consistent with age.
//! Nothing here is real data; the district and city names are real so that a bureau
//! officer recognises the shape of the tables.
//!
//! # Determinism and scale
//!
//! Everything is drawn from [`ChaCha8Rng`] seeded with the caller's seed, one stream per
//! table, so the same `(rows, seed)` gives byte-identical files on the same build and
//! platform. (Incomes go through `ln`, `cos` and `exp` from the platform's math library;
//! another platform may round one of them differently in the last bit.) Because each
//! person's draws are made before the row limit is checked, a smaller run is a prefix of
//! a larger one with the same seed.
//!
//! Rows are generated person by person and handed to the Parquet writer in batches of
//! [`BATCH_ROWS`], so only the current batch and the row group the writer is encoding are
//! ever in memory, whatever `rows` is; ten million rows and more are fine. Each file is
//! written under a temporary name, synced, renamed into place and the directory synced,
//! so a crash never leaves a half-written file under the real name.

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayBuilder, ArrayRef, Int32Builder, Int64Builder, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The seed the `veil` demo and the benchmarks use, so that everyone who runs them sees
/// the same tables and the same released numbers.
pub const DEMO_SEED: u64 = 20_261_123;

/// Rows handed to the Parquet writer at a time. This is the unit of memory the generator
/// holds itself; larger batches buy little speed and cost memory linearly.
pub const BATCH_ROWS: usize = 65_536;

/// Maximum rows per Parquet row group. Large row groups compress well and let DataFusion
/// prune by statistics; the writer keeps one encoded row group in memory, so this also
/// bounds the writer's share of memory.
pub const ROW_GROUP_ROWS_MAX: usize = 1_048_576;

// A row group must hold whole batches, or the writer would split batches and the row
// group boundaries would depend on more than these two constants.
const _: () = assert!(BATCH_ROWS > 0 && ROW_GROUP_ROWS_MAX.is_multiple_of(BATCH_ROWS));

/// The eleven prefecture-level cities of Shanxi, the public key set of every `city` column.
pub const SHANXI_CITIES: [&str; 11] = [
    "Taiyuan", "Datong", "Yangquan", "Changzhi", "Jincheng", "Shuozhou", "Jinzhong", "Yuncheng",
    "Xinzhou", "Linfen", "Lvliang",
];

/// Industries a person works in or an enterprise is registered under, the public key set
/// of every `industry` column.
pub const INDUSTRIES: [&str; 12] = [
    "Coal mining",
    "Manufacturing",
    "Construction",
    "Wholesale and retail",
    "Transport and logistics",
    "Education",
    "Health and social work",
    "Public administration",
    "Agriculture",
    "Information technology",
    "Finance",
    "Hospitality",
];

/// Credit ratings a market regulator assigns, the public key set of `credit_rating`.
const CREDIT_RATINGS: [&str; 4] = ["A", "B", "C", "D"];

/// Relative weight of each credit rating, in percent; most enterprises are in good standing.
const CREDIT_RATING_WEIGHTS: [u32; 4] = [45, 38, 12, 5];

/// Resident population of each city in hundreds of thousands (2020 census, rounded), in the
/// order of [`SHANXI_CITIES`]. A person's city is drawn in proportion to it.
const CITY_POPULATION_WEIGHTS: [u32; 11] = [54, 31, 13, 32, 22, 16, 34, 48, 27, 40, 34];

/// Real districts and counties of each city, in the order of [`SHANXI_CITIES`].
const DISTRICTS: [&[&str]; 11] = [
    &[
        "Xiaodian",
        "Yingze",
        "Xinghualing",
        "Jiancaoping",
        "Wanbailin",
        "Jinyuan",
    ],
    &[
        "Pingcheng",
        "Yungang",
        "Xinrong",
        "Yunzhou",
        "Yanggao",
        "Tianzhen",
    ],
    &["Chengqu", "Kuangqu", "Jiaoqu", "Pingding", "Yuxian"],
    &[
        "Luzhou",
        "Shangdang",
        "Tunliu",
        "Lucheng",
        "Xiangyuan",
        "Zhangzi",
    ],
    &[
        "Chengqu",
        "Gaoping",
        "Zezhou",
        "Yangcheng",
        "Qinshui",
        "Lingchuan",
    ],
    &[
        "Shuocheng",
        "Pinglu",
        "Huairen",
        "Shanyin",
        "Yingxian",
        "Youyu",
    ],
    &["Yuci", "Taigu", "Jiexiu", "Pingyao", "Qixian", "Lingshi"],
    &["Yanhu", "Yongji", "Hejin", "Linyi", "Wenxi", "Ruicheng"],
    &[
        "Xinfu",
        "Yuanping",
        "Dingxiang",
        "Wutai",
        "Daixian",
        "Kelan",
    ],
    &["Yaodu", "Houma", "Huozhou", "Xiangfen", "Hongtong", "Quwo"],
    &[
        "Lishi",
        "Xiaoyi",
        "Fenyang",
        "Wenshui",
        "Jiaocheng",
        "Liulin",
    ],
];

// Indices into SHANXI_CITIES and INDUSTRIES that the weighting below refers to by name.
const CITY_TAIYUAN: usize = 0;
const CITY_DATONG: usize = 1;
const CITY_YANGQUAN: usize = 2;
const CITY_CHANGZHI: usize = 3;
const CITY_JINCHENG: usize = 4;
const CITY_SHUOZHOU: usize = 5;
const CITY_YUNCHENG: usize = 7;
const CITY_XINZHOU: usize = 8;
const CITY_LINFEN: usize = 9;
const CITY_LVLIANG: usize = 10;
const INDUSTRY_COAL: usize = 0;
const INDUSTRY_PUBLIC_ADMINISTRATION: usize = 7;
const INDUSTRY_AGRICULTURE: usize = 8;
const INDUSTRY_IT: usize = 9;
const INDUSTRY_FINANCE: usize = 10;

/// Province-wide share of each industry among contributors, in percent, before the
/// city adjustments of [`industry_weights`].
const INDUSTRY_BASE_WEIGHTS: [u32; 12] = [4, 16, 12, 15, 7, 8, 6, 7, 10, 4, 3, 8];

/// How much each industry shifts the natural log of monthly income. The shifts roughly
/// cancel over the base weights, so the overall median stays near [`INCOME_MEDIAN_YUAN`].
const INDUSTRY_LOG_INCOME_SHIFT: [f64; 12] = [
    0.25, 0.0, 0.0, -0.1, 0.05, 0.1, 0.1, 0.15, -0.45, 0.4, 0.45, -0.25,
];

/// How much an enterprise's industry shifts the natural log of its registered capital and
/// of its head count: mines and factories are large, shops and farms small.
const INDUSTRY_LOG_SIZE_SHIFT: [f64; 12] = [
    1.5, 0.8, 0.6, -0.3, 0.2, -0.2, 0.0, 0.0, -0.3, 0.2, 0.3, 0.0,
];

/// Median monthly income in yuan around which incomes are drawn.
const INCOME_MEDIAN_YUAN: f64 = 4_800.0;
/// Spread of log income between persons; 0.6 gives a mean about a fifth above the median.
const INCOME_LOG_SIGMA: f64 = 0.6;
/// Spread of log income of one person from year to year.
const INCOME_YEAR_LOG_SIGMA: f64 = 0.05;
/// Yearly nominal wage growth, as a shift of log income per year.
const INCOME_LOG_GROWTH_PER_YEAR: f64 = 0.04;
const INCOME_YUAN_MIN: i64 = 1_000;
const INCOME_YUAN_MAX: i64 = 200_000;

/// The contribution years, consecutive and ending with the last one.
const YEAR_FIRST: i32 = 2023;
const YEAR_LAST: i32 = 2025;
/// Percent of persons with one, two and three yearly records; most contribute in all three.
const RECORD_COUNT_WEIGHTS: [u32; 3] = [12, 18, 70];

/// Birth-year bands `(first, last, weight)`: contributors are mostly of working age.
const BIRTH_YEAR_BANDS: [(i32, i32, u32); 6] = [
    (1950, 1959, 2),
    (1960, 1969, 12),
    (1970, 1979, 22),
    (1980, 1989, 26),
    (1990, 1999, 26),
    (2000, 2005, 8),
];
/// Youngest and oldest age at which a person's first job starts.
const WORK_START_AGE_MIN: i32 = 18;
const WORK_START_AGE_MAX: i32 = 24;
/// From this age on a person is retired and adds no contribution months.
const RETIREMENT_AGE: i32 = 60;
/// Per-mille range of the share of working months a person actually contributed.
const COVERAGE_PER_MILLE_MIN: i64 = 550;
const COVERAGE_PER_MILLE_MAX: i64 = 1_000;
/// Percent chance that a working person contributes all twelve months of a year.
const FULL_YEAR_PERCENT: u32 = 85;
const CONTRIBUTION_MONTHS_MAX: i32 = 480;

/// One person in this many is the legal representative of at least one enterprise; with
/// [`ENTERPRISES_PER_REP_WEIGHTS`] that gives about one enterprise per twenty persons.
const LEGAL_REP_ONE_IN: u32 = 24;
/// Percent of representatives holding one, two and three enterprises.
const ENTERPRISES_PER_REP_WEIGHTS: [u32; 3] = [85, 12, 3];
/// Percent chance an enterprise is registered in its representative's city, and in the
/// representative's own industry.
const SAME_CITY_PERCENT: u32 = 90;
const SAME_INDUSTRY_PERCENT: u32 = 75;
const ESTABLISHED_YEAR_MIN: i32 = 1985;
const ESTABLISHED_YEAR_MAX: i32 = 2025;
/// Median registered capital in units of 10,000 yuan, and its log spread.
const CAPITAL_MEDIAN_10K_YUAN: f64 = 50.0;
const CAPITAL_LOG_SIGMA: f64 = 1.5;
const CAPITAL_10K_YUAN_MIN: i64 = 1;
const CAPITAL_10K_YUAN_MAX: i64 = 100_000;
/// Median head count and its log spread.
const EMPLOYEES_MEDIAN: f64 = 8.0;
const EMPLOYEES_LOG_SIGMA: f64 = 1.3;
const EMPLOYEES_MIN: i64 = 1;
const EMPLOYEES_MAX: i64 = 5_000;

/// ChaCha stream numbers, one per table, so that the enterprise draws never shift the
/// person draws: changing how enterprises are generated leaves `social_insurance` intact.
const PERSON_STREAM: u64 = 1;
const ENTERPRISE_STREAM: u64 = 2;

const SOCIAL_INSURANCE_FILE: &str = "social_insurance.parquet";
const ENTERPRISE_REGISTRY_FILE: &str = "enterprise_registry.parquet";

/// What [`write_demo_data`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoDataSummary {
    /// Rows in `social_insurance.parquet`; always the `rows` asked for.
    pub social_insurance_rows: u64,
    /// Distinct persons in `social_insurance.parquet` (ids `1..=persons`).
    pub persons: u64,
    /// Rows in `enterprise_registry.parquet` (ids `1..=enterprises`).
    pub enterprises: u64,
    /// The files written, `social_insurance.parquet` first.
    pub files: Vec<PathBuf>,
}

/// Why the demo data could not be written. Every variant names the file concerned.
#[derive(Debug)]
pub enum DemoDataError {
    /// The file system refused: the directory could not be created, a file could not be
    /// written, synced or renamed.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The Parquet encoder failed, usually because writing to the file failed underneath.
    Parquet { path: PathBuf, source: ParquetError },
    /// A batch did not match its schema, which is a bug in this module.
    Arrow { path: PathBuf, source: ArrowError },
}

impl fmt::Display for DemoDataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoDataError::Io { path, source } => write!(
                f,
                "cannot write demo data at {}: {source}; choose an output directory that \
                 exists or can be created, is writable and has free space",
                path.display()
            ),
            DemoDataError::Parquet { path, source } => write!(
                f,
                "cannot encode Parquet file {}: {source}; check that the disk is not full \
                 and the directory is writable, otherwise report this as a bug",
                path.display()
            ),
            DemoDataError::Arrow { path, source } => write!(
                f,
                "cannot build a record batch for {}: {source}; the demo-data generator \
                 disagrees with its own schema, please report this as a bug",
                path.display()
            ),
        }
    }
}

impl std::error::Error for DemoDataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DemoDataError::Io { source, .. } => Some(source),
            DemoDataError::Parquet { source, .. } => Some(source),
            DemoDataError::Arrow { source, .. } => Some(source),
        }
    }
}

/// Writes `rows` social-insurance records, and the enterprises whose representatives are
/// among those persons, into `out_dir` (created if missing).
///
/// Existing files of the same names are replaced atomically. The same `(rows, seed)`
/// always writes the same bytes; use [`DEMO_SEED`] for the shared demo.
pub fn write_demo_data(
    rows: u64,
    out_dir: &Path,
    seed: u64,
) -> Result<DemoDataSummary, DemoDataError> {
    write_demo_data_with_progress(rows, out_dir, seed, &mut |_, _| {})
}

/// [`write_demo_data`], calling `progress(rows, bytes)` after each batch of social-insurance
/// records with the records and the Parquet bytes written so far (the row group being encoded
/// counted at the writer's estimate).
pub fn write_demo_data_with_progress(
    rows: u64,
    out_dir: &Path,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<DemoDataSummary, DemoDataError> {
    fs::create_dir_all(out_dir).map_err(|source| DemoDataError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;

    let mut person_rng = ChaCha8Rng::seed_from_u64(seed);
    person_rng.set_stream(PERSON_STREAM);
    let mut enterprise_rng = ChaCha8Rng::seed_from_u64(seed);
    enterprise_rng.set_stream(ENTERPRISE_STREAM);

    let person_industry: [[u32; 12]; 11] = std::array::from_fn(industry_weights);
    // Civil servants may not represent companies, so enterprises never draw that industry.
    let enterprise_industry: [[u32; 12]; 11] = std::array::from_fn(|city| {
        let mut weights = industry_weights(city);
        weights[INDUSTRY_PUBLIC_ADMINISTRATION] = 0;
        weights
    });

    let mut social = ParquetSink::create(out_dir, SOCIAL_INSURANCE_FILE, social_schema())?;
    let mut registry = ParquetSink::create(out_dir, ENTERPRISE_REGISTRY_FILE, enterprise_schema())?;
    let mut social_batch = SocialBatch::new();
    let mut enterprise_batch = EnterpriseBatch::new();

    // IDs are i64 because that is the column type; `rows` would need centuries of
    // generation before a counter could overflow.
    let mut written: u64 = 0;
    let mut record_id: i64 = 0;
    let mut person_id: i64 = 0;
    let mut enterprise_id: i64 = 0;

    while written < rows {
        person_id += 1;
        let person = Person::draw(&mut person_rng, &person_industry);
        let mut months = person.months_before_first_year;
        for year in person.first_year..=YEAR_LAST {
            // The draws for a year happen before the row limit is checked, so a truncated
            // last person consumes the same randomness as a whole one would have.
            months = person.months_after(year, months, &mut person_rng);
            let income = person.income(year, &mut person_rng);
            if written == rows {
                continue;
            }
            record_id += 1;
            written += 1;
            social_batch.push(record_id, person_id, &person, year, income, months);
            if social_batch.len() == BATCH_ROWS {
                social.write(social_batch.finish())?;
                let bytes = social.writer.bytes_written() + social.writer.in_progress_size();
                progress(written, bytes as u64);
            }
        }

        if enterprise_rng.random_range(0..LEGAL_REP_ONE_IN) == 0 {
            let count = pick(&mut enterprise_rng, &ENTERPRISES_PER_REP_WEIGHTS) + 1;
            for _ in 0..count {
                enterprise_id += 1;
                let enterprise =
                    Enterprise::draw(&mut enterprise_rng, &person, &enterprise_industry);
                enterprise_batch.push(enterprise_id, person_id, &enterprise);
                if enterprise_batch.len() == BATCH_ROWS {
                    registry.write(enterprise_batch.finish())?;
                }
            }
        }
    }
    if social_batch.len() > 0 {
        social.write(social_batch.finish())?;
    }
    if enterprise_batch.len() > 0 {
        registry.write(enterprise_batch.finish())?;
    }

    let social_path = social.commit()?;
    let registry_path = registry.commit()?;
    sync_dir(out_dir)?;

    Ok(DemoDataSummary {
        social_insurance_rows: written,
        persons: u64::try_from(person_id).unwrap_or(0),
        enterprises: u64::try_from(enterprise_id).unwrap_or(0),
        files: vec![social_path, registry_path],
    })
}

/// Industry weights of contributors living in `city`: the province-wide shares, with coal
/// heavier where the coal fields are, services heavier in the capital and farming heavier
/// in the southern basins and the northern uplands.
fn industry_weights(city: usize) -> [u32; 12] {
    let mut weights = INDUSTRY_BASE_WEIGHTS;
    match city {
        CITY_DATONG | CITY_SHUOZHOU | CITY_LVLIANG | CITY_JINCHENG => {
            weights[INDUSTRY_COAL] = 18;
        }
        CITY_YANGQUAN | CITY_CHANGZHI => weights[INDUSTRY_COAL] = 10,
        CITY_TAIYUAN => {
            weights[INDUSTRY_COAL] = 3;
            weights[INDUSTRY_IT] = 9;
            weights[INDUSTRY_FINANCE] = 6;
            weights[INDUSTRY_PUBLIC_ADMINISTRATION] = 9;
            weights[INDUSTRY_AGRICULTURE] = 4;
        }
        CITY_YUNCHENG | CITY_XINZHOU | CITY_LINFEN => weights[INDUSTRY_AGRICULTURE] = 16,
        _ => {}
    }
    weights
}

/// The attributes of one person that stay fixed across their yearly records.
struct Person {
    city: usize,
    district: &'static str,
    gender: &'static str,
    birth_year: i32,
    industry: usize,
    /// First contribution year on record; the records run from here to [`YEAR_LAST`].
    first_year: i32,
    /// Year in which the first job started.
    work_start_year: i32,
    /// Cumulative contribution months at the end of the year before `first_year`.
    months_before_first_year: i32,
    /// Natural log of this person's monthly income in [`YEAR_FIRST`].
    log_income: f64,
}

impl Person {
    fn draw(rng: &mut ChaCha8Rng, industry_by_city: &[[u32; 12]; 11]) -> Person {
        let city = pick(rng, &CITY_POPULATION_WEIGHTS);
        let districts = DISTRICTS[city];
        let district = districts[rng.random_range(0..districts.len())];
        let gender = if rng.random_range(0..100u32) < 51 {
            "M"
        } else {
            "F"
        };
        let band = BIRTH_YEAR_BANDS[pick(rng, &BIRTH_YEAR_BANDS.map(|(_, _, w)| w))];
        let birth_year = rng.random_range(band.0..=band.1);
        let industry = pick(rng, &industry_by_city[city]);
        let record_count = pick(rng, &RECORD_COUNT_WEIGHTS) as i32 + 1;
        let first_year = YEAR_LAST - record_count + 1;

        let work_start_year =
            birth_year + rng.random_range(WORK_START_AGE_MIN..=WORK_START_AGE_MAX);
        let coverage = rng.random_range(COVERAGE_PER_MILLE_MIN..=COVERAGE_PER_MILLE_MAX);
        // Months that could have been contributed before `first_year`, between the first
        // job and retirement, thinned by the person's coverage.
        let last_working_year = (first_year - 1).min(birth_year + RETIREMENT_AGE - 1);
        let possible_years = i64::from((last_working_year - work_start_year + 1).max(0));
        let months = (possible_years * 12 * coverage / 1_000) as i32;

        let log_income = (INCOME_MEDIAN_YUAN).ln()
            + INDUSTRY_LOG_INCOME_SHIFT[industry]
            + INCOME_LOG_SIGMA * standard_normal(rng);

        Person {
            city,
            district,
            gender,
            birth_year,
            industry,
            first_year,
            work_start_year,
            months_before_first_year: months.min(CONTRIBUTION_MONTHS_MAX),
            log_income,
        }
    }

    /// Cumulative contribution months at the end of `year`, given those at the end of the
    /// year before. A year adds at most twelve months, and none before the first job or
    /// after retirement, so the column stays consistent with age.
    fn months_after(&self, year: i32, months_before: i32, rng: &mut ChaCha8Rng) -> i32 {
        let full_year = rng.random_range(0..100u32) < FULL_YEAR_PERCENT;
        let partial = rng.random_range(0..12);
        let working = year >= self.work_start_year && year < self.birth_year + RETIREMENT_AGE;
        let added = match (working, full_year) {
            (false, _) => 0,
            (true, true) => 12,
            (true, false) => partial,
        };
        (months_before + added).min(CONTRIBUTION_MONTHS_MAX)
    }

    /// Monthly income in `year`, in yuan: the person's level, wage growth and a little
    /// yearly noise, clamped to what the bureau's records accept.
    fn income(&self, year: i32, rng: &mut ChaCha8Rng) -> i64 {
        let log = self.log_income
            + INCOME_LOG_GROWTH_PER_YEAR * f64::from(year - YEAR_FIRST)
            + INCOME_YEAR_LOG_SIGMA * standard_normal(rng);
        lognormal_to_int(log, INCOME_YUAN_MIN, INCOME_YUAN_MAX)
    }
}

/// One row of `enterprise_registry`, apart from its ids.
struct Enterprise {
    city: usize,
    industry: usize,
    established_year: i32,
    registered_capital: i64,
    employees: i64,
    credit_rating: &'static str,
}

impl Enterprise {
    fn draw(rng: &mut ChaCha8Rng, rep: &Person, industry_by_city: &[[u32; 12]; 11]) -> Enterprise {
        let city = if rng.random_range(0..100u32) < SAME_CITY_PERCENT {
            rep.city
        } else {
            pick(rng, &CITY_POPULATION_WEIGHTS)
        };
        let same_industry = rng.random_range(0..100u32) < SAME_INDUSTRY_PERCENT;
        let industry = if same_industry && rep.industry != INDUSTRY_PUBLIC_ADMINISTRATION {
            rep.industry
        } else {
            pick(rng, &industry_by_city[city])
        };
        // A representative must have been an adult when the enterprise was founded. The
        // square root skews foundings towards recent years, as in the real registry.
        let earliest = ESTABLISHED_YEAR_MIN.max(rep.birth_year + 18);
        let span = f64::from(ESTABLISHED_YEAR_MAX - earliest + 1);
        let offset = (span * rng.random::<f64>().sqrt()) as i32;
        let established_year = (earliest + offset).min(ESTABLISHED_YEAR_MAX);

        let size_shift = INDUSTRY_LOG_SIZE_SHIFT[industry];
        let registered_capital = lognormal_to_int(
            CAPITAL_MEDIAN_10K_YUAN.ln() + size_shift + CAPITAL_LOG_SIGMA * standard_normal(rng),
            CAPITAL_10K_YUAN_MIN,
            CAPITAL_10K_YUAN_MAX,
        );
        let employees = lognormal_to_int(
            EMPLOYEES_MEDIAN.ln() + size_shift + EMPLOYEES_LOG_SIGMA * standard_normal(rng),
            EMPLOYEES_MIN,
            EMPLOYEES_MAX,
        );
        let credit_rating = CREDIT_RATINGS[pick(rng, &CREDIT_RATING_WEIGHTS)];
        Enterprise {
            city,
            industry,
            established_year,
            registered_capital,
            employees,
            credit_rating,
        }
    }
}

/// Draws an index with probability proportional to its integer weight. Integer weights
/// keep the draw exact and identical on every platform.
fn pick(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut ticket = rng.random_range(0..total);
    for (index, &weight) in weights.iter().enumerate() {
        if ticket < weight {
            return index;
        }
        ticket -= weight;
    }
    // The tickets cover exactly `0..total`, so the loop always returns; the last index is
    // the only sensible answer should that ever change.
    weights.len() - 1
}

/// A standard normal draw by the Box–Muller transform, which needs nothing beyond the
/// seeded generator and so keeps the output reproducible without another crate.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // `1 - u` lies in (0, 1], so the logarithm is always finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `exp(log)` rounded to an integer and clamped to `[min, max]`.
fn lognormal_to_int(log: f64, min: i64, max: i64) -> i64 {
    // `as` saturates on overflow, and the clamp then brings the value into range.
    (log.exp().round() as i64).clamp(min, max)
}

fn social_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("record_id", DataType::Int64, false),
        Field::new("person_id", DataType::Int64, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("district", DataType::Utf8, false),
        Field::new("gender", DataType::Utf8, false),
        Field::new("birth_year", DataType::Int32, false),
        Field::new("industry", DataType::Utf8, false),
        Field::new("year", DataType::Int32, false),
        Field::new("monthly_income", DataType::Int64, false),
        Field::new("contribution_months", DataType::Int32, false),
    ]))
}

fn enterprise_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("enterprise_id", DataType::Int64, false),
        Field::new("legal_rep_id", DataType::Int64, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("industry", DataType::Utf8, false),
        Field::new("established_year", DataType::Int32, false),
        Field::new("registered_capital", DataType::Int64, false),
        Field::new("employees", DataType::Int32, false),
        Field::new("credit_rating", DataType::Utf8, false),
    ]))
}

/// Column builders for one batch of `social_insurance`.
struct SocialBatch {
    record_id: Int64Builder,
    person_id: Int64Builder,
    city: StringBuilder,
    district: StringBuilder,
    gender: StringBuilder,
    birth_year: Int32Builder,
    industry: StringBuilder,
    year: Int32Builder,
    monthly_income: Int64Builder,
    contribution_months: Int32Builder,
}

impl SocialBatch {
    fn new() -> SocialBatch {
        SocialBatch {
            record_id: Int64Builder::with_capacity(BATCH_ROWS),
            person_id: Int64Builder::with_capacity(BATCH_ROWS),
            city: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 8),
            district: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 8),
            gender: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS),
            birth_year: Int32Builder::with_capacity(BATCH_ROWS),
            industry: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 16),
            year: Int32Builder::with_capacity(BATCH_ROWS),
            monthly_income: Int64Builder::with_capacity(BATCH_ROWS),
            contribution_months: Int32Builder::with_capacity(BATCH_ROWS),
        }
    }

    fn len(&self) -> usize {
        self.record_id.len()
    }

    fn push(
        &mut self,
        record_id: i64,
        person_id: i64,
        person: &Person,
        year: i32,
        income: i64,
        months: i32,
    ) {
        self.record_id.append_value(record_id);
        self.person_id.append_value(person_id);
        self.city.append_value(SHANXI_CITIES[person.city]);
        self.district.append_value(person.district);
        self.gender.append_value(person.gender);
        self.birth_year.append_value(person.birth_year);
        self.industry.append_value(INDUSTRIES[person.industry]);
        self.year.append_value(year);
        self.monthly_income.append_value(income);
        self.contribution_months.append_value(months);
    }

    /// The columns built so far, in schema order; the builders start over empty.
    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.record_id.finish()),
            Arc::new(self.person_id.finish()),
            Arc::new(self.city.finish()),
            Arc::new(self.district.finish()),
            Arc::new(self.gender.finish()),
            Arc::new(self.birth_year.finish()),
            Arc::new(self.industry.finish()),
            Arc::new(self.year.finish()),
            Arc::new(self.monthly_income.finish()),
            Arc::new(self.contribution_months.finish()),
        ]
    }
}

/// Column builders for one batch of `enterprise_registry`.
struct EnterpriseBatch {
    enterprise_id: Int64Builder,
    legal_rep_id: Int64Builder,
    city: StringBuilder,
    industry: StringBuilder,
    established_year: Int32Builder,
    registered_capital: Int64Builder,
    employees: Int32Builder,
    credit_rating: StringBuilder,
}

impl EnterpriseBatch {
    fn new() -> EnterpriseBatch {
        // Enterprises arrive at a twentieth of the person rate, so a small initial
        // capacity avoids reserving memory that a short run never uses.
        let capacity = BATCH_ROWS / 16;
        EnterpriseBatch {
            enterprise_id: Int64Builder::with_capacity(capacity),
            legal_rep_id: Int64Builder::with_capacity(capacity),
            city: StringBuilder::with_capacity(capacity, capacity * 8),
            industry: StringBuilder::with_capacity(capacity, capacity * 16),
            established_year: Int32Builder::with_capacity(capacity),
            registered_capital: Int64Builder::with_capacity(capacity),
            employees: Int32Builder::with_capacity(capacity),
            credit_rating: StringBuilder::with_capacity(capacity, capacity),
        }
    }

    fn len(&self) -> usize {
        self.enterprise_id.len()
    }

    fn push(&mut self, enterprise_id: i64, legal_rep_id: i64, enterprise: &Enterprise) {
        self.enterprise_id.append_value(enterprise_id);
        self.legal_rep_id.append_value(legal_rep_id);
        self.city.append_value(SHANXI_CITIES[enterprise.city]);
        self.industry.append_value(INDUSTRIES[enterprise.industry]);
        self.established_year
            .append_value(enterprise.established_year);
        self.registered_capital
            .append_value(enterprise.registered_capital);
        // EMPLOYEES_MAX fits in an i32, so the clamped value always converts.
        self.employees
            .append_value(i32::try_from(enterprise.employees).unwrap_or(i32::MAX));
        self.credit_rating.append_value(enterprise.credit_rating);
    }

    /// The columns built so far, in schema order; the builders start over empty.
    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.enterprise_id.finish()),
            Arc::new(self.legal_rep_id.finish()),
            Arc::new(self.city.finish()),
            Arc::new(self.industry.finish()),
            Arc::new(self.established_year.finish()),
            Arc::new(self.registered_capital.finish()),
            Arc::new(self.employees.finish()),
            Arc::new(self.credit_rating.finish()),
        ]
    }
}

/// A Parquet file being written under a temporary name in its final directory. Until
/// [`ParquetSink::commit`] succeeds, dropping the sink deletes the temporary file, so a
/// failed run leaves neither a partial file nor litter behind.
struct ParquetSink {
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    final_path: PathBuf,
    temporary: TemporaryFile,
}

impl ParquetSink {
    fn create(dir: &Path, file_name: &str, schema: SchemaRef) -> Result<Self, DemoDataError> {
        let final_path = dir.join(file_name);
        let temporary_path = dir.join(format!(".{file_name}.tmp"));
        let file = File::create(&temporary_path).map_err(|source| DemoDataError::Io {
            path: temporary_path.clone(),
            source,
        })?;
        let temporary = TemporaryFile {
            path: temporary_path,
        };
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX))
            .build();
        let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(properties)).map_err(
            |source| DemoDataError::Parquet {
                path: temporary.path.clone(),
                source,
            },
        )?;
        Ok(ParquetSink {
            writer,
            schema,
            final_path,
            temporary,
        })
    }

    fn write(&mut self, columns: Vec<ArrayRef>) -> Result<(), DemoDataError> {
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|source| {
            DemoDataError::Arrow {
                path: self.temporary.path.clone(),
                source,
            }
        })?;
        self.writer
            .write(&batch)
            .map_err(|source| DemoDataError::Parquet {
                path: self.temporary.path.clone(),
                source,
            })
    }

    /// Finishes the file, makes it durable and moves it to its final name. The caller
    /// syncs the directory afterwards so that the rename itself is durable too.
    fn commit(self) -> Result<PathBuf, DemoDataError> {
        let ParquetSink {
            writer,
            final_path,
            temporary,
            ..
        } = self;
        let file = writer
            .into_inner()
            .map_err(|source| DemoDataError::Parquet {
                path: temporary.path.clone(),
                source,
            })?;
        file.sync_all().map_err(|source| DemoDataError::Io {
            path: temporary.path.clone(),
            source,
        })?;
        drop(file);
        fs::rename(&temporary.path, &final_path).map_err(|source| DemoDataError::Io {
            path: final_path.clone(),
            source,
        })?;
        // The temporary name no longer exists; nothing is left for the guard to delete.
        std::mem::forget(temporary);
        Ok(final_path)
    }
}

/// Deletes its file when dropped; see [`ParquetSink`].
struct TemporaryFile {
    path: PathBuf,
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        // Best effort: this runs only on a path that already failed, and the original
        // error is the one worth reporting.
        let _ = fs::remove_file(&self.path);
    }
}

/// Makes the renames in `dir` durable. Only Unix lets a directory be opened and synced;
/// elsewhere the rename is as durable as the platform makes it.
fn sync_dir(dir: &Path) -> Result<(), DemoDataError> {
    #[cfg(unix)]
    {
        let io_error = |source| DemoDataError::Io {
            path: dir.to_path_buf(),
            source,
        };
        File::open(dir)
            .map_err(io_error)?
            .sync_all()
            .map_err(io_error)?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Int32Type, Int64Type};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    fn read(path: &Path) -> Vec<RecordBatch> {
        let file = File::open(path).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(|batch| batch.unwrap())
            .collect()
    }

    fn i64_column(batches: &[RecordBatch], name: &str) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let column = b.column_by_name(name).unwrap().as_primitive::<Int64Type>();
                column.values().to_vec()
            })
            .collect()
    }

    fn i32_column(batches: &[RecordBatch], name: &str) -> Vec<i32> {
        batches
            .iter()
            .flat_map(|b| {
                let column = b.column_by_name(name).unwrap().as_primitive::<Int32Type>();
                column.values().to_vec()
            })
            .collect()
    }

    fn str_column(batches: &[RecordBatch], name: &str) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let column = b.column_by_name(name).unwrap().as_string::<i32>();
                column
                    .iter()
                    .map(|v| v.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn generate(rows: u64, seed: u64) -> (tempfile::TempDir, DemoDataSummary) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("demo");
        let summary = write_demo_data(rows, &out, seed).unwrap();
        (dir, summary)
    }

    #[test]
    fn same_rows_and_seed_give_identical_bytes() {
        let (_a, first) = generate(20_000, DEMO_SEED);
        let (_b, second) = generate(20_000, DEMO_SEED);
        let (_c, other_seed) = generate(20_000, DEMO_SEED + 1);
        assert_eq!(first.files.len(), 2);
        for i in 0..2 {
            let left = fs::read(&first.files[i]).unwrap();
            let right = fs::read(&second.files[i]).unwrap();
            assert!(
                left == right,
                "{} differs between runs",
                first.files[i].display()
            );
            assert!(left != fs::read(&other_seed.files[i]).unwrap());
        }
        assert_eq!(first.persons, second.persons);
        assert_eq!(first.enterprises, second.enterprises);
    }

    #[test]
    fn writes_exactly_the_rows_asked_for_across_batches() {
        let rows = 2 * BATCH_ROWS as u64 + 17;
        let (dir, summary) = generate(rows, 7);
        assert_eq!(summary.social_insurance_rows, rows);
        let social = read(&summary.files[0]);
        assert_eq!(
            social.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
            rows
        );
        let record_ids = i64_column(&social, "record_id");
        assert!(record_ids.iter().copied().eq(1..=rows as i64));
        let enterprises = read(&summary.files[1]);
        let enterprise_rows: usize = enterprises.iter().map(|b| b.num_rows()).sum();
        assert_eq!(enterprise_rows as u64, summary.enterprises);
        // About one enterprise per twenty persons.
        let ratio = summary.persons as f64 / summary.enterprises as f64;
        assert!(
            (15.0..25.0).contains(&ratio),
            "persons per enterprise {ratio}"
        );
        // Only the final files remain; the temporary names are gone.
        let names: HashSet<String> = fs::read_dir(dir.path().join("demo"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let expected: HashSet<String> = [SOCIAL_INSURANCE_FILE, ENTERPRISE_REGISTRY_FILE]
            .map(String::from)
            .into();
        assert_eq!(names, expected);
    }

    #[test]
    fn zero_and_one_rows_are_valid_files() {
        let (_dir, empty) = generate(0, DEMO_SEED);
        assert_eq!((empty.social_insurance_rows, empty.persons), (0, 0));
        assert_eq!(empty.enterprises, 0);
        assert!(read(&empty.files[0]).iter().all(|b| b.num_rows() == 0));
        let (_dir, one) = generate(1, DEMO_SEED);
        assert_eq!((one.social_insurance_rows, one.persons), (1, 1));
    }

    #[test]
    fn schemas_have_the_documented_columns() {
        let (_dir, summary) = generate(100, DEMO_SEED);
        let file = File::open(&summary.files[0]).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(builder.schema().as_ref(), social_schema().as_ref());
        let file = File::open(&summary.files[1]).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(builder.schema().as_ref(), enterprise_schema().as_ref());
    }

    #[test]
    fn a_smaller_run_is_a_prefix_of_a_larger_one() {
        let (_a, small) = generate(1_000, DEMO_SEED);
        let (_b, large) = generate(3_000, DEMO_SEED);
        let small_rows = read(&small.files[0]);
        let large_rows = read(&large.files[0]);
        for column in ["person_id", "monthly_income"] {
            let s = i64_column(&small_rows, column);
            assert_eq!(s[..], i64_column(&large_rows, column)[..s.len()]);
        }
    }

    #[test]
    fn every_person_has_one_to_three_consistent_yearly_records() {
        let (_dir, summary) = generate(30_000, DEMO_SEED);
        let social = read(&summary.files[0]);
        let persons = i64_column(&social, "person_id");
        let years = i32_column(&social, "year");
        let months = i32_column(&social, "contribution_months");
        let births = i32_column(&social, "birth_year");
        let cities = str_column(&social, "city");
        let districts = str_column(&social, "district");
        let genders = str_column(&social, "gender");
        let industries = str_column(&social, "industry");

        let mut records: HashMap<i64, Vec<usize>> = HashMap::new();
        for (row, person) in persons.iter().enumerate() {
            records.entry(*person).or_default().push(row);
        }
        assert_eq!(records.len() as u64, summary.persons);
        assert!(persons.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1));
        for (person, rows) in &records {
            assert!((1..=3).contains(&rows.len()), "person {person}");
            let first = rows[0];
            // Only the last person may be cut short of 2025.
            if *person != summary.persons as i64 {
                assert_eq!(years[*rows.last().unwrap()], YEAR_LAST);
            }
            for pair in rows.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                assert_eq!(years[b], years[a] + 1);
                assert!((0..=12).contains(&(months[b] - months[a])));
            }
            for &row in rows {
                assert!((YEAR_FIRST..=YEAR_LAST).contains(&years[row]));
                assert!((0..=CONTRIBUTION_MONTHS_MAX).contains(&months[row]));
                assert!((1950..=2005).contains(&births[row]));
                // Nobody contributes before the age of eighteen.
                let adult_years = (years[row] - births[row] - WORK_START_AGE_MIN + 1).max(0);
                assert!(months[row] <= adult_years * 12);
                assert_eq!(births[row], births[first]);
                assert_eq!(cities[row], cities[first]);
                assert_eq!(districts[row], districts[first]);
                assert_eq!(genders[row], genders[first]);
                assert_eq!(industries[row], industries[first]);
            }
        }
        assert!(genders.iter().all(|g| g == "F" || g == "M"));
        assert!(industries.iter().all(|i| INDUSTRIES.contains(&i.as_str())));
    }

    #[test]
    fn every_legal_rep_is_a_person_with_usually_the_same_city() {
        let (_dir, summary) = generate(40_000, DEMO_SEED);
        let social = read(&summary.files[0]);
        let registry = read(&summary.files[1]);
        let person_city: HashMap<i64, String> = i64_column(&social, "person_id")
            .into_iter()
            .zip(str_column(&social, "city"))
            .collect();
        let reps = i64_column(&registry, "legal_rep_id");
        let cities = str_column(&registry, "city");
        assert!(!reps.is_empty());
        let mut same_city = 0;
        for (rep, city) in reps.iter().zip(&cities) {
            let home = person_city.get(rep).expect("legal_rep_id is a person_id");
            same_city += usize::from(home == city);
        }
        assert!(same_city * 100 > reps.len() * 80);
        let ids = i64_column(&registry, "enterprise_id");
        assert!(ids.iter().copied().eq(1..=summary.enterprises as i64));

        let years = i32_column(&registry, "established_year");
        let capital = i64_column(&registry, "registered_capital");
        let employees = i32_column(&registry, "employees");
        let ratings = str_column(&registry, "credit_rating");
        assert!(years.iter().all(|y| (1985..=2025).contains(y)));
        assert!(capital.iter().all(|c| (1..=100_000).contains(c)));
        assert!(employees.iter().all(|e| (1..=5_000).contains(e)));
        assert!(ratings.iter().all(|r| CREDIT_RATINGS.contains(&r.as_str())));
        let good = ratings.iter().filter(|r| *r == "A" || *r == "B").count();
        assert!(good * 100 > ratings.len() * 70);
    }

    #[test]
    fn cities_and_districts_come_from_shanxi() {
        let (_dir, summary) = generate(20_000, DEMO_SEED);
        let social = read(&summary.files[0]);
        let cities = str_column(&social, "city");
        let districts = str_column(&social, "district");
        for (city, district) in cities.iter().zip(&districts) {
            let index = SHANXI_CITIES.iter().position(|c| c == city).unwrap();
            assert!(DISTRICTS[index].contains(&district.as_str()));
        }
        let seen: HashSet<&String> = cities.iter().collect();
        assert_eq!(seen.len(), SHANXI_CITIES.len());
        let registry = read(&summary.files[1]);
        let enterprise_cities = str_column(&registry, "city");
        assert!(
            enterprise_cities
                .iter()
                .all(|c| SHANXI_CITIES.contains(&c.as_str()))
        );
        // Taiyuan is the most populous city, Yangquan the least.
        let count = |name: &str| cities.iter().filter(|c| *c == name).count();
        assert!(count("Taiyuan") > count("Yangquan") * 3);
    }

    #[test]
    fn coal_mining_is_heavier_in_coal_cities() {
        let (_dir, summary) = generate(40_000, DEMO_SEED);
        let social = read(&summary.files[0]);
        let cities = str_column(&social, "city");
        let industries = str_column(&social, "industry");
        let coal_share = |city: &str| {
            let rows: Vec<_> = cities
                .iter()
                .zip(&industries)
                .filter(|(c, _)| *c == city)
                .collect();
            let coal = rows.iter().filter(|(_, i)| *i == "Coal mining").count();
            coal as f64 / rows.len() as f64
        };
        assert!(coal_share("Datong") > 2.0 * coal_share("Taiyuan"));
    }

    #[test]
    fn income_is_right_skewed_around_the_median() {
        let (_dir, summary) = generate(30_000, DEMO_SEED);
        let social = read(&summary.files[0]);
        let mut incomes = i64_column(&social, "monthly_income");
        assert!(
            incomes
                .iter()
                .all(|i| (INCOME_YUAN_MIN..=INCOME_YUAN_MAX).contains(i))
        );
        incomes.sort_unstable();
        let median = incomes[incomes.len() / 2] as f64;
        let mean = incomes.iter().sum::<i64>() as f64 / incomes.len() as f64;
        assert!(mean > median, "mean {mean} median {median}");
        assert!((4_000.0..6_000.0).contains(&median), "median {median}");
    }

    #[test]
    fn an_unwritable_directory_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-directory");
        fs::write(&blocker, b"").unwrap();
        let error = write_demo_data(10, &blocker.join("out"), DEMO_SEED).unwrap_err();
        assert!(matches!(error, DemoDataError::Io { .. }));
        assert!(error.to_string().contains("not-a-directory"));
    }
}
