//! The YAML reader's errors in xlb's words: each names the field (its path in the file), the value
//! as written, what the field takes and how to write it, at the value's own line and column.

use std::path::Path;

use serde_saphyr::{Error, Location};

use super::positions::{PositionTree, Shape};
use super::{ConfigError, yaml_budget, yaml_layout};

/// `e`, raised reading `text`, as a `ConfigError` in xlb's words.
pub(super) fn read_error(path: &Path, text: &str, e: &Error) -> ConfigError {
    // A budget stops the reader: say which, where it was crossed.
    if let Some(message) = yaml_budget::breach_message(e) {
        return syntax(path, e.location(), message);
    }
    // A tab, a misindented line or an unclosed quote explains what the reader says next,
    // often lines later: point at it first.
    let inner = yaml_budget::original(e);
    let structural = !matches!(
        inner,
        Error::SerdeUnknownField { .. }
            | Error::SerdeUnknownVariant { .. }
            | Error::SerdeInvalidType { .. }
            | Error::SerdeInvalidValue { .. }
            | Error::InvalidScalar { .. }
            | Error::NullIntoString { .. }
            | Error::Message { .. }
            | Error::DuplicateMappingKey { .. }
            | Error::MultipleDocuments { .. }
    );
    if let Some(mistake) = yaml_layout::find_mistake(text, structural) {
        return ConfigError::Syntax {
            path: path.to_owned(),
            line: mistake.line,
            column: mistake.column,
            message: mistake.message,
        };
    }
    let tree = PositionTree::read(text);
    let field_error = |at: Location, field: String, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        line: at.line(),
        column: at.column(),
        field,
        message,
    };
    match inner {
        Error::SerdeUnknownField { field, expected, location } => {
            let parent = tree.as_ref().and_then(|t| t.key_starting(location)).map(|found| parent_of(&found.path));
            let parent = parent.unwrap_or_default();
            let here = if parent.is_empty() { "at the top of the file".to_owned() } else { format!("in {parent}") };
            let known = expected.join(", ");
            let message = match closest(field, expected) {
                Some(near) => format!("`{field}` is not a field {here}; did you mean `{near}`? (the fields: {known})"),
                None => format!("`{field}` is not a field {here}; remove it or use one of: {known}"),
            };
            field_error(*location, join(&parent, field), message)
        }
        Error::SerdeMissingField { field, location } => {
            // The reader places it at the block or at its last key; a flow mapping's `{` is
            // before its first key.
            let parent = tree
                .as_ref()
                .and_then(|t| t.map_starting(location).or_else(|| t.key_starting(location).map(|f| parent_of(&f.path))))
                .unwrap_or_default();
            // At the block it is missing from, as the checks place a missing field.
            let block = tree.as_ref().filter(|_| !parent.is_empty()).and_then(|t| t.value_at(&parent));
            let at = block.map_or(*location, |(at, _)| at);
            field_error(at, join(&parent, field), format!("missing; {}", missing_hint(field)))
        }
        Error::DuplicateMappingKey { key, location } => {
            let found = tree.as_ref().and_then(|t| t.key_starting(location));
            let name = key.clone().unwrap_or_default();
            let field = found.as_ref().map_or(name.clone(), |f| f.path.clone());
            let first = tree.as_ref().and_then(|t| t.first_of_key(&field, location));
            let earlier = first.map_or(String::new(), |at| format!(" (first at {}:{})", at.line(), at.column()));
            field_error(
                *location,
                field,
                format!("`{name}` is written twice in the same block{earlier}; write each key once"),
            )
        }
        Error::MultipleDocuments { location, .. } => {
            let line = second_document_line(text, location.line());
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column: 1,
                message: "a second YAML document (---) begins here; xlb reads one document: remove this `---` and what follows, or merge the two into one".into(),
            }
        }
        Error::SerdeUnknownVariant { variant, expected, location } => {
            let field = tree.as_ref().and_then(|t| t.value_starting(location)).map(|f| f.path).unwrap_or_default();
            field_error(
                *location,
                field,
                format!("`{variant}` is not one of {}; write one of them as shown", one_of(expected)),
            )
        }
        Error::SerdeInvalidType { location, .. }
        | Error::SerdeInvalidValue { location, .. }
        | Error::InvalidScalar { location, .. }
        | Error::NullIntoString { location }
        | Error::Unexpected { location, .. }
        | Error::Message { location, .. } => {
            let Some(found) = tree.as_ref().and_then(|t| t.value_starting(location)) else {
                return syntax(path, Some(*location), scanner_words(inner));
            };
            // xlb's own value types say what is wrong in backquotes; the library's never do.
            if let Error::Message { msg, .. } = inner
                && msg.contains('`')
            {
                return field_error(*location, found.path, msg.clone());
            }
            let at = match found.shape {
                // An empty value is placed at its key.
                Shape::Null => tree.as_ref().and_then(|t| t.value_at(&found.path)).map_or(*location, |(at, _)| at),
                _ => *location,
            };
            let message = wrong_value(&found.path, found.shape, found.scalar.as_deref());
            field_error(at, found.path, message)
        }
        _ => syntax(path, e.location(), scanner_words(inner)),
    }
}

