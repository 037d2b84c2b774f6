//! `ConfigError`: why a configuration was refused, with its file, line, column and field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: PathBuf, line: u64, column: u64, message: String },
    #[error("{path}: {message}")]
    SyntaxNoLocation { path: PathBuf, message: String },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Invalid { path: PathBuf, line: u64, column: u64, field: String, message: String },
}
