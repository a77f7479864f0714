//! Named template parameters: `:city` in a template becomes `$city` for DataFusion, and every
//! value is bound as a typed literal, never spliced into the SQL text.

use datafusion::scalar::ScalarValue;

/// A parameter value, typed by the template's declaration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ParamValue {
    Text(String),
    Integer(i64),
}

impl ParamValue {
    pub(crate) fn to_scalar(&self) -> ScalarValue {
        match self {
            Self::Text(text) => ScalarValue::Utf8(Some(text.clone())),
            Self::Integer(value) => ScalarValue::Int64(Some(*value)),
        }
    }
}

/// Rewrites `:name` placeholders to DataFusion's `$name` form and returns the names found,
/// in order of first appearance.
///
/// String literals, quoted identifiers, comments and `::` casts are left alone, so
/// `'a:b'`, `"x:y"`, `-- :c` and `x::int` are not parameters.
pub fn bind_named_parameters(sql: &str) -> (String, Vec<String>) {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' | b'"' => {
                let end = find_closing_quote(bytes, i);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b':' if bytes.get(i + 1) == Some(&b':') => {
                out.push_str("::");
                i += 2;
            }
            b':' if bytes
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') =>
            {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                let name = &sql[start..end];
                out.push('$');
                out.push_str(name);
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
                i = end;
            }
            _ => {
                // Copy one whole UTF-8 character.
                let width = utf8_width(c);
                let end = (i + width).min(bytes.len());
                out.push_str(&sql[i..end]);
                i = end;
            }
        }
    }
    (out, names)
}

fn find_closing_quote(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            // A doubled quote is an escaped quote inside the literal.
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

fn utf8_width(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_named_parameters_and_skips_literals_comments_and_casts() {
        let (sql, names) = bind_named_parameters(
            "SELECT 'a:b', \"x:y\", c::int FROM t -- :nope\nWHERE city = :city AND y > :min_year /* :no */ AND z = :city",
        );
        assert_eq!(
            sql,
            "SELECT 'a:b', \"x:y\", c::int FROM t -- :nope\nWHERE city = $city AND y > $min_year /* :no */ AND z = $city"
        );
        assert_eq!(names, vec!["city".to_string(), "min_year".to_string()]);
    }

    #[test]
    fn keeps_non_ascii_text_intact() {
        let (sql, names) = bind_named_parameters("SELECT '太原' AS 城市 WHERE a = :p");
        assert_eq!(sql, "SELECT '太原' AS 城市 WHERE a = $p");
        assert_eq!(names, vec!["p".to_string()]);
    }

    #[test]
    fn escaped_quotes_stay_inside_the_literal() {
        let (sql, names) = bind_named_parameters("SELECT 'it''s :not' WHERE a = :yes");
        assert_eq!(sql, "SELECT 'it''s :not' WHERE a = $yes");
        assert_eq!(names, vec!["yes".to_string()]);
    }
}
