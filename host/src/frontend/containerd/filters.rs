//! containerd's filter language, as `List` (Walk) of the snapshots API receives it.
//!
//! A filter is selectors joined by `,` (AND); several filters in one request are OR'ed. A
//! selector is a field path (`name`, `labels.foo`, `labels."containerd.io/gc.root"`) alone —
//! the field is present — or followed by `==`, `!=` or `~=` (a regular expression) and a
//! value, bare or double-quoted with backslash escapes. An absent field matches nothing, `!=`
//! included. Sizes are capped: [`MAX_FILTER_LEN`] bytes per filter, [`MAX_SELECTORS`]
//! selectors, and regular expressions compile under [`MAX_REGEX_SIZE`].

use regex::Regex;

/// Longest filter string accepted.
pub const MAX_FILTER_LEN: usize = 4096;
/// Selectors one filter may join.
pub const MAX_SELECTORS: usize = 64;
/// Compiled size a `~=` regular expression may reach.
pub const MAX_REGEX_SIZE: usize = 1 << 20;

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
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let fail = |reason: String| FilterError {
            filter: text.chars().take(200).collect(),
            reason,
        };
        if text.len() > MAX_FILTER_LEN {
            return Err(fail(format!("longer than {MAX_FILTER_LEN} bytes")));
        }
        let mut s = Scanner { text, at: 0 };
        let mut selectors = Vec::new();
        loop {
            let mut path = vec![s.field().map_err(&fail)?];
            while s.eat(".") {
                path.push(s.field().map_err(&fail)?);
            }
            let op = if s.eat("==") {
                Operator::Equal(s.value().map_err(&fail)?)
            } else if s.eat("!=") {
                Operator::NotEqual(s.value().map_err(&fail)?)
            } else if s.eat("~=") {
                let pattern = s.value().map_err(&fail)?;
                let re = regex::RegexBuilder::new(&pattern)
                    .size_limit(MAX_REGEX_SIZE)
                    .build()
                    .map_err(|e| fail(format!("bad regular expression: {e}")))?;
                Operator::Matches(re)
            } else {
                Operator::Present
            };
            selectors.push(Selector { path, op });
            if selectors.len() > MAX_SELECTORS {
                return Err(fail(format!("more than {MAX_SELECTORS} selectors")));
            }
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
        Ok(Filter { selectors })
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

/// Parses the filters of one request: an object is listed when any of them matches (or
/// when there are none).
pub fn parse_all(filters: &[String]) -> Result<Vec<Filter>, FilterError> {
    filters
        .iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| Filter::parse(f))
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
        assert!(any_matches(&filters, &obj("b", "", &[])));
        assert!(!any_matches(&filters, &obj("c", "", &[])));
        assert!(any_matches(&[], &obj("c", "", &[])));
    }
}
