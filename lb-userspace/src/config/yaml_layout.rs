//! Layout mistakes the YAML reader reports late or in its own terms: a tab that indents a line, a
//! line indented to no block's column, a quote or bracket left open. Looked for only once the
//! reader has refused the file, and reported at the mistake itself.

/// A mistake at a line and column (1-based).
pub(super) struct Mistake {
    pub(super) line: u64,
    pub(super) column: u64,
    pub(super) message: String,
}

/// The first layout mistake of `text`. Quotes and brackets are looked at only when the reader
/// failed on the file's structure (a valid value of the wrong type says nothing about them).
pub(super) fn find_mistake(text: &str, structural: bool) -> Option<Mistake> {
    let lines: Vec<&str> = text.lines().collect();
    if let Some(mistake) = tab_indent(&lines) {
        return Some(mistake);
    }
    if structural {
        if let Some(mistake) = open_quote(&lines) {
            return Some(mistake);
        }
        if let Some(mistake) = open_bracket(&lines) {
            return Some(mistake);
        }
    }
    misindented(&lines)
}

fn at(index: usize, column: usize, message: String) -> Option<Mistake> {
    Some(Mistake { line: index as u64 + 1, column: column as u64 + 1, message })
}

fn tab_indent(lines: &[&str]) -> Option<Mistake> {
    for (i, line) in lines.iter().enumerate() {
        let indent = &line[..line.len() - line.trim_start_matches([' ', '\t']).len()];
        if let Some(column) = indent.find('\t') {
            return at(
                i,
                column,
                "a tab indents this line; YAML indents with spaces only: replace the tab with spaces, lining the key up with the others of its block".into(),
            );
        }
    }
    None
}

/// The line without its comment, and whether a quote opened on it stays open (its column).
fn strip_comment(line: &str) -> (&str, Option<usize>) {
    let (mut quote, mut opened) = (None, 0);
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') if previous.is_whitespace() || "[{,:-".contains(previous) => {
                quote = Some(c);
                opened = i;
            }
            (Some('"'), '\\') => {}
            (Some(q), c) if c == q && !(q == '"' && previous == '\\') => quote = None,
            (None, '#') if previous.is_whitespace() => return (&line[..i], None),
            _ => {}
        }
        previous = c;
    }
    (line, quote.map(|_| opened))
}

fn open_quote(lines: &[&str]) -> Option<Mistake> {
    for (i, line) in lines.iter().enumerate() {
        if let (_, Some(column)) = strip_comment(line) {
            let quote = &line[column..=column];
            return at(
                i,
                column,
                format!(
                    "the quote {quote} opened here is not closed on this line; close it with {quote} at the end of the value"
                ),
            );
        }
    }
    None
}

/// A `[` or `{` never closed in the whole file, at the bracket.
fn open_bracket(lines: &[&str]) -> Option<Mistake> {
    let mut open: Vec<(usize, usize, char)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let (content, _) = strip_comment(line);
        let mut quote = None;
        for (column, c) in content.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '[' | '{') => open.push((i, column, c)),
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    let (i, column, bracket) = *open.first()?;
    let (close, what) = if bracket == '[' { (']', "list") } else { ('}', "mapping") };
    at(i, column, format!("the `{bracket}` opened here is never closed; end the {what} with `{close}`"))
}

/// Whether a line's value is still to come on the lines below: it ends with `:` or `-`, perhaps
/// followed by an anchor (`&name`) or a tag (`!tag`).
fn opens_block(content: &str) -> bool {
    let mut words: Vec<&str> = content.split_whitespace().collect();
    while words.last().is_some_and(|w| w.starts_with('&') || w.starts_with('!')) {
        words.pop();
    }
    words.last().is_some_and(|w| w.ends_with(':') || *w == "-")
}

fn starts_block_scalar(content: &str) -> bool {
    content.split_whitespace().last().is_some_and(|w| w.starts_with('|') || w.starts_with('>'))
}

/// A content line indented to no column of the blocks it is in, or deeper than a line that has
/// its value already.
fn misindented(lines: &[&str]) -> Option<Mistake> {
    // The columns of the open blocks, outermost first.
    let mut levels: Vec<usize> = Vec::new();
    let mut opens = true;
    let mut scalar_block: Option<usize> = None;
    let mut depth = 0i32;
    for (i, line) in lines.iter().enumerate() {
        let (content, quote) = strip_comment(line);
        let indent = content.len() - content.trim_start_matches(' ').len();
        let body = content.trim();
        if body.is_empty() || body.starts_with("---") || body.starts_with("...") || body.starts_with('%') {
            continue;
        }
        if let Some(block) = scalar_block {
            if indent > block {
                continue;
            }
            scalar_block = None;
        }
        let continued = depth > 0;
        depth += body.chars().filter(|c| "[{".contains(*c)).count() as i32;
        depth -= body.chars().filter(|c| "]}".contains(*c)).count() as i32;
        if continued || quote.is_some() {
            continue;
        }
        let key = body.trim_start_matches(['-', ' ']).split(':').next().unwrap_or(body);
        match levels.last().copied() {
            Some(top) if indent > top && !opens => {
                return at(
                    i,
                    indent,
                    format!(
                        "`{key}` is indented deeper than the line above, which has its value already; indent it as the other keys of its block ({top} spaces)"
                    ),
                );
            }
            Some(top) if indent < top => {
                let mut sibling = top;
                while levels.last().is_some_and(|&l| l > indent) {
                    sibling = levels.pop().unwrap_or(sibling);
                }
                if levels.last() != Some(&indent) {
                    return at(
                        i,
                        indent,
                        format!(
                            "`{key}` is indented {indent} spaces, which lines up with no block above; indent it as its siblings ({sibling} spaces)"
                        ),
                    );
                }
            }
            Some(top) if indent == top => {}
            _ => levels.push(indent),
        }
        // An item's keys line up after its dash.
        if let Some(after) = body.strip_prefix('-') {
            let item = indent + 1 + (after.len() - after.trim_start().len());
            if !after.trim().is_empty() && levels.last() != Some(&item) {
                levels.push(item);
            }
        }
        opens = opens_block(body);
        if starts_block_scalar(body) {
            scalar_block = Some(indent);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistake(text: &str) -> Option<(u64, u64)> {
        find_mistake(text, true).map(|m| (m.line, m.column))
    }

    #[test]
    fn well_laid_out_files_have_no_mistake() {
        let text = "vips:\n  - name: web   # a comment: with a colon\n    backends:\n      - address: 10.0.0.1\n        weight: 2\n    health_check: &check\n      type: tcp\n  - name: \"a: b\"\n    l7: { routes: [\n      a ] }\n    backends:\n    - address: 10.0.0.2\nbgp:\n  local_as: 65010\n  note: |\n    text\n      more\n";
        assert_eq!(mistake(text), None);
    }

    #[test]
    fn mistakes_are_placed_where_they_are() {
        assert_eq!(mistake("vips:\n  - name: a\n\tport: 1\n"), Some((3, 1)));
        assert_eq!(mistake("vips:\n  - name: a\n    address: b\n   port: 1\n"), Some((4, 4)));
        assert_eq!(mistake("vips:\n  - name: a\n      port: 1\n"), Some((3, 7)));
        assert_eq!(mistake("vips:\n  - name: \"a\n    port: 1\n"), Some((2, 11)));
        assert_eq!(mistake("vips: [ { a: 1 }\n"), Some((1, 7)));
    }
}