fn syntax(path: &Path, at: Option<Location>, message: String) -> ConfigError {
    match at {
        Some(at) if at.line() > 0 => {
            ConfigError::Syntax { path: path.to_owned(), line: at.line(), column: at.column(), message }
        }
        _ => ConfigError::SyntaxNoLocation { path: path.to_owned(), message },
    }
}

/// The reader's own text for what xlb has no words of its own: its first line, without the
/// location it carries (printed once, ours).
fn scanner_words(e: &Error) -> String {
    let message = e.to_string();
    let first = message.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest,
        _ => first,
    };
    // Its own position, if it repeats one, goes: ours is printed.
    let first = first.split(" at line ").next().unwrap_or(first);
    format!(
        "the YAML cannot be read here: {first}; check the indentation, quotes and brackets on this line and the one above"
    )
}

fn parent_of(path: &str) -> String {
    match path.rfind(['.', '[']) {
        Some(at) if path[at..].starts_with('.') => path[..at].to_owned(),
        Some(at) => path[..at].to_owned(),
        None => String::new(),
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

/// `a, b or c`.
fn one_of(options: &[&str]) -> String {
    match options {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The known name nearest to a misspelt one: at most two edits away, or one a prefix of the other.
fn closest<'a>(typo: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|name| (edit_distance(typo, name), *name))
        .filter(|(distance, name)| *distance <= 2 || name.starts_with(typo) || typo.starts_with(name))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The line of the `---` that starts the second document, at or before `reported`.
fn second_document_line(text: &str, reported: u64) -> u64 {
    let markers: Vec<u64> =
        text.lines().enumerate().filter(|(_, l)| l.starts_with("---")).map(|(i, _)| i as u64 + 1).collect();
    let content_before = |line: u64| {
        text.lines().take(line as usize - 1).any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#') && !l.starts_with("---") && !l.starts_with('%')
        })
    };
    markers.into_iter().find(|&m| m <= reported.max(1) && content_before(m)).unwrap_or(reported)
}

/// The last key of `path` (`weight` of `vips[0].backends[1].weight`); `item` for a list item.
fn last_key(path: &str) -> &str {
    if path.ends_with(']') {
        return "item";
    }
    path.rsplit('.').next().unwrap_or(path)
}

/// What a required field holds and how to write it, for its absence.
fn missing_hint(field: &str) -> String {
    let hint = match field {
        "type" => "say what to probe with: `type:` tcp, http, https, grpc or udp",
        "mode" => "say how packets reach the backends: `mode:` dsr-l2, dsr-ipip, nat or l7",
        "protocol" => "write `protocol:` tcp, udp or icmp",
        "address" => "write the address, e.g. `address: 192.0.2.10`",
        "name" => "give it a short unique name, e.g. `name: web`",
        "remote_as" => "write the peer's AS number, e.g. `remote_as: 65000`",
        "port" => "write the port the backend listens on, e.g. `port: 8080`",
        "requests_per_second" => "write the average rate, e.g. `requests_per_second: 100`",
        "cert" | "key" => "write the path of the PEM file",
        _ => "add it",
    };
    hint.to_owned()
}

/// The message for a value that is not what its field takes.
fn wrong_value(path: &str, shape: Shape, scalar: Option<&str>) -> String {
    let key = last_key(path);
    let parent = parent_of(path);
    let written = match (shape, scalar) {
        (Shape::Null, _) => "is empty".to_owned(),
        (Shape::Scalar, Some(v)) => format!("`{v}` is not"),
        (Shape::Map, _) => "a mapping is not".to_owned(),
        (Shape::List, _) => "a list is not".to_owned(),
        (Shape::Scalar, None) => "the value is not".to_owned(),
    };
    let (what, how) = value_words(key, &parent, path);
    if shape == Shape::Null {
        return format!("{written}; {how}");
    }
    format!("{written} {what}; {how}")
}

/// What the field `key` (under `parent`) takes, and how to write it.
fn value_words(key: &str, parent: &str, path: &str) -> (&'static str, String) {
    let list = |example: &str| {
        ("a list", format!("write one item a line under it, each starting with `- ` (e.g. `{example}`)"))
    };
    let mapping =
        |example: &str| ("a mapping", format!("write its fields on the lines under it, indented (e.g. `{example}`)"));
    let whole = |range: &str| ("a whole number", format!("write a whole number from {range}"));
    let address = || {
        ("an IP address", "write one address without a prefix or port, such as 192.0.2.10 or 2001:db8::10".to_owned())
    };
    match key {
        "vips" => list("- name: web"),
        "backends" => list("- address: 10.0.0.1"),
        "peers" => list("- address: 192.0.2.1"),
        "nat_pools" => list("- name: edge"),
        "routes" => list("- path_prefix: /"),
        "communities" => list("- 65010:100"),
        "addresses" => list("- 198.51.100.200"),
        "health_check" => mapping("type: tcp"),
        "node" => mapping("mtu: 1500"),
        "bgp" => mapping("local_as: 65010"),
        "agent" => mapping("metrics_listen: 127.0.0.1:9842"),
        "l7" => mapping("routes:"),
        "bfd" => mapping("enabled: true"),
        "tls" => mapping("cert: /etc/xlb/cert.pem"),
        "rate_limit" => mapping("requests_per_second: 100"),
        "item" if parent.ends_with("addresses") => address(),
        "item" if parent.ends_with("communities") => {
            ("a community", "write AS:VALUE with both parts 0 to 65535, e.g. 65010:100".to_owned())
        }
        "item" => {
            let example = match last_key(parent) {
                "vips" => "name: web",
                "peers" => "address: 192.0.2.1",
                "nat_pools" => "name: edge",
                "routes" => "path_prefix: /",
                _ => "address: 10.0.0.1",
            };
            mapping(example)
        }
        "port" if parent.starts_with("vips[") && !path.contains("backends") && !path.contains("health_check") => {
            ("a port", "write 1 to 65535, or a range such as 8000-8099".to_owned())
        }
        "port" | "ports" => ("a port", "write a whole number from 1 to 65535".to_owned()),
        "weight" => whole("0 to 65535"),
        "address" | "router_id" | "next_hop_v4" | "next_hop_v6" | "source_address" => address(),
        "metrics_listen" => ("an address and port", "write it as 127.0.0.1:9842 or [::1]:9842".to_owned()),
        "local_as" | "remote_as" => {
            ("an AS number", "write a whole number from 1 to 4294967295, such as 65010".to_owned())
        }
        "maglev_table_size" => {
            ("a table size", "write a prime no larger than 1048573, such as 16381 or 65537".to_owned())
        }
        "rise" | "fall" => whole("1 to 100"),
        "multiplier" => whole("1 to 255"),
        "retries" => whole("0 to 10"),
        "expect_status" => whole("100 to 599"),
        "mtu" => whole("576 to 65535"),
        "min_healthy"
        | "med"
        | "local_pref"
        | "flow_table_size"
        | "nat_table_size"
        | "max_idle_per_backend"
        | "max_requests_per_backend"
        | "requests_per_second"
        | "burst" => whole("0 to 4294967295"),
        "enabled" | "proxy_protocol" => ("true or false", "write true or false".to_owned()),
        "next_hop_mac" | "mac" => ("a MAC address", "write it as 02:00:5e:00:53:01".to_owned()),
        "tunnel_source_v4" | "tunnel_source_v6" => {
            ("an address or prefix", "write it as 198.51.100.0/24 or 2001:db8:1::/112".to_owned())
        }
        "name" => ("a name", "give it a short unique name such as `web`".to_owned()),
        _ => {
            ("what this field takes", "write it as text, in quotes if it starts with a digit or holds `: `".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_field_is_suggested() {
        let known = ["name", "address", "port", "protocol"];
        assert_eq!(closest("adress", &known), Some("address"));
        assert_eq!(closest("prot", &known), Some("port"));
        assert_eq!(closest("weight", &known), None);
        assert_eq!(one_of(&["tcp", "udp", "icmp"]), "tcp, udp or icmp");
        assert_eq!(parent_of("vips[0].backends[1].weight"), "vips[0].backends[1]");
        assert_eq!(parent_of("vips[0]"), "vips");
    }
}
