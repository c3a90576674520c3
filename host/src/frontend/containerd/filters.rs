//! containerd's filter language, as `List` (Walk) of the snapshots API receives it.
//!
//! A filter is selectors joined by `,` (AND); several filters in one request are OR'ed. A
//! selector is a field path (`name`, `labels.foo`, `labels."containerd.io/gc.root"`) alone —
//! the field is present — or followed by `==`, `!=` or `~=` (a regular expression) and a
//! value, bare or double-quoted with backslash escapes. An absent field matches nothing, `!=`
//! included.
//!
//! A request's filters are budgeted before anything is compiled, since a client chooses them
//! and each `~=` costs compile time and memory (a 13 KB request of 16 filters × 64
//! `name~=\w{20}` selectors took 5.9 s and 1.2 GB unbudgeted): at most [`MAX_FILTERS`]
//! filters of [`MAX_FILTER_LEN`] bytes and [`MAX_SELECTORS`] selectors each,
//! [`MAX_REQUEST_FILTER_BYTES`] bytes and [`MAX_REQUEST_SELECTORS`] selectors in all, and
//! [`MAX_REQUEST_REGEXES`] regular expressions, each compiled under [`MAX_REGEX_SIZE`] with a
//! lazy-DFA cache of at most [`MAX_REGEX_DFA_SIZE`]. A request over the budget is refused
//! with a message naming the limit. The service parses (compiles) on a worker thread, never
//! on the async runtime's.

use regex::Regex;

/// Longest filter string accepted.
pub const MAX_FILTER_LEN: usize = 4096;
/// Selectors one filter may join.
pub const MAX_SELECTORS: usize = 64;
/// Filters one request may carry.
pub const MAX_FILTERS: usize = 32;
/// Bytes of all of one request's filters together.
pub const MAX_REQUEST_FILTER_BYTES: usize = 16 << 10;
/// Selectors of all of one request's filters together.
pub const MAX_REQUEST_SELECTORS: usize = 256;
/// `~=` regular expressions one request may carry.
pub const MAX_REQUEST_REGEXES: usize = 16;
/// Compiled size a `~=` regular expression may reach (regex's `size_limit`).
pub const MAX_REGEX_SIZE: usize = 256 << 10;
/// Lazy-DFA cache a `~=` regular expression may grow while matching (regex's
/// `dfa_size_limit`).
pub const MAX_REGEX_DFA_SIZE: usize = 256 << 10;

/// What is left of one request's budget while its filters are parsed.
struct Budget {
    selectors: usize,
    regexes: usize,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            selectors: MAX_REQUEST_SELECTORS,
            regexes: MAX_REQUEST_REGEXES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter `{filter}`: {reason}")]
pub struct FilterError {
    pub filter: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// A selector as parsed, its regular expression not compiled yet: a request's filters are
/// all parsed and counted before any is compiled.
struct Parsed {
    path: Vec<String>,
    op: Operator,
    /// The `~=` pattern, when the operator is that.
    pattern: Option<String>,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Operator,
}

/// One parsed filter: all its selectors must match.
#[derive(Debug, Clone)]
pub struct Filter {
    selectors: Vec<Selector>,
}

/// What a filter asks of an object: the value of a field path, `None` when absent.
pub trait Fields {
    fn field(&self, path: &[String]) -> Option<String>;
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(s) {
            self.at += s.len();
            true
        } else {
            false
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        // At the opening quote.
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e @ ('"' | '\\' | '/'))) => out.push(e),
                    Some((_, other)) => return Err(format!("unknown escape `\\{other}`")),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err("unterminated quoted string".into())
    }

    fn field(&mut self) -> Result<String, String> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!(
                "expected a field name at `{}`",
                self.rest().chars().take(20).collect::<String>()
            ));
        }
        let f = self.rest()[..len].to_string();
        self.at += len;
        Ok(f)
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let len = self.rest().find(',').unwrap_or(self.rest().len());
        let v = self.rest()[..len].trim_end().to_string();
        self.at += len;
        Ok(v)
    }
}

