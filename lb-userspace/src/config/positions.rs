//! Where each key and value of the file is. The typed read keeps the positions of blocks (a VIP,
//! a backend, a check); to point an error at the wrong field's own line and column, the file is
//! read again as a tree of positioned keys and values — only when there is an error to place,
//! so a good file costs nothing.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::yaml_budget;

/// The file as keys, lists and scalars, each with its position.
pub(super) struct PositionTree {
    root: Spanned<Node>,
}

enum Node {
    Map(Vec<Entry>),
    List(Vec<Spanned<Node>>),
    /// A scalar's text as the reader resolved it; null is `None`.
    Scalar(Option<String>),
}

struct Entry {
    key: Spanned<KeyText>,
    value: Spanned<Node>,
}

/// A key of any scalar type, as text.
struct KeyText(String);

/// What sits at a position: a key, or a value with the path that leads to it.
pub(super) struct Found {
    /// `vips[0].backends[1].weight`; empty for the whole file.
    pub(super) path: String,
    /// The scalar's text, when the value is a scalar; `None` for a null, a map or a list.
    pub(super) scalar: Option<String>,
    pub(super) shape: Shape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Map,
    List,
    Scalar,
    Null,
}

impl PositionTree {
    /// The tree of `text`, or `None` when the text is not well-formed YAML.
    pub(super) fn read(text: &str) -> Option<PositionTree> {
        let mut options = yaml_budget::options();
        // Both of two equal keys are kept, so that the second can be found.
        options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
        serde_saphyr::from_str_with_options(text, options).ok().map(|root| PositionTree { root })
    }

    /// The position of the value at `path` (`vips[0].backends[1].weight`) and its text if it is
    /// a scalar, when the file has it. An empty value is placed at its key.
    pub(super) fn value_at(&self, path: &str) -> Option<(Location, Option<String>)> {
        let mut node = &self.root;
        let mut key = None;
        for segment in segments(path)? {
            (node, key) = match (segment, &node.value) {
                (Segment::Key(name), Node::Map(entries)) => {
                    // The last of equal keys: the one the typed read kept.
                    let entry = entries.iter().rev().find(|e| e.key.value.0 == name)?;
                    (&entry.value, Some(entry.key.referenced))
                }
                (Segment::Index(i), Node::List(items)) => (items.get(i)?, None),
                _ => return None,
            };
        }
        match (&node.value, key) {
            (Node::Scalar(None), Some(key)) => Some((key, None)),
            _ => Some((node.referenced, scalar(node))),
        }
    }

    /// The position of the first of two equal keys, the last of which starts at `second`.
    pub(super) fn first_of_key(&self, path: &str, second: &Location) -> Option<Location> {
        let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
        let mut found = None;
        visit(&self.root, String::new(), &mut |at, node| {
            if let (true, Node::Map(entries)) = (at == parent, &node.value)
                && entries.iter().any(|e| same(&e.key.referenced, second))
            {
                found = entries.iter().find(|e| e.key.value.0 == name).map(|e| e.key.referenced);
            }
        });
        found
    }

    /// The value (not a key) that starts at `at`, the innermost if several do.
    pub(super) fn value_starting(&self, at: &Location) -> Option<Found> {
        let mut best = None;
        visit(&self.root, String::new(), &mut |path, node| {
            if same(&node.referenced, at) {
                best = Some(Found { path: path.to_owned(), scalar: scalar(node), shape: shape(node) });
            }
        });
        best
    }

    /// The key that starts at `at`, as the path of the value it names.
    pub(super) fn key_starting(&self, at: &Location) -> Option<Found> {
        let mut best = None;
        visit(&self.root, String::new(), &mut |path, node| {
            if let Node::Map(entries) = &node.value {
                for entry in entries.iter().filter(|e| same(&e.key.referenced, at)) {
                    best = Some(Found {
                        path: join(path, &entry.key.value.0),
                        scalar: Some(entry.key.value.0.clone()),
                        shape: shape(&entry.value),
                    });
                }
            }
        });
        best
    }

    /// The innermost mapping that starts at `at` (a block's first key, or its `{`).
    pub(super) fn map_starting(&self, at: &Location) -> Option<String> {
        let mut best = None;
        visit(&self.root, String::new(), &mut |path, node| {
            if matches!(node.value, Node::Map(_)) && same(&node.referenced, at) {
                best = Some(path.to_owned());
            }
        });
        best
    }
}

fn same(a: &Location, b: &Location) -> bool {
    a.line() == b.line() && a.column() == b.column()
}

fn scalar(node: &Spanned<Node>) -> Option<String> {
    match &node.value {
        Node::Scalar(text) => text.clone(),
        _ => None,
    }
}

fn shape(node: &Spanned<Node>) -> Shape {
    match &node.value {
        Node::Map(_) => Shape::Map,
        Node::List(_) => Shape::List,
        Node::Scalar(Some(_)) => Shape::Scalar,
        Node::Scalar(None) => Shape::Null,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// Calls `f` with every node and its path, outer nodes before inner ones.
fn visit(node: &Spanned<Node>, path: String, f: &mut dyn FnMut(&str, &Spanned<Node>)) {
    f(&path, node);
    match &node.value {
        Node::Map(entries) => {
            for entry in entries {
                visit(&entry.value, join(&path, &entry.key.value.0), f);
            }
        }
        Node::List(items) => {
            for (i, item) in items.iter().enumerate() {
                visit(item, format!("{path}[{i}]"), f);
            }
        }
        Node::Scalar(_) => {}
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `vips[0].port` as `vips`, `0`, `port`; `None` if it is not a path.
fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            out.push(Segment::Index(index.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(out)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_string())))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Some(v.to_owned())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(None))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            entries.push(Entry { key, value: map.next_value()? });
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Node::deserialize(d)? {
            Node::Scalar(text) => Ok(KeyText(text.unwrap_or_default())),
            // A list or map as a key: no field of xlb's is named so.
            _ => Ok(KeyText(String::new())),
        }
    }
}
