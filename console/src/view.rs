//! What every page shares: its frame (title, navigation, the signed-in principal, the CSRF
//! token for its forms), the error page, and small formatting helpers.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use veil_runtime::error::Error;
use veil_runtime::principals::{Principal, Role};
use veil_sdk::api::{ErrorBody, Violation};

/// The signed-in principal behind a console request, with its session's CSRF token (read
/// from the session cookie by `session`).
#[derive(Debug, Clone)]
pub struct Signed {
    pub principal: Principal,
    pub csrf: String,
}

/// The frame of a page: `base.html` reads it.
#[derive(Debug, Clone)]
pub struct Page {
    /// The page's `<title>` and its one `<h1>`.
    pub title: String,
    /// The signed-in principal's name and role, if any.
    pub who: Option<(String, &'static str)>,
    /// Links in the navigation bar: (href, label, current).
    pub nav: Vec<(&'static str, &'static str, bool)>,
    /// The token every form on the page carries.
    pub csrf: String,
}

impl Page {
    /// A page for a signed-in principal; `here` is the navigation link to mark as current.
    pub fn new(title: impl Into<String>, who: &Signed, here: &str) -> Self {
        let role = who.principal.role;
        let nav = nav_of(role)
            .iter()
            .map(|&(href, label)| (href, label, href == here))
            .collect();
        Self {
            title: title.into(),
            who: Some((who.principal.name.clone(), role.as_str())),
            nav,
            csrf: who.csrf.clone(),
        }
    }

    /// A page before sign-in.
    pub fn anonymous(title: impl Into<String>, csrf: String) -> Self {
        Self {
            title: title.into(),
            who: None,
            nav: Vec::new(),
            csrf,
        }
    }
}

fn nav_of(role: Role) -> &'static [(&'static str, &'static str)] {
    match role {
        Role::Bureau => &[
            ("/console/bureau/queue", "Approvals 审批"),
            ("/console/bureau/catalog", "Catalog 目录"),
            ("/console/jobs", "Jobs 作业"),
            ("/console/bureau/money", "Money 结算"),
            ("/console/bureau/disputes", "Disputes 争议"),
            ("/console/bureau/corrections", "Corrections 纠错"),
            ("/console/bureau/incidents", "Incidents 应急"),
            ("/console/bureau/audit", "Audit 审计"),
            ("/console/bureau/principals", "Principals 主体"),
        ],
        Role::Operator => &[
            ("/console/operator", "Templates 模板"),
            ("/console/jobs", "Jobs 作业"),
        ],
        Role::Buyer => &[
            ("/console/store", "Store 数据产品"),
            ("/console/purchases", "Purchases 已购"),
        ],
        Role::Provider => &[("/console/provider", "Usage 使用")],
    }
}

/// Renders a page; a template that fails to render is the console's fault, said plainly.
pub fn render<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(_) => Failure::internal("rendering a page").into_response(),
    }
}

/// Why a console request could not be done, as the page that says so.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
    violations: Vec<Violation>,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            violations: Vec::new(),
        }
    }

    /// An address that is no console page.
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: "there is no such page in the console; start again from its home page".into(),
            violations: Vec::new(),
        }
    }

    /// A form posted without the session's CSRF token.
    pub fn csrf() -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: "this form was sent without its security token (CSRF), so nothing was done; reload the page and submit it again".into(),
            violations: Vec::new(),
        }
    }

    /// The platform's own fault: a fixed sentence (the detail goes nowhere near the page).
    pub fn internal(what: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!(
                "the console failed while {what}; try again, and tell the bureau if it persists"
            ),
            violations: Vec::new(),
        }
    }

    /// A page for a role that is not the caller's.
    pub fn forbidden(what: &str, roles: &str) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: format!("{what} is for {roles} only"),
            violations: Vec::new(),
        }
    }

    /// Its status, message and rules, for a page that shows it in place.
    pub fn parts(self) -> (StatusCode, String, Vec<Violation>) {
        (self.status, self.message, self.violations)
    }

    /// An error the API answered with, as its client would read it.
    pub fn from_api(status: StatusCode, body: ErrorBody) -> Self {
        Self {
            status,
            message: body.message,
            violations: body.violations,
        }
    }
}

impl From<Error> for Failure {
    /// A domain error from a direct call, mapped exactly as the API maps it (status, message,
    /// rules; a fixed sentence for the platform's own faults).
    fn from(error: Error) -> Self {
        let (status, body) = veil_server::error::ApiError::Domain(error).to_body();
        Self::from_api(status, body)
    }
}

