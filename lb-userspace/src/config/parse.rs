//! Reading and parsing a configuration file: the size budget, YAML syntax errors in xlb's words,
//! then the checks.

use std::io::Read as _;
use std::path::Path;

use super::read_errors::read_error;
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
    String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error().valid_up_to()))
}

/// Refuses a file that is not UTF-8, at its first byte that is not (`bad`, an offset).
fn not_utf8(path: &Path, bytes: &[u8], bad: usize) -> ConfigError {
    let before = &bytes[..bad];
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |n| n + 1);
    // Columns count characters, as the reader's do; the line is valid UTF-8 up to `bad`.
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    ConfigError::Syntax {
        path: path.to_owned(),
        line: before.iter().filter(|&&b| b == b'\n').count() as u64 + 1,
        column: column as u64,
        message: format!(
            "byte 0x{:02x} is not UTF-8; xlb reads the file as UTF-8: save it so (e.g. `iconv -f latin1 -t utf-8`)",
            bytes[bad]
        ),
    }
}

/// Parses and validates `text`; `path` only names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    check_size(path, text.len())?;
    check_not_empty(path, text)?;
    let raw = incremental::read_whole(text).map_err(|e| read_error(path, text, &e))?;
    Checker::new(path, text).check(raw)
}

/// `parse`, re-parsing only the VIPs that changed since the last text read through `cache`.
pub fn parse_cached(path: &Path, text: &str, cache: &mut VipItemCache) -> Result<Config, ConfigError> {
    check_size(path, text.len())?;
    check_not_empty(path, text)?;
    let raw = cache.read(text).map_err(|e| read_error(path, text, &e))?;
    Checker::new(path, text).check(raw)
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