impl Filter {
    /// Parses one filter, with the budget of a request of its own.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        Filter::compile(text, Filter::parse_within(text, &mut Budget::new())?)
    }

    /// Compiles the regular expressions of `parsed`, the selectors of filter `text`.
    fn compile(text: &str, parsed: Vec<Parsed>) -> Result<Filter, FilterError> {
        let fail = |reason: String| FilterError {
            filter: text.chars().take(200).collect(),
            reason,
        };
        let selectors = parsed
            .into_iter()
            .map(|p| {
                let op = match p.pattern {
                    None => p.op,
                    Some(pattern) => Operator::Matches(
                        regex::RegexBuilder::new(&pattern)
                            .size_limit(MAX_REGEX_SIZE)
                            .dfa_size_limit(MAX_REGEX_DFA_SIZE)
                            .build()
                            .map_err(|e| match e {
                                regex::Error::CompiledTooBig(_) => fail(format!(
                                    "the regular expression `{}` compiles to more than \
                                     {MAX_REGEX_SIZE} bytes (limit MAX_REGEX_SIZE)",
                                    pattern.chars().take(100).collect::<String>()
                                )),
                                e => fail(format!("bad regular expression: {e}")),
                            })?,
                    ),
                };
                Ok(Selector { path: p.path, op })
            })
            .collect::<Result<_, FilterError>>()?;
        Ok(Filter { selectors })
    }

    /// Parses filter `text` and counts it against `budget`; compiles nothing.
    fn parse_within(text: &str, budget: &mut Budget) -> Result<Vec<Parsed>, FilterError> {
        let fail = |reason: String| FilterError {
            filter: text.chars().take(200).collect(),
            reason,
        };
        if text.len() > MAX_FILTER_LEN {
            return Err(fail(format!(
                "longer than {MAX_FILTER_LEN} bytes (limit MAX_FILTER_LEN)"
            )));
        }
        let mut s = Scanner { text, at: 0 };
        let mut selectors = Vec::new();
        loop {
            let mut path = vec![s.field().map_err(&fail)?];
            while s.eat(".") {
                path.push(s.field().map_err(&fail)?);
            }
            let mut pending = None;
            let op = if s.eat("==") {
                Operator::Equal(s.value().map_err(&fail)?)
            } else if s.eat("!=") {
                Operator::NotEqual(s.value().map_err(&fail)?)
            } else if s.eat("~=") {
                let pattern = s.value().map_err(&fail)?;
                budget.regexes = budget.regexes.checked_sub(1).ok_or_else(|| {
                    fail(format!(
                        "more than {MAX_REQUEST_REGEXES} regular expressions (`~=`) in one \
                         request (limit MAX_REQUEST_REGEXES)"
                    ))
                })?;
                pending = Some(pattern);
                // Replaced by the compiled pattern.
                Operator::Present
            } else {
                Operator::Present
            };
            selectors.push(Parsed {
                path,
                op,
                pattern: pending,
            });
            if selectors.len() > MAX_SELECTORS {
                return Err(fail(format!(
                    "more than {MAX_SELECTORS} selectors (limit MAX_SELECTORS)"
                )));
            }
            budget.selectors = budget.selectors.checked_sub(1).ok_or_else(|| {
                fail(format!(
                    "more than {MAX_REQUEST_SELECTORS} selectors in one request \
                     (limit MAX_REQUEST_SELECTORS)"
                ))
            })?;
            s.skip_spaces();
            if s.rest().is_empty() {
                break;
            }
            if !s.eat(",") {
                return Err(fail(format!(
                    "expected `,`, `==`, `!=` or `~=` at `{}`",
                    s.rest().chars().take(20).collect::<String>()
                )));
            }
        }
        Ok(selectors)
    }

    pub fn matches(&self, object: &impl Fields) -> bool {
        self.selectors.iter().all(|sel| {
            let Some(value) = object.field(&sel.path) else {
                return false;
            };
            match &sel.op {
                Operator::Present => true,
                Operator::Equal(v) => value == *v,
                Operator::NotEqual(v) => value != *v,
                Operator::Matches(re) => re.is_match(&value),
            }
        })
    }
}

/// Parses the filters of one request within the request budget: an object is listed when
/// any of them matches (or when there are none).
pub fn parse_all(filters: &[String]) -> Result<Vec<Filter>, FilterError> {
    let whole = |reason: String| FilterError {
        filter: format!("{} filters", filters.len()),
        reason,
    };
    if filters.len() > MAX_FILTERS {
        return Err(whole(format!(
            "more than {MAX_FILTERS} filters in one request (limit MAX_FILTERS)"
        )));
    }
    let bytes: usize = filters.iter().map(String::len).sum();
    if bytes > MAX_REQUEST_FILTER_BYTES {
        return Err(whole(format!(
            "{bytes} bytes of filters, more than {MAX_REQUEST_FILTER_BYTES} in one request \
             (limit MAX_REQUEST_FILTER_BYTES)"
        )));
    }
    let mut budget = Budget::new();
    let parsed = filters
        .iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| Ok((f, Filter::parse_within(f, &mut budget)?)))
        .collect::<Result<Vec<_>, FilterError>>()?;
    parsed
        .into_iter()
        .map(|(f, p)| Filter::compile(f, p))
        .collect()
}

