//! The terms the bureau sets, as flags: one definition of each set, shared by the local
//! command and its `veil client` twin, so the two cannot drift apart.
//!
//! - [`ApprovalTerms`]: what `veil template approve` and `veil client template approve` pin
//!   on a template (ε and δ per run, k, contribution bounds, price, resource limits). Every
//!   default is the domain's own, [`ApprovalRequest::default`]; ε has none, because the
//!   bureau must choose how much privacy one run spends on purpose.
//! - [`GrantTerms`]: what `veil grant create` gives and `veil client request-grant` asks for
//!   (datasets, purpose, term, ε and δ per month, disposition).
//!
//! Each set converts to the domain's request type (for the local command) and to the SDK's
//! wire type (for the client). The wire type is built from the domain request, field by
//! field, so a term the domain adds is a compile error here rather than a silent default on
//! one path only.

use chrono::NaiveDate;
use clap::Args;

use veil_runtime::grants::{Disposition, GrantRequest};
use veil_runtime::templates::ApprovalRequest;
use veil_sdk::api::{ApproveTemplate, RequestGrant};

/// δ a grant gives per month unless told otherwise: ten runs at the default δ per run
/// ([`ApprovalRequest::default`]). A grant's δ must cover each run's δ, and an approval
/// requires δ above 0, so a grant with δ 0 would let no job run at all.
pub(crate) const DELTA_PER_MONTH_DEFAULT: f64 = 1e-5;

/// The bureau's approval of a template, as flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApprovalTerms {
    /// ε spent by one run (required: the bureau chooses it on purpose).
    #[arg(long)]
    pub epsilon: f64,
    /// δ spent by one run.
    #[arg(long, default_value_t = ApprovalRequest::default().delta)]
    pub delta: f64,
    /// Minimum distinct privacy units behind each released group.
    #[arg(long, default_value_t = ApprovalRequest::default().k)]
    pub k: u32,
    /// Most groups one unit may contribute to.
    #[arg(long, default_value_t = ApprovalRequest::default().max_groups)]
    pub max_groups: u32,
    /// Most rows one unit may contribute to one group.
    #[arg(long, default_value_t = ApprovalRequest::default().max_rows)]
    pub max_rows: u32,
    /// Price of one released run, in fen.
    #[arg(long, default_value_t = ApprovalRequest::default().price_per_run_fen)]
    pub price_fen: i64,
    /// Memory one run may use, in MiB.
    #[arg(long, default_value_t = ApprovalRequest::default().memory_mib)]
    pub memory_mib: u32,
    /// Wall-clock time one run's query may take, in seconds.
    #[arg(long, default_value_t = ApprovalRequest::default().wall_seconds)]
    pub wall_seconds: u32,
    /// WASM templates: fuel one unit's call may burn.
    #[arg(long, default_value_t = ApprovalRequest::default().wasm_fuel_per_unit)]
    pub wasm_fuel_per_unit: u64,
    /// WASM templates: memory one unit's instance may use, in MiB.
    #[arg(long, default_value_t = ApprovalRequest::default().wasm_memory_mib)]
    pub wasm_memory_mib: u32,
}

impl ApprovalTerms {
    /// The approval as the domain takes it (`veil_runtime::templates::approve`).
    pub(crate) fn request(&self) -> ApprovalRequest {
        ApprovalRequest {
            epsilon: self.epsilon,
            delta: self.delta,
            k: self.k,
            max_groups: self.max_groups,
            max_rows: self.max_rows,
            price_per_run_fen: self.price_fen,
            memory_mib: self.memory_mib,
            wall_seconds: self.wall_seconds,
            wasm_fuel_per_unit: self.wasm_fuel_per_unit,
            wasm_memory_mib: self.wasm_memory_mib,
        }
    }

