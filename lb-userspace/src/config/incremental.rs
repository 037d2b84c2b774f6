//! Re-reading a large configuration fast. Parsing YAML with positions costs ~0.1 ms a VIP
//! (16 backends), so a reload of 10 000 VIPs that changes one would spend a second re-reading
//! what it already knows. The agent keeps each `vips:` item of the last good file, by its text and
//! first line; a reload re-parses only the items whose text or line changed, and the rest of the
//! file (which is small) with the items blanked out.
//!
//! Only plainly written files take this path: a file with anchors, aliases, tags, block scalars,
//! several documents, tabs, or a quoted or flow value spanning lines is read whole, as is any file
//! in which many items changed (reading whole is then cheaper) and any file with an error (so
//! that errors are those of a whole read, first in the file first). Items are parsed at their
//! own lines, so positions in errors and checks are the same as a whole read's.

use std::collections::HashMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{RawConfig, RawVip, yaml_budget};

/// Above this share of changed items (1 in N), the whole file is read instead.
const WHOLE_READ_WHEN_ONE_IN: usize = 4;

/// The `vips:` items of the last file read, for the next read to reuse.
/// Keyed by the item's first line (1-based); an entry is reused only for the same text there.
#[derive(Default)]
pub struct VipItemCache {
    items: HashMap<usize, CachedItem>,
    last: LastRead,
}

/// How the last file was read, for the reload's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LastRead {
    /// Read whole (the first read, a file not plainly written, many changes, or an error).
    #[default]
    Whole,
    /// Only `reparsed` of `items` VIPs were parsed again.
    Items { reparsed: usize, items: usize },
}

impl std::fmt::Debug for VipItemCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VipItemCache").field("items", &self.items.len()).field("last", &self.last).finish()
    }
}

struct CachedItem {
    /// The item's lines, up to the next item or the end of the list.
    text: Box<str>,
    vip: Spanned<RawVip>,
}

/// A file split where the parser would split it, when it is plainly written.
struct Layout<'a> {
    /// The file with the `vips:` line written as `vips: []` and every item line blanked.
    rest: String,
    items: Vec<Item<'a>>,
}

struct Item<'a> {
    line: usize,
    text: &'a str,
}

/// Items as one list, alone at their lines: what `item_document` builds is read into this.
#[derive(Deserialize)]
struct ItemDocument {
    vips: Vec<Spanned<RawVip>>,
}

impl VipItemCache {
    /// Reads `text` as serde-saphyr would read it whole, re-parsing only items not seen in the
    /// last file read through this cache.
    pub(super) fn read(&mut self, text: &str) -> Result<RawConfig, serde_saphyr::Error> {
        self.last = LastRead::Whole;
        let Some(layout) = split(text) else {
            self.items.clear();
            return read_whole(text);
        };
        let changed = layout.items.iter().filter(|item| !self.holds(item)).count();
        if self.items.is_empty() || changed * WHOLE_READ_WHEN_ONE_IN > layout.items.len() {
            let raw = read_whole(text)?;
            self.remember(&layout, &raw);
            return Ok(raw);
        }
        match self.read_changed(&layout) {
            Some(raw) => {
                self.last = LastRead::Items { reparsed: changed, items: layout.items.len() };
                Ok(raw)
            }
            // An error: the whole read finds the first one in the file, in the same words.
            None => {
                self.items.clear();
                read_whole(text)
            }
        }
    }

    /// How the last file was read.
    pub fn last_read(&self) -> LastRead {
        self.last
    }

    fn holds(&self, item: &Item<'_>) -> bool {
        self.items.get(&item.line).is_some_and(|cached| &*cached.text == item.text)
    }

    fn read_changed(&mut self, layout: &Layout<'_>) -> Option<RawConfig> {
        let mut raw: RawConfig = read_whole(&layout.rest).ok()?;
        let mut items = HashMap::with_capacity(layout.items.len());
        let mut vips = Vec::with_capacity(layout.items.len());
        for item in &layout.items {
            let cached = match self.items.remove(&item.line) {
                Some(cached) if &*cached.text == item.text => cached,
                _ => {
                    let mut document: ItemDocument = read_whole(&item_document(item)).ok()?;
                    let vip = document.vips.pop()?;
                    if !document.vips.is_empty() || !within(&vip, item) {
                        return None;
                    }
                    CachedItem { text: item.text.into(), vip }
                }
            };
            vips.push(cached.vip.clone());
            items.insert(item.line, cached);
        }
        raw.vips = vips;
        self.items = items;
        Some(raw)
    }