pub fn any_matches(filters: &[Filter], object: &impl Fields) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(object))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Obj {
        name: &'static str,
        parent: &'static str,
        labels: BTreeMap<&'static str, &'static str>,
    }

    impl Fields for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [f] if f == "name" => Some(self.name.into()),
                [f] if f == "parent" => Some(self.parent.into()),
                [f, rest @ ..] if f == "labels" && !rest.is_empty() => self
                    .labels
                    .get(rest.join(".").as_str())
                    .map(|v| v.to_string()),
                _ => None,
            }
        }
    }

    fn obj(
        name: &'static str,
        parent: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Obj {
        Obj {
            name,
            parent,
            labels: labels.iter().copied().collect(),
        }
    }

    fn m(filter: &str, o: &Obj) -> bool {
        Filter::parse(filter).unwrap().matches(o)
    }

    #[test]
    fn selectors_operators_and_quoting() {
        let a = obj("a", "p", &[("containerd.io/gc.root", "x"), ("l", "2")]);
        assert!(m(r#"labels."containerd.io/gc.root"==x"#, &a));
        assert!(m(r#"labels."containerd.io/gc.root"=="x""#, &a));
        assert!(!m(r#"labels."containerd.io/gc.root"==y"#, &a));
        assert!(m("labels.l", &a));
        assert!(m("labels.l==2,name==a", &a));
        assert!(!m("labels.l==2,name==b", &a));
        assert!(m(r#"parent!="""#, &a));
        assert!(m("name~=^a$", &a));
        assert!(!m("name~=^b", &a));
        // An absent field matches nothing, != included.
        assert!(!m("labels.missing!=x", &a));
        assert!(!m("labels.missing", &a));
        let root = obj("r", "", &[]);
        assert!(!m(r#"parent!="""#, &root));
        assert!(m(r#"parent=="""#, &root));
    }

    #[test]
    fn bad_filters_are_refused() {
        for bad in [
            "==x",
            "name==x,",
            "name=x",
            r#"labels."open"#,
            "name~=(",
            &"n".repeat(5000),
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        let filters = parse_all(&["name==a".into(), "name==b".into()]).unwrap();
        assert!(any_matches(&filters, &obj("a", "", &[])));
        assert!(any_matches(&filters, &obj("b", "", &[])));
        assert!(!any_matches(&filters, &obj("c", "", &[])));
        assert!(any_matches(&[], &obj("c", "", &[])));
    }

    /// The request budget: counts and sizes over all of a request's filters, regular
    /// expressions counted before they are compiled and compiled under a size limit; each
    /// refusal names its limit.
    #[test]
    fn request_budget() {
        let refused = |filters: Vec<String>, limit: &str| {
            let e = parse_all(&filters).expect_err(limit);
            assert!(e.to_string().contains(limit), "{e}");
        };
        // The 13 KB request that took 5.9 s and 1.2 GB: refused before a regex is compiled.
        refused(
            vec![vec![r"name~=\w{20}"; 64].join(","); 16],
            "MAX_REQUEST_REGEXES",
        );
        refused(
            vec![vec!["name==x"; 64].join(","); 5],
            "MAX_REQUEST_SELECTORS",
        );
        refused(vec!["name==a".to_string(); MAX_FILTERS + 1], "MAX_FILTERS");
        refused(
            vec![format!("name=={}", "a".repeat(4000)); 5],
            "MAX_REQUEST_FILTER_BYTES",
        );
        refused(
            vec![vec!["name~=^a"; MAX_REQUEST_REGEXES + 1].join(",")],
            "MAX_REQUEST_REGEXES",
        );
        refused(
            vec!["name~=^a".to_string(); MAX_REQUEST_REGEXES + 1],
            "MAX_REQUEST_REGEXES",
        );
        refused(vec![r"name~=\w{20}".into()], "MAX_REGEX_SIZE");
        refused(
            vec![vec!["name"; MAX_SELECTORS + 1].join(",")],
            "MAX_SELECTORS",
        );
        // Within the budget: the most of each.
        let most = parse_all(&[vec!["name~=^a-\\d"; MAX_REQUEST_REGEXES].join(",")]).unwrap();
        assert!(most[0].matches(&obj("a-1", "", &[])));
        assert!(!most[0].matches(&obj("b-1", "", &[])));
        parse_all(&vec![
            vec!["labels.l"; MAX_SELECTORS].join(",");
            MAX_REQUEST_SELECTORS / MAX_SELECTORS
        ])
        .unwrap();
    }
}

#[cfg(test)]
#[path = "filters_tests.rs"]
mod grammar_tests;
