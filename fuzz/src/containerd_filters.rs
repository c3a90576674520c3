//! `containerd_filters`: containerd filter strings as a snapshotter's `List` receives them.
//!
//! Input: UTF-8 text, one filter per line (a request's filters). Parsed within the request
//! budget (`parse_all`) and each alone (`Filter::parse`); what parses is matched against a
//! few snapshots. Checks, besides "no panic": a request that parses is within its budget
//! (`MAX_FILTERS`, `MAX_REQUEST_FILTER_BYTES`, `MAX_FILTER_LEN`), and every filter of a
//! request that parses also parses alone and matches the same snapshots.

use std::collections::BTreeMap;

use strata_containerd::filters::{
    Fields, Filter, MAX_FILTER_LEN, MAX_FILTERS, MAX_REQUEST_FILTER_BYTES, any_matches, parse_all,
};

struct Snapshot {
    name: &'static str,
    parent: &'static str,
    kind: &'static str,
    labels: BTreeMap<&'static str, &'static str>,
}

/// As the service answers for a snapshot (field paths `name`, `parent`, `kind`,
/// `labels.<key>`, where the key may itself hold dots).
impl Fields for Snapshot {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.into()),
            [f] if f == "parent" => Some(self.parent.into()),
            [f] if f == "kind" => Some(self.kind.into()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => self
                .labels
                .get(rest.join(".").as_str())
                .map(|v| v.to_string()),
            _ => None,
        }
    }
}

fn snapshots() -> Vec<Snapshot> {
    vec![
        Snapshot {
            name: "default/1/sha256:abc",
            parent: "",
            kind: "committed",
            labels: [("containerd.io/gc.root", "2026-01-01"), ("a", "b")].into(),
        },
        Snapshot {
            name: "k8s.io/2/container",
            parent: "default/1/sha256:abc",
            kind: "active",
            labels: [("containerd.io/snapshot.ref", "x\ny"), ("", "empty key")].into(),
        },
        Snapshot {
            name: "",
            parent: "\"quoted\"",
            kind: "view",
            labels: BTreeMap::new(),
        },
    ]
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let filters: Vec<String> = text.split('\n').map(str::to_string).collect();
    let objects = snapshots();
    match parse_all(&filters) {
        Ok(parsed) => {
            assert!(filters.len() <= MAX_FILTERS);
            assert!(filters.iter().map(String::len).sum::<usize>() <= MAX_REQUEST_FILTER_BYTES);
            let nonempty: Vec<&String> = filters.iter().filter(|f| !f.trim().is_empty()).collect();
            assert_eq!(parsed.len(), nonempty.len());
            for (f, p) in nonempty.iter().zip(&parsed) {
                assert!(f.len() <= MAX_FILTER_LEN);
                let alone = Filter::parse(f)
                    .unwrap_or_else(|e| panic!("`{f}` parses in a request but not alone: {e}"));
                for o in &objects {
                    assert_eq!(alone.matches(o), p.matches(o), "`{f}`");
                }
            }
            for o in &objects {
                let _ = any_matches(&parsed, o);
            }
        }
        Err(e) => {
            let _ = e.to_string();
            for f in filters.iter().take(4) {
                if let Ok(alone) = Filter::parse(f) {
                    for o in &objects {
                        let _ = alone.matches(o);
                    }
                }
            }
        }
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    // From the filter module's tests, and as containerd's clients write them.
    let filters: &[&str] = &[
        r#"labels."containerd.io/gc.root"==x"#,
        r#"labels."containerd.io/gc.root"=="x""#,
        "labels.l",
        "labels.l==2,name==a",
        r#"parent!="""#,
        "name~=^a$",
        "labels.missing!=x",
        "kind==committed\nkind==active",
        r#"name~="^default/[0-9]+/sha256:.*$",labels."a"==b"#,
        r#"labels."a\"b"=="c\\d\n\t\/""#,
        "==x",
        "name==x,",
        "name=x",
        r#"labels."open"#,
        "name~=(",
        r"name~=\w{20}",
        "  name  ==  spaced  ,  parent  ",
        "labels.a.b.c==d",
        "name==a\nname==b\n\nname==c",
    ];
    filters.iter().map(|f| f.as_bytes().to_vec()).collect()
}