    /// Keeps the items of a whole read, when the split agrees with the parser item by item.
    fn remember(&mut self, layout: &Layout<'_>, raw: &RawConfig) {
        self.items.clear();
        let agrees = raw.vips.len() == layout.items.len()
            && raw.vips.iter().zip(&layout.items).all(|(vip, item)| within(vip, item));
        if agrees {
            for (vip, item) in raw.vips.iter().zip(&layout.items) {
                self.items.insert(item.line, CachedItem { text: item.text.into(), vip: vip.clone() });
            }
        }
    }
}

pub(super) fn read_whole<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, yaml_budget::options())
}

/// Whether the parser placed `vip` inside `item`'s lines: the split and the parser agree.
fn within(vip: &Spanned<RawVip>, item: &Item<'_>) -> bool {
    let line = vip.referenced.line() as usize;
    line >= item.line && line < item.line + item.text.lines().count().max(1)
}

/// The item alone at its own lines: blank lines before, a `vips:` key on the line above.
fn item_document(item: &Item<'_>) -> String {
    let blank = item.line.saturating_sub(2);
    let mut document = String::with_capacity(blank + 6 + item.text.len());
    document.extend(std::iter::repeat_n('\n', blank));
    document.push_str("vips:\n");
    document.push_str(item.text);
    document
}

/// Splits a plainly written file at its `vips:` items; `None` when anything about it could
/// make the split differ from the parser's reading.
fn split(text: &str) -> Option<Layout<'_>> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut vips_line = None;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("---") || line.starts_with("...") || line.starts_with('%') {
            return None;
        }
        if !plain_line(line) {
            return None;
        }
        let bare = line.trim_end();
        if bare.starts_with("vips") || bare.starts_with("\"vips") || bare.starts_with("'vips") {
            if vips_line.is_some() || !is_block_key(bare, "vips") {
                return None;
            }
            vips_line = Some(i);
        }
    }
    let vips_line = vips_line?;
    // The first content line after `vips:` sets the items' indentation.
    let first = (vips_line + 1..lines.len()).find(|&i| is_content(lines[i]))?;
    let indent = indentation(lines[first]);
    if !is_item_start(lines[first], indent) {
        return None;
    }
    let mut starts = vec![first];
    let mut end = lines.len();
    for (i, line) in lines.iter().enumerate().skip(first + 1) {
        if !is_content(line) {
            continue;
        }
        let at = indentation(line);
        if at < indent || (at == 0 && !line.starts_with('-')) {
            if at != 0 {
                return None;
            }
            end = i;
            break;
        }
        if at == indent {
            if !is_item_start(line, indent) {
                return None;
            }
            starts.push(i);
        }
    }
    // Items end where the next begins; the last at the next top-level key (comments and blank
    // lines before it go with the item, as they would in the parser's reading).
    let offsets: Vec<usize> = lines
        .iter()
        .scan(0, |at, line| {
            let start = *at;
            *at += line.len();
            Some(start)
        })
        .chain(std::iter::once(text.len()))
        .collect();
    let items = starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let stop = starts.get(k + 1).copied().unwrap_or(end);
            Item { line: start + 1, text: &text[offsets[start]..offsets[stop]] }
        })
        .collect();
    let mut rest = String::with_capacity(text.len() / 8 + lines.len());
    for (i, line) in lines.iter().enumerate() {
        if i == vips_line {
            rest.push_str("vips: []\n");
        } else if (first..end).contains(&i) {
            rest.push('\n');
        } else {
            rest.push_str(line);
        }
    }
    Some(Layout { rest, items })
}

/// `key:` alone on its line at column 0, perhaps with a comment.
fn is_block_key(line: &str, key: &str) -> bool {
    line.strip_prefix(key)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|rest| rest.trim_start().is_empty() || rest.trim_start().starts_with('#'))
}

fn is_content(line: &str) -> bool {
    let bare = line.trim_start();
    !bare.is_empty() && !bare.starts_with('#')
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_item_start(line: &str, indent: usize) -> bool {
    let after = &line[indent..];
    after.starts_with("- ") || after.trim_end() == "-"
}

/// A line whose quotes and brackets close on it (no value spans lines) and which has no anchor,
/// alias, tag, block scalar or tab outside its comment: each of these changes what lines mean.
fn plain_line(line: &str) -> bool {
    let (mut single, mut double, mut depth) = (false, false, 0i32);
    let mut previous = ' ';
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '\\' if double => {
                chars.next();
            }
            '#' if !single && !double && previous.is_whitespace() => break,
            '&' | '*' | '!' | '|' | '>' | '\t' | '\r' => return false,
            '[' | '{' if !single && !double => depth += 1,
            ']' | '}' if !single && !double => depth -= 1,
            _ => {}
        }
        previous = c;
    }
    !single && !double && depth == 0
}

#[cfg(test)]
mod tests;
