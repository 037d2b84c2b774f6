//! Reading and parsing a configuration file: the size budget, YAML syntax errors in xlb's words,
//! then the checks.

use std::io::Read as _;
use std::path::Path;

use super::{Checker, Config, ConfigError, VipItemCache, incremental, yaml_budget};

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_text(path)?;
    parse(path, &text)
}

/// `load`, re-parsing only the VIPs that changed since the last file read through `cache`.
pub fn load_cached(path: &Path, cache: &mut VipItemCache) -> Result<Config, ConfigError> {
    let text = read_text(path)?;
    parse_cached(path, &text, cache)
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read { path: path.to_owned(), source };
    // Read one byte past the budget, no more: a huge file is refused without being read whole.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(yaml_budget::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    check_size(path, bytes.len())?;
    String::from_utf8(bytes).map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error())))
}

/// Parses and validates `text`; `path` only names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    check_size(path, text.len())?;
    check_not_empty(path, text)?;
    let raw = incremental::read_whole(text).map_err(|e| syntax_error(path, &e))?;
    Checker { path }.check(raw)
}

/// `parse`, re-parsing only the VIPs that changed since the last text read through `cache`.
pub fn parse_cached(path: &Path, text: &str, cache: &mut VipItemCache) -> Result<Config, ConfigError> {
    check_size(path, text.len())?;
    check_not_empty(path, text)?;
    let raw = cache.read(text).map_err(|e| syntax_error(path, &e))?;
    Checker { path }.check(raw)
}

/// Refuses a file of `bytes` bytes, larger than any configuration within the limits.
fn check_size(path: &Path, bytes: usize) -> Result<(), ConfigError> {
    if bytes > yaml_budget::MAX_FILE_BYTES {
        return Err(ConfigError::SyntaxNoLocation { path: path.to_owned(), message: yaml_budget::too_large(bytes) });
    }
    Ok(())
}

/// Refuses a file with nothing in it but blank lines, comments and document markers: what a
/// truncated write or an editor's accident leaves, and applying it would withdraw every VIP.
fn check_not_empty(path: &Path, text: &str) -> Result<(), ConfigError> {
    let content = |line: &str| {
        let line = line.trim();
        !(line.is_empty() || line.starts_with('#') || line == "---" || line == "...")
    };
    if text.lines().any(content) {
        return Ok(());
    }
    Err(ConfigError::Syntax {
        path: path.to_owned(),
        line: 1,
        column: 1,
        message: "the file is empty (nothing but blank lines and comments); xlb refuses it, since it would withdraw every VIP. To serve no VIPs on purpose, write `vips: []`".into(),
    })
}

fn syntax_error(path: &Path, e: &serde_saphyr::Error) -> ConfigError {
    // A budget stops the reader: say which, in xlb's words, where it was crossed.
    if let Some(message) = yaml_budget::breach_message(e) {
        return located(path, e, message);
    }
    // The crate's Display embeds a rendered snippet; keep the first line as the message.
    let message = e.to_string();
    let first = message.lines().next().unwrap_or_default();
    // Drop the crate's own "error: line L column C: " prefix; the location is printed once, ours.
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest,
        _ => first,
    }
    .to_owned();
    located(path, e, message)
}

/// `message` at the error's line and column, when the reader knows them.
fn located(path: &Path, e: &serde_saphyr::Error, message: String) -> ConfigError {
    match e.location() {
        Some(at) if at.line() > 0 => {
            ConfigError::Syntax { path: path.to_owned(), line: at.line(), column: at.column(), message }
        }
        _ => ConfigError::SyntaxNoLocation { path: path.to_owned(), message },
    }
}