    /// The same approval as an HTTP body. Every term is sent, so the server's fallbacks for
    /// missing fields never decide anything the command line did not.
    pub(crate) fn wire(&self) -> ApproveTemplate {
        let ApprovalRequest {
            epsilon,
            delta,
            k,
            max_groups,
            max_rows,
            price_per_run_fen,
            memory_mib,
            wall_seconds,
            wasm_fuel_per_unit,
            wasm_memory_mib,
        } = self.request();
        ApproveTemplate {
            epsilon: Some(epsilon),
            delta: Some(delta),
            k: Some(k),
            max_groups: Some(max_groups),
            max_rows: Some(max_rows),
            price_per_run_fen: Some(price_per_run_fen),
            memory_mib: Some(memory_mib),
            wall_seconds: Some(wall_seconds),
            wasm_fuel_per_unit: Some(wasm_fuel_per_unit),
            wasm_memory_mib: Some(wasm_memory_mib),
        }
    }
}

/// A grant's terms, as flags: what the bureau grants, or what an operator asks for. The
/// operator is not among them: the bureau names it locally, and the server takes it from the
/// applicant's key.
#[derive(Debug, Clone, Args)]
pub(crate) struct GrantTerms {
    /// Comma-separated dataset names.
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// What the data may be used for, and nothing else.
    #[arg(long)]
    pub purpose: String,
    /// First day of the term (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub valid_from: NaiveDate,
    /// Last day of the term (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date)]
    pub valid_to: NaiveDate,
    /// ε the grant's jobs may spend per month, all together.
    #[arg(long)]
    pub epsilon_per_month: f64,
    /// δ the grant's jobs may spend per month, all together; it must cover each run's δ.
    #[arg(long, default_value_t = DELTA_PER_MONTH_DEFAULT)]
    pub delta_per_month: f64,
    /// What happens to derived products after the term: destroy, archive or return.
    #[arg(long, value_parser = parse_disposition, default_value = Disposition::Archive.as_str())]
    pub disposition: Disposition,
}

impl GrantTerms {
    /// The grant for `operator`, as the domain takes it (`grants::create`, `grants::apply`).
    pub(crate) fn request(self, operator: String) -> GrantRequest {
        GrantRequest {
            operator,
            datasets: self.datasets,
            purpose: self.purpose,
            valid_from: self.valid_from,
            valid_to: self.valid_to,
            epsilon_per_month: self.epsilon_per_month,
            delta_per_month: self.delta_per_month,
            disposition: self.disposition,
        }
    }

    /// The same terms as the body of an operator's grant request.
    pub(crate) fn wire(self) -> RequestGrant {
        // The server names the operator from the applicant's key, so none is sent.
        let GrantRequest {
            operator: _,
            datasets,
            purpose,
            valid_from,
            valid_to,
            epsilon_per_month,
            delta_per_month,
            disposition,
        } = self.request(String::new());
        RequestGrant {
            datasets,
            purpose,
            valid_from: valid_from.to_string(),
            valid_to: valid_to.to_string(),
            epsilon_per_month,
            delta_per_month,
            disposition: disposition.as_str().to_string(),
        }
    }
}

fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| "write the date as YYYY-MM-DD".into())
}

