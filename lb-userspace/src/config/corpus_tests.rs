//! The corpus of invalid files (`testdata/config-errors/`), as a new operator writes them: each
//! is refused at the wrong value's own line and column, in xlb's words. Each file says what it
//! expects in two header lines: `# expect: LINE:COLUMN` and `# words: a | b | c`.

use std::path::{Path, PathBuf};

use super::load;

/// The YAML reader's and serde's own phrasing, which says nothing to an operator.
const LIBRARY_WORDS: &[&str] = &[
    "untagged enum",
    "invalid u",
    "invalid i",
    "DuplicateKeyPolicy",
    "Option<",
    "from_str",
    "expected sequence start",
    "expected mapping start",
    "invalid type:",
    "invalid value:",
    "unknown variant",
    "unknown field",
    "missing field",
    "expected one of",
    "deserializ",
    "serde",
    "saphyr",
    "struct ",
    " column ",
];

struct Expected {
    position: String,
    words: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/config-errors")
}

/// The two header lines of a corpus file (read as bytes: one file is not UTF-8 on purpose).
fn expected(path: &Path) -> Expected {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let header = |line: Option<&str>, key: &str| -> String {
        line.and_then(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{}: the header needs a `{key}` line", path.display()))
            .trim()
            .to_owned()
    };
    let position = header(lines.next(), "# expect:");
    let words = header(lines.next(), "# words:").split(" | ").map(str::to_owned).collect();
    Expected { position, words }
}

/// Clauses of the message (between `;`, `:` and parentheses) of some length that occur twice:
/// one cause printed twice, such as a source error repeated in its wrapper's text.
fn repeated_clauses(message: &str) -> Vec<String> {
    let clauses: Vec<&str> =
        message.split([';', ':', '(', ')']).map(str::trim).filter(|clause| clause.len() >= 12).collect();
    let mut repeated: Vec<String> = clauses
        .iter()
        .enumerate()
        .filter(|(i, clause)| clauses[..*i].contains(clause))
        .map(|(_, clause)| clause.to_string())
        .collect();
    repeated.dedup();
    repeated
}

#[test]
fn every_corpus_file_is_refused_at_its_field_in_xlbs_words() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the corpus directory")
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 60, "the corpus has {} files", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let want = expected(path);
        let err = match load(path) {
            Ok(_) => {
                failures.push(format!("{}: accepted", path.display()));
                continue;
            }
            Err(e) => e,
        };
        let shown = err.to_string();
        let prefix = format!("{}:{}: ", path.display(), want.position);
        let mut wrong = Vec::new();
        if !shown.starts_with(&prefix) {
            wrong.push(format!("not at {}", want.position));
        }
        for word in &want.words {
            if !shown.contains(word.as_str()) {
                wrong.push(format!("no `{word}`"));
            }
        }
        for word in LIBRARY_WORDS {
            if shown.contains(word) {
                wrong.push(format!("the library's `{word}`"));
            }
        }
        for clause in repeated_clauses(&shown) {
            wrong.push(format!("`{clause}` twice"));
        }
        if let Some(source) = std::error::Error::source(&err)
            && shown.contains(&source.to_string())
        {
            wrong.push("its source's text again".to_owned());
        }
        if !wrong.is_empty() {
            failures.push(format!("{shown}\n    {}", wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} corpus files:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn repeated_clauses_are_found() {
    assert_eq!(repeated_clauses("a: invalid utf-8 sequence; invalid utf-8 sequence"), ["invalid utf-8 sequence"]);
    assert!(repeated_clauses("vips[0].port: `0`: a tcp VIP needs a port").is_empty());
}