#[derive(Template)]
#[template(path = "failure.html")]
struct FailurePage<'a> {
    page: Page,
    message: &'a str,
    violations: &'a [Violation],
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let title = match self.status.as_u16() {
            403 => "Refused 拒绝",
            404 => "Not found 未找到",
            400..=499 => "Cannot do that 无法执行",
            _ => "Something failed 出错",
        };
        let page = FailurePage {
            page: Page::anonymous(title, String::new()),
            message: &self.message,
            violations: &self.violations,
        };
        let mut response = render(&page);
        *response.status_mut() = self.status;
        response
    }
}

/// A refusal shown in place on the page that was posted (its message, its rules and the
/// status the page answers with); no refusal: nothing shown, 200.
pub fn in_place(error: Option<Failure>) -> (Option<String>, Vec<Violation>, StatusCode) {
    match error {
        Some(failure) => {
            let (status, message, rules) = failure.parts();
            (Some(message), rules, status)
        }
        None => (None, Vec::new(), StatusCode::OK),
    }
}

/// Refuses a page to a principal whose role is not `role`.
pub fn require(who: &Signed, what: &str, role: Role) -> Result<(), Failure> {
    if who.principal.role == role {
        Ok(())
    } else {
        Err(Failure::forbidden(what, role.as_str()))
    }
}

/// Money as a reader writes it: yuan with two decimals, from integer fen (by value or by
/// reference, as a template has it).
pub fn yuan(fen: impl Integer) -> String {
    let fen = fen.value();
    let sign = if fen < 0 { "-" } else { "" };
    let fen = fen.unsigned_abs();
    format!("{sign}¥{}.{:02}", fen / 100, fen % 100)
}

/// ε from integer millionths, to six decimals (the ledger's own precision).
pub fn epsilon(micro: impl Integer) -> String {
    let micro = micro.value();
    format!("{}.{:06}", micro / 1_000_000, (micro % 1_000_000).abs())
}

/// δ from integer trillionths.
pub fn delta(pico: impl Integer) -> String {
    format!("{:e}", pico.value() as f64 / 1e12)
}

/// An integer amount however many references deep a template holds it.
pub trait Integer {
    fn value(&self) -> i64;
}

impl Integer for i64 {
    fn value(&self) -> i64 {
        *self
    }
}

impl<T: Integer + ?Sized> Integer for &T {
    fn value(&self) -> i64 {
        (**self).value()
    }
}

/// One piece of highlighted SQL: a CSS class (empty for plain text) and the text, which the
/// template escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub class: &'static str,
    pub text: String,
}

const SQL_KEYWORDS: &[&str] = &[
    "select", "from", "where", "group", "by", "order", "having", "join", "inner", "left", "right",
    "outer", "on", "and", "or", "not", "as", "count", "sum", "avg", "min", "max", "distinct",
    "case", "when", "then", "else", "end", "in", "between", "is", "null", "limit", "with", "union",
    "all", "like", "cast", "asc", "desc",
];

/// Splits SQL into keywords, strings, numbers, parameters, comments and the rest, for
/// highlighting; the pieces put together are the SQL exactly.
pub fn highlight_sql(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out: Vec<Token> = Vec::new();
    let mut push = |class: &'static str, text: String| match out.last_mut() {
        Some(last) if last.class == class && class.is_empty() => last.text.push_str(&text),
        _ => out.push(Token { class, text }),
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            push("sql-comment", chars[start..i].iter().collect());
        } else if c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i = (i + 1).min(chars.len());
            push("sql-string", chars[start..i].iter().collect());
        } else if c == '$' || c == ':' && chars.get(i + 1).is_some_and(|n| n.is_alphabetic()) {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            push("sql-param", chars[start..i].iter().collect());
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            push("sql-number", chars[start..i].iter().collect());
        } else if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let class = if SQL_KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                "sql-keyword"
            } else {
                ""
            };
            push(class, word);
        } else {
            i += 1;
            push("", c.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlighted_sql_puts_back_together_exactly() {
        let sql = "SELECT city, COUNT(*) AS n -- people\nFROM t WHERE year = $year AND name = 'a<b>' GROUP BY city";
        let tokens = highlight_sql(sql);
        let joined: String = tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(joined, sql);
        assert!(
            tokens
                .iter()
                .any(|t| t.class == "sql-keyword" && t.text == "SELECT")
        );
        assert!(
            tokens
                .iter()
                .any(|t| t.class == "sql-param" && t.text == "$year")
        );
        assert!(
            tokens
                .iter()
                .any(|t| t.class == "sql-string" && t.text == "'a<b>'")
        );
        assert!(tokens.iter().any(|t| t.class == "sql-comment"));
    }

    #[test]
    fn money_is_yuan_from_integer_fen() {
        assert_eq!(yuan(123_456), "¥1234.56");
        assert_eq!(yuan(-5), "-¥0.05");
        assert_eq!(yuan(0), "¥0.00");
    }
}