fn parse_disposition(text: &str) -> Result<Disposition, String> {
    Disposition::parse(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};
    use veil_runtime::grants::to_pico;

    use crate::local::Cli;

    /// A command line of one flattened set, to parse it alone.
    #[derive(Debug, Parser)]
    struct Only<T: Args> {
        #[command(flatten)]
        terms: T,
    }

    /// Each flag of the command at `path` (but those in `besides`): its name, whether it is
    /// required, and its defaults.
    fn flags(path: &[&str], besides: &[&str]) -> Vec<(String, bool, Vec<String>)> {
        let mut command = Cli::command();
        command.build();
        let mut at = &command;
        for name in path {
            at = at
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("no subcommand `{name}` in {path:?}"));
        }
        let mut flags: Vec<_> = at
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(|long| (long, arg)))
            .filter(|(long, _)| !besides.contains(long) && *long != "help")
            .map(|(long, arg)| {
                (
                    long.to_string(),
                    arg.is_required_set(),
                    arg.get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect(),
                )
            })
            .collect();
        flags.sort();
        flags
    }

    #[test]
    fn both_approve_commands_take_the_same_flags_with_the_same_defaults() {
        let local = flags(&["template", "approve"], &["data-dir"]);
        let client = flags(
            &["client", "template", "approve"],
            &["url", "token", "json"],
        );
        assert_eq!(local, client);
        let epsilon = local.iter().find(|(name, ..)| name == "epsilon");
        assert_eq!(
            epsilon,
            Some(&("epsilon".to_string(), true, Vec::new())),
            "--epsilon is required, with no default"
        );
        assert_eq!(local.len(), 10, "{local:?}");
    }

    #[test]
    fn both_grant_commands_take_the_same_flags_with_the_same_defaults() {
        let local = flags(&["grant", "create"], &["data-dir", "operator"]);
        let client = flags(&["client", "request-grant"], &["url", "token", "json"]);
        assert_eq!(local, client);
        assert_eq!(local.len(), 7, "{local:?}");
    }

    #[test]
    fn approval_defaults_are_the_domains() {
        let parsed = Only::<ApprovalTerms>::try_parse_from(["x", "--epsilon", "0.5"])
            .expect("only --epsilon is needed");
        let expected = ApprovalRequest {
            epsilon: 0.5,
            ..ApprovalRequest::default()
        };
        assert_eq!(
            format!("{:?}", parsed.terms.request()),
            format!("{expected:?}")
        );
        let missing = Only::<ApprovalTerms>::try_parse_from(["x", "--k", "5"])
            .expect_err("--epsilon is required");
        assert_eq!(
            missing.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert!(missing.to_string().contains("--epsilon"), "{missing}");
    }

    #[test]
    fn the_wire_approval_sends_every_term_as_the_domain_takes_it() {
        let terms = Only::<ApprovalTerms>::try_parse_from(["x", "--epsilon", "0.25", "--k", "7"])
            .expect("parses")
            .terms;
        let request = terms.request();
        let wire = terms.wire();
        assert_eq!(wire.epsilon, Some(0.25));
        assert_eq!(wire.k, Some(7));
        assert_eq!(wire.delta, Some(request.delta));
        assert_eq!(wire.wasm_fuel_per_unit, Some(request.wasm_fuel_per_unit));
        assert_eq!(wire.wasm_memory_mib, Some(request.wasm_memory_mib));
    }

    #[test]
    fn a_grant_with_the_default_delta_covers_runs_at_the_default_delta() {
        let terms = Only::<GrantTerms>::try_parse_from([
            "x",
            "--datasets",
            "a,b",
            "--purpose",
            "statistics",
            "--valid-from",
            "2025-01-01",
            "--valid-to",
            "2025-12-31",
            "--epsilon-per-month",
            "2",
        ])
        .expect("parses")
        .terms;
        let per_month = to_pico(terms.delta_per_month, "δ per month").expect("valid δ");
        let per_run = to_pico(ApprovalRequest::default().delta, "δ per run").expect("valid δ");
        assert!(per_run.0 > 0);
        assert_eq!(
            per_month.0 / per_run.0,
            10,
            "ten runs a month at the default δ"
        );
        let wire = terms.clone().wire();
        assert_eq!(wire.delta_per_month, DELTA_PER_MONTH_DEFAULT);
        assert_eq!(wire.disposition, "archive");
        assert_eq!(wire.valid_from, "2025-01-01");
        assert_eq!(wire.datasets, ["a", "b"]);
        let request = terms.request("op".into());
        assert_eq!(request.disposition, Disposition::Archive);
    }

    #[test]
    fn a_bad_date_or_disposition_is_refused_naming_the_flag() {
        let base = [
            "x",
            "--datasets",
            "a",
            "--purpose",
            "p",
            "--valid-to",
            "2025-12-31",
            "--epsilon-per-month",
            "1",
        ];
        let date = Only::<GrantTerms>::try_parse_from(base.iter().chain(&["--valid-from", "1/2"]))
            .expect_err("not a date");
        assert!(date.to_string().contains("--valid-from"), "{date}");
        assert!(date.to_string().contains("YYYY-MM-DD"), "{date}");
        let disposition = Only::<GrantTerms>::try_parse_from(base.iter().chain(&[
            "--valid-from",
            "2025-01-01",
            "--disposition",
            "keep",
        ]))
        .expect_err("no such disposition");
        assert!(
            disposition.to_string().contains("--disposition"),
            "{disposition}"
        );
        assert!(
            disposition
                .to_string()
                .contains("destroy, archive or return"),
            "{disposition}"
        );
    }
}
