//! mdBook HTML to plain text: a hand-written streaming tag scanner and a converter that renders block structure as
//! newlines.
//!
//! # Rules
//!
//! - **Main content only** ([`extract_page`]): text is taken from the first `<main>` element, where mdBook puts a
//!   chapter; a page without `<main>` (a redirect, `toc.html`) reports [`Page::has_main`] `false`.
//!   [`html_to_text`] converts a whole fragment instead.
//! - **Dropped subtrees**: the elements `script`, `style`, `head`, `title` (outside [`extract_page`]'s title
//!   capture), `nav`, `button`, `svg`, `noscript`, `template`, `iframe`, `select`, `textarea`, `object`, `canvas`,
//!   `audio`, `video`, `math`; any element whose `class` contains one of `sidebar`, `menu-bar`, `nav-wrapper`,
//!   `nav-wide-wrapper`, `nav-chapters`, `mobile-nav-chapters`, `rule` (the Reference's `[items.fn.intro]` rule
//!   anchors), `popup-container`, `grammar-railroad` (the Reference's railroad diagrams; the textual grammar is
//!   kept), `tests-popup`, `uncovered-rules-popup`; footnote back-links (`<a href="#fr-…">↩</a>`); and, with
//!   [`HiddenLines::Drop`], `boring` (below). Images are dropped (no alt text).
//! - **Prose**: tags are stripped, character references decoded ([`decode_entities`]), and runs of HTML
//!   whitespace (space, tab, CR, LF, FF) collapse to one space, as a browser renders them.
//! - **No-break spaces**: `U+00A0` (`&nbsp;`) becomes a plain space, in prose and code, but is never collapsed —
//!   it renders as a space, and the docs use it for indentation (the Reference's grammar, `tree` output in the
//!   book's code blocks), where a tokenizer should see ordinary spaces.
//! - **Blocks**: paragraphs, headings, `pre`, `blockquote`, `table`, `figure`, `section`, `div`, `hr`, `dl` and
//!   top-level lists are separated by one blank line (`"\n\n"`); list items, table rows, `dt`/`dd`,
//!   `figcaption`, `summary` and `br` start a new line. List items get a `"- "` or `"N. "` marker (honouring
//!   `<ol start>`), indented two spaces per nesting level; table cells of a row are joined with `" | "`.
//! - **Code**: the content of `<pre>` (mdBook's `<pre><code>`) is kept verbatim — every space and newline, tags
//!   (highlighting `<span>`s) stripped, references decoded, CRLF normalised to LF. A newline right after `<pre>`
//!   is dropped (the HTML rule), as are trailing newlines and spaces at the end of the block.
//! - **Hidden lines**: rustdoc and mdBook mark the lines of a Rust example that the reader does not see by default
//!   (`# fn main() {` in the Markdown source) as `<span class="boring">`. [`HiddenLines::Drop`] (the default)
//!   removes them, so the text is what a reader of the page sees; [`HiddenLines::Keep`] keeps them, giving
//!   complete, compilable programs (about 10% more code lines; the wrappers are mostly `fn main() {` and
//!   `#![allow(unused)]`).
//! - The result is trimmed at the end; it never contains `"\n\n\n"` outside code blocks.

use std::borrow::Cow;

use crate::entities::NAMED;

/// What to do with the lines of Rust examples that mdBook hides (`<span class="boring">`). See the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HiddenLines {
    /// Drop them: the text is what the rendered page shows (default).
    #[default]
    Drop,
    /// Keep them: code blocks are complete programs.
    Keep,
}

/// Options of the HTML-to-text conversion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ExtractOptions {
    /// Hidden lines of Rust examples.
    pub hidden_lines: HiddenLines,
}

/// One converted page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The `<title>` text (decoded, whitespace collapsed), if any.
    pub title: Option<String>,
    /// The text of the first heading (`h1`–`h6`) inside `<main>`, if any.
    pub first_heading: Option<String>,
    /// The text of `<main>` (empty without one).
    pub text: String,
    /// The `lang` attribute of `<html>`, if any.
    pub lang: Option<String>,
    /// Whether the page has a `<main>` element (mdBook content pages do, redirects and `toc.html` do not).
    pub has_main: bool,
    /// Whether the page has `<meta http-equiv="refresh">` (a redirect).
    pub redirect: bool,
}

/// Converts one mdBook page: the text of its `<main>` element, its title, language and redirect marker.
pub fn extract_page(html: &str, opts: &ExtractOptions) -> Page {
    let mut page = Page::default();
    let mut conv = Converter::new(*opts);
    let mut main_depth = 0usize;
    let mut main_done = false;
    let mut in_title = false;
    let mut outer_skip: Option<(String, usize)> = None;
    for tok in Scanner::new(html) {
        // Outside `<main>`, skip the same subtrees as inside (navigation, sidebars, scripts), but keep `<head>` and
        // `<title>`: the title, language and redirect marker come from there.
        if let Some((name, depth)) = &mut outer_skip {
            match &tok {
                Tok::Start(t) if t.name == *name && !t.self_closing && !VOID.contains(&t.name.as_str()) => *depth += 1,
                Tok::End(n) if n == name => {
                    *depth -= 1;
                    if *depth == 0 {
                        outer_skip = None;
                    }
                }
                _ => {}
            }
            continue;
        }
        if main_depth == 0
            && let Tok::Start(t) = &tok
            && t.name != "head"
            && t.name != "title"
            && (SKIP_ELEMENTS.contains(&t.name.as_str()) || t.has_class(SKIP_CLASSES))
        {
            if !t.self_closing && !VOID.contains(&t.name.as_str()) {
                outer_skip = Some((t.name.clone(), 1));
            }
            continue;
        }
        if main_depth > 0 {
            match &tok {
                Tok::Start(t) if t.name == "main" && !t.self_closing => main_depth += 1,
                Tok::End(name) if name == "main" => {
                    main_depth -= 1;
                    if main_depth == 0 {
                        main_done = true;
                        continue;
                    }
                }
                _ => {}
            }
            if main_depth > 0 {
                conv.token(&tok);
            }
            continue;
        }
        match tok {
            Tok::Start(t) => match t.name.as_str() {
                "main" if !main_done && !t.self_closing => {
                    main_depth = 1;
                    page.has_main = true;
                }
                "html" => {
                    if let Some(lang) = t.attr("lang") {
                        page.lang = Some(decode_entities(lang).trim().to_string());
                    }
                }
                "meta" => {
                    if t.attr("http-equiv").is_some_and(|v| v.trim().eq_ignore_ascii_case("refresh")) {
                        page.redirect = true;
                    }
                }
                "title" => in_title = page.title.is_none(),
                _ => in_title = false,
            },
            Tok::RawText(raw) if in_title => {
                page.title = Some(collapse_whitespace(&decode_entities(raw)));
                in_title = false;
            }
            _ => in_title = false,
        }
    }
    page.first_heading = conv.first_heading.take();
    page.text = conv.finish();
    page
}

/// Converts a whole HTML fragment or document to text with the rules of the module docs (no `<main>` needed;
/// `<head>` is dropped).
pub fn html_to_text(html: &str, opts: &ExtractOptions) -> String {
    let mut conv = Converter::new(*opts);
    for tok in Scanner::new(html) {
        conv.token(&tok);
    }
    conv.finish()
}

/// Collapses runs of HTML whitespace to one space and trims both ends.
pub fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split(is_html_ws).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Appends `t` with every U+00A0 (no-break space) replaced by a plain space.
fn push_nbsp_as_space(out: &mut String, t: &str) {
    if t.contains('\u{a0}') {
        out.extend(t.chars().map(|c| if c == '\u{a0}' { ' ' } else { c }));
    } else {
        out.push_str(t);
    }
}

fn is_html_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0C')
}

fn is_html_ws_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0C')
}

// ---------------------------------------------------------------------------------------------------------------
// Character references

/// Decodes HTML character references: named ones (the 252 of HTML 4.01 plus common HTML5 names such as `&apos;`,
/// `&lbrace;`, `&nbsp;`; the trailing `;` is required) and numeric ones (`&#NNN;`, `&#xHH;`; the `;` is optional).
/// Numeric references follow the HTML rules: 0, surrogates and values above `U+10FFFF` become `U+FFFD`, and
/// 0x80–0x9F are read as Windows-1252 (`&#150;` is `–`). Anything else — unknown names, a bare `&` — is left as
/// written. Borrows when there is nothing to decode.
pub fn decode_entities(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'&') else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = first;
    while i < bytes.len() {
        if bytes[i] != b'&' {
            i += 1;
            continue;
        }
        match parse_reference(&s[i..]) {
            Some((ch, len)) => {
                out.push_str(&s[last..i]);
                out.push(ch);
                i += len;
                last = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&s[last..]);
    Cow::Owned(out)
}

/// Longest named reference in [`NAMED`] is well under this; longer runs are not looked up.
const MAX_ENTITY_NAME: usize = 32;

/// Parses a reference at the start of `t` (which starts with `&`): the character and the bytes consumed.
pub(crate) fn parse_reference(t: &str) -> Option<(char, usize)> {
    let b = t.as_bytes();
    debug_assert_eq!(b.first(), Some(&b'&'));
    if b.get(1) == Some(&b'#') {
        let (hex, start) = match b.get(2) {
            Some(b'x' | b'X') => (true, 3),
            _ => (false, 2),
        };
        let radix = if hex { 16 } else { 10 };
        let mut value: u32 = 0;
        let mut end = start;
        while let Some(d) = b.get(end).and_then(|&c| (c as char).to_digit(radix)) {
            // Saturate well above U+10FFFF: the value only needs to be recognised as out of range.
            value = value.saturating_mul(radix).saturating_add(d).min(0x0100_0000);
            end += 1;
        }
        if end == start {
            return None;
        }
        if b.get(end) == Some(&b';') {
            end += 1;
        }
        return Some((numeric_char(value), end));
    }
    let name_len = b[1..].iter().take(MAX_ENTITY_NAME + 1).take_while(|c| c.is_ascii_alphanumeric()).count();
    if name_len == 0 || name_len > MAX_ENTITY_NAME || b.get(1 + name_len) != Some(&b';') {
        return None;
    }
    let name = &t[1..1 + name_len];
    let idx = NAMED.binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes())).ok()?;
    let ch = char::from_u32(NAMED[idx].1)?;
    Some((ch, name_len + 2))
}

fn numeric_char(value: u32) -> char {
    const W1252: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,
        0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A,
        0x0153, 0x9D, 0x017E, 0x0178,
    ];
    let value = match value {
        0 => 0xFFFD,
        0x80..=0x9F => W1252[(value - 0x80) as usize],
        v => v,
    };
    char::from_u32(value).unwrap_or('\u{FFFD}')
}

// ---------------------------------------------------------------------------------------------------------------
// Scanner

/// A start tag: lower-cased name, raw attributes (name, undecoded value).
#[derive(Debug)]
pub(crate) struct Tag<'a> {
    pub(crate) name: String,
    attrs: Vec<(&'a str, &'a str)>,
    pub(crate) self_closing: bool,
}

impl<'a> Tag<'a> {
    /// The raw (undecoded) value of an attribute, matched case-insensitively; `""` for a bare attribute.
    pub(crate) fn attr(&self, name: &str) -> Option<&'a str> {
        self.attrs.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, v)| v)
    }

    fn has_class(&self, classes: &[&str]) -> bool {
        self.attr("class").is_some_and(|c| c.split(is_html_ws).any(|t| classes.contains(&t)))
    }
}

/// A token of the scanner. Comments, doctypes and processing instructions are skipped.
#[derive(Debug)]
pub(crate) enum Tok<'a> {
    /// Text between tags (undecoded).
    Text(&'a str),
    /// The content of a raw-text element (`script`, `style`, `title`, `textarea`, `xmp`), undecoded.
    RawText(&'a str),
    /// A start tag.
    Start(Tag<'a>),
    /// An end tag: the lower-cased name.
    End(String),
}

const RAW_TEXT: &[&str] = &["script", "style", "title", "textarea", "xmp"];

/// A streaming HTML tokenizer over a string: enough of HTML5 for generated pages (quoted attributes may contain
/// `>`, raw-text elements end only at their own end tag, a `<` not followed by a letter, `/`, `!` or `?` is text).
/// It never fails: malformed input still yields tokens, and an unterminated construct runs to the end.
#[derive(Debug)]
pub(crate) struct Scanner<'a> {
    s: &'a str,
    pos: usize,
    raw_end: Option<String>,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Scanner { s, pos: 0, raw_end: None }
    }

    fn find_from(&self, from: usize, needle: &[u8]) -> Option<usize> {
        let b = self.s.as_bytes();
        if from >= b.len() {
            return None;
        }
        b[from..].windows(needle.len()).position(|w| w == needle).map(|p| from + p)
    }

    fn find_byte(&self, from: usize, needle: u8) -> Option<usize> {
        let b = self.s.as_bytes();
        b.get(from..)?.iter().position(|&c| c == needle).map(|p| from + p)
    }

    /// Start of the end tag `</name` (case-insensitive, followed by whitespace, `/`, `>` or the end).
    fn find_raw_end(&self, name: &str) -> usize {
        let b = self.s.as_bytes();
        let mut i = self.pos;
        while let Some(lt) = self.find_from(i, b"</") {
            let after = lt + 2;
            let end = after + name.len();
            if end <= b.len()
                && b[after..end].eq_ignore_ascii_case(name.as_bytes())
                && b.get(end).is_none_or(|&c| is_html_ws_byte(c) || c == b'/' || c == b'>')
            {
                return lt;
            }
            i = after;
        }
        b.len()
    }

    fn name_end(&self, from: usize) -> usize {
        let b = self.s.as_bytes();
        let mut i = from;
        while i < b.len() && !is_html_ws_byte(b[i]) && b[i] != b'/' && b[i] != b'>' {
            i += 1;
        }
        i
    }

    /// Parses the attributes of a start tag from `i` to its `>`: (attributes, position after the tag, `/>`).
    fn attributes(&self, mut i: usize) -> (Vec<(&'a str, &'a str)>, usize, bool) {
        let s: &'a str = self.s;
        let b = s.as_bytes();
        let mut attrs = Vec::new();
        loop {
            while i < b.len() && is_html_ws_byte(b[i]) {
                i += 1;
            }
            if i >= b.len() {
                return (attrs, b.len(), false);
            }
            match b[i] {
                b'>' => return (attrs, i + 1, false),
                b'/' if b.get(i + 1) == Some(&b'>') => return (attrs, i + 2, true),
                b'/' => {
                    i += 1;
                    continue;
                }
                _ => {}
            }
            let name_start = i;
            // The first character may be `=` (HTML allows it); afterwards `=` ends the name.
            i += 1;
            while i < b.len() && !is_html_ws_byte(b[i]) && !matches!(b[i], b'=' | b'>' | b'/') {
                i += 1;
            }
            let name = &s[name_start..i];
            let mut j = i;
            while j < b.len() && is_html_ws_byte(b[j]) {
                j += 1;
            }
            let mut value = "";
            if b.get(j) == Some(&b'=') {
                j += 1;
                while j < b.len() && is_html_ws_byte(b[j]) {
                    j += 1;
                }
                match b.get(j) {
                    Some(&q @ (b'"' | b'\'')) => {
                        let close = self.find_byte(j + 1, q).unwrap_or(b.len());
                        value = &s[j + 1..close];
                        j = (close + 1).min(b.len());
                    }
                    Some(_) => {
                        let start = j;
                        while j < b.len() && !is_html_ws_byte(b[j]) && b[j] != b'>' {
                            j += 1;
                        }
                        value = &s[start..j];
                    }
                    None => {}
                }
                i = j;
            }
            attrs.push((name, value));
        }
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = Tok<'a>;

    fn next(&mut self) -> Option<Tok<'a>> {
        let s: &'a str = self.s;
        let b = s.as_bytes();
        loop {
            if let Some(name) = self.raw_end.take() {
                let end = self.find_raw_end(&name);
                let text = &s[self.pos..end];
                self.pos = end;
                if !text.is_empty() {
                    return Some(Tok::RawText(text));
                }
            }
            if self.pos >= b.len() {
                return None;
            }
            let pos = self.pos;
            if b[pos] != b'<' {
                let end = self.find_byte(pos + 1, b'<').unwrap_or(b.len());
                self.pos = end;
                return Some(Tok::Text(&s[pos..end]));
            }
            let next = b.get(pos + 1).copied();
            match next {
                Some(b'!') if b[pos..].starts_with(b"<!--") => {
                    self.pos = self.find_from(pos + 4, b"-->").map_or(b.len(), |e| e + 3);
                }
                Some(b'!' | b'?') => {
                    self.pos = self.find_byte(pos + 2, b'>').map_or(b.len(), |e| e + 1);
                }
                Some(b'/') if b.get(pos + 2).is_some_and(u8::is_ascii_alphabetic) => {
                    let name_end = self.name_end(pos + 2);
                    let name = s[pos + 2..name_end].to_ascii_lowercase();
                    self.pos = self.find_byte(name_end, b'>').map_or(b.len(), |e| e + 1);
                    return Some(Tok::End(name));
                }
                Some(c) if c.is_ascii_alphabetic() => {
                    let name_end = self.name_end(pos + 1);
                    let name = s[pos + 1..name_end].to_ascii_lowercase();
                    let (attrs, end, self_closing) = self.attributes(name_end);
                    self.pos = end;
                    if !self_closing && RAW_TEXT.contains(&name.as_str()) {
                        self.raw_end = Some(name.clone());
                    }
                    return Some(Tok::Start(Tag { name, attrs, self_closing }));
                }
                _ => {
                    // A literal `<`.
                    let end = self.find_byte(pos + 1, b'<').unwrap_or(b.len());
                    self.pos = end;
                    return Some(Tok::Text(&s[pos..end]));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Converter

const VOID: &[&str] =
    &["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"];

const SKIP_ELEMENTS: &[&str] = &[
    "script", "style", "head", "title", "nav", "button", "svg", "noscript", "template", "iframe", "select", "textarea",
    "object", "canvas", "audio", "video", "math",
];

const SKIP_CLASSES: &[&str] = &[
    "sidebar",
    "menu-bar",
    "nav-wrapper",
    "nav-wide-wrapper",
    "nav-chapters",
    "mobile-nav-chapters",
    "rule",
    "popup-container",
    "grammar-railroad",
    "tests-popup",
    "uncovered-rules-popup",
];

const PARAGRAPH_BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "figure",
    "blockquote",
    "details",
    "dl",
    "article",
    "aside",
    "header",
    "footer",
    "address",
    "fieldset",
    "main",
    "center",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "form",
];

const LINE_BLOCKS: &[&str] = &["li", "tr", "dt", "dd", "figcaption", "summary", "caption", "legend"];

fn is_heading(name: &str) -> bool {
    matches!(name, "h1" | "h2" | "h3" | "h4" | "h5" | "h6")
}

/// Text output with pending-break bookkeeping: breaks and spaces are materialised only before the next visible
/// character, so nothing dangles at block ends.
#[derive(Debug, Default)]
struct Out {
    s: String,
    brk: u8,
    space: bool,
    prefix: Option<String>,
    sep: Option<&'static str>,
}

impl Out {
    fn at_line_start(&self) -> bool {
        self.s.is_empty() || self.s.ends_with('\n')
    }

    fn block(&mut self, n: u8) {
        if self.prefix.is_some() {
            return; // A list marker waits for its item's first text; keep it on the marker's line.
        }
        self.brk = self.brk.max(n);
        self.space = false;
    }

    fn line_break(&mut self) {
        if self.prefix.is_some() || self.s.is_empty() {
            return;
        }
        self.brk = (self.brk + 1).min(2);
        self.space = false;
    }

    fn prep(&mut self) {
        if self.brk > 0 {
            if !self.s.is_empty() {
                let have = self.s.bytes().rev().take(2).take_while(|&c| c == b'\n').count() as u8;
                for _ in have..self.brk {
                    self.s.push('\n');
                }
            }
            self.brk = 0;
            self.space = false;
        }
        if let Some(p) = self.prefix.take() {
            self.s.push_str(&p);
            self.space = false;
            self.sep = None;
        }
        if let Some(sep) = self.sep.take() {
            if !self.at_line_start() {
                self.s.push_str(sep);
            }
            self.space = false;
        }
        if self.space {
            if !self.at_line_start() {
                self.s.push(' ');
            }
            self.space = false;
        }
    }

    fn text(&mut self, t: &str) {
        let b = t.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if is_html_ws_byte(b[i]) {
                self.space = true;
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !is_html_ws_byte(b[i]) {
                i += 1;
            }
            self.prep();
            push_nbsp_as_space(&mut self.s, &t[start..i]);
        }
    }

    fn verbatim(&mut self, t: &str) {
        if t.is_empty() {
            return;
        }
        self.space = false;
        self.prep();
        push_nbsp_as_space(&mut self.s, t);
    }

    fn finish(mut self) -> String {
        let end = self.s.trim_end_matches(is_html_ws).len();
        self.s.truncate(end);
        self.s
    }
}

#[derive(Debug)]
struct Converter {
    opts: ExtractOptions,
    out: Out,
    skip: Option<(String, usize)>,
    pre_depth: usize,
    pre_start: usize,
    pre_fresh: bool,
    lists: Vec<(bool, u64)>,
    cells: Vec<usize>,
    heading_start: Option<usize>,
    first_heading: Option<String>,
}

impl Converter {
    fn new(opts: ExtractOptions) -> Self {
        Converter {
            opts,
            out: Out::default(),
            skip: None,
            pre_depth: 0,
            pre_start: 0,
            pre_fresh: false,
            lists: Vec::new(),
            cells: Vec::new(),
            heading_start: None,
            first_heading: None,
        }
    }

    fn token(&mut self, tok: &Tok<'_>) {
        match tok {
            Tok::Start(t) => self.start(t),
            Tok::End(name) => self.end(name),
            Tok::Text(raw) => self.text(raw),
            Tok::RawText(_) => {} // script/style/title/textarea content: always inside a dropped element
        }
    }

    fn should_skip(&self, t: &Tag<'_>) -> bool {
        SKIP_ELEMENTS.contains(&t.name.as_str())
            || t.has_class(SKIP_CLASSES)
            || (self.opts.hidden_lines == HiddenLines::Drop && t.has_class(&["boring"]))
            || (t.name == "a" && t.attr("href").is_some_and(|h| h.starts_with("#fr-")))
    }

    fn start(&mut self, t: &Tag<'_>) {
        let void = VOID.contains(&t.name.as_str()) || t.self_closing;
        if let Some((name, depth)) = &mut self.skip {
            if *name == t.name && !void {
                *depth += 1;
            }
            return;
        }
        if self.should_skip(t) {
            if !void {
                self.skip = Some((t.name.clone(), 1));
            }
            return;
        }
        self.pre_fresh = false;
        let name = t.name.as_str();
        if self.pre_depth > 0 {
            if name == "br" {
                self.out.verbatim("\n");
            }
            if name == "pre" {
                self.pre_depth += 1;
            }
            return;
        }
        match name {
            "br" => self.out.line_break(),
            "hr" => self.out.block(2),
            "pre" => {
                self.out.block(2);
                self.pre_depth = 1;
                self.pre_fresh = true;
                self.pre_start = usize::MAX;
            }
            "ul" | "ol" => {
                self.out.block(if self.lists.is_empty() { 2 } else { 1 });
                let start = t.attr("start").and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(1);
                self.lists.push((name == "ol", start));
            }
            "li" => {
                self.out.block(1);
                let indent = "  ".repeat(self.lists.len().saturating_sub(1));
                let marker = match self.lists.last_mut() {
                    Some((true, n)) => {
                        let m = format!("{indent}{n}. ");
                        *n = n.saturating_add(1);
                        m
                    }
                    _ => format!("{indent}- "),
                };
                self.out.prefix = Some(marker);
            }
            "table" => {
                self.out.block(2);
                self.cells.push(0);
            }
            "tr" => {
                self.out.block(1);
                if let Some(c) = self.cells.last_mut() {
                    *c = 0;
                }
            }
            "td" | "th" => {
                if let Some(c) = self.cells.last_mut() {
                    if *c > 0 {
                        self.out.sep = Some(" | ");
                    }
                    *c += 1;
                }
            }
            _ if PARAGRAPH_BLOCKS.contains(&name) => {
                self.out.block(2);
                if is_heading(name) && self.first_heading.is_none() {
                    self.heading_start = Some(self.out.s.len());
                }
            }
            _ if LINE_BLOCKS.contains(&name) => self.out.block(1),
            _ => {}
        }
    }

    fn end(&mut self, name: &str) {
        if let Some((skip_name, depth)) = &mut self.skip {
            if skip_name == name {
                *depth -= 1;
                if *depth == 0 {
                    self.skip = None;
                }
            }
            return;
        }
        self.pre_fresh = false;
        if self.pre_depth > 0 {
            if name == "pre" {
                self.pre_depth -= 1;
                if self.pre_depth == 0 {
                    self.end_pre();
                }
            }
            return;
        }
        match name {
            "ul" | "ol" => {
                self.lists.pop();
                self.out.block(if self.lists.is_empty() { 2 } else { 1 });
            }
            "table" => {
                self.cells.pop();
                self.out.block(2);
            }
            _ if PARAGRAPH_BLOCKS.contains(&name) => {
                if is_heading(name)
                    && let Some(start) = self.heading_start.take()
                {
                    let h = collapse_whitespace(self.out.s.get(start..).unwrap_or(""));
                    if !h.is_empty() {
                        self.first_heading = Some(h);
                    }
                }
                self.out.block(2);
            }
            _ if LINE_BLOCKS.contains(&name) => self.out.block(1),
            _ => {}
        }
    }

    fn end_pre(&mut self) {
        if self.pre_start != usize::MAX {
            let s = &mut self.out.s;
            let keep = s[self.pre_start..].trim_end_matches(is_html_ws).len();
            s.truncate(self.pre_start + keep);
        }
        self.out.block(2);
    }

    fn text(&mut self, raw: &str) {
        if self.skip.is_some() {
            return;
        }
        let decoded = decode_entities(raw);
        if self.pre_depth == 0 {
            self.out.text(&decoded);
            return;
        }
        let mut t: &str = &decoded;
        if std::mem::take(&mut self.pre_fresh) {
            t = t.strip_prefix("\r\n").or_else(|| t.strip_prefix('\n')).unwrap_or(t);
        }
        if t.is_empty() {
            return;
        }
        if self.pre_start == usize::MAX {
            // Materialise the pending paragraph break first, so the block starts after it.
            self.out.space = false;
            self.out.prep();
            self.pre_start = self.out.s.len();
        }
        if t.contains('\r') {
            self.out.verbatim(&t.replace("\r\n", "\n").replace('\r', "\n"));
        } else {
            self.out.verbatim(t);
        }
    }

    fn finish(self) -> String {
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(html: &str) -> String {
        html_to_text(html, &ExtractOptions::default())
    }

    #[test]
    fn entities() {
        assert_eq!(decode_entities("a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&#39;"), "a & b <c> \"d\" 'e'");
        assert_eq!(decode_entities("&#x41;&#65;&#X42;&#150;&#0;&#xD800;&#x110000;"), "AAB–\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(decode_entities("&rsquo;&hellip;&nbsp;&mdash;&rarr;"), "’…\u{a0}—→");
        assert_eq!(decode_entities("&unknown; & &amp &; &#; &#x;"), "&unknown; & &amp &; &#; &#x;");
        assert_eq!(decode_entities("&#65x"), "Ax");
        assert!(matches!(decode_entities("plain"), Cow::Borrowed(_)));
        assert_eq!(decode_entities("&#99999999999999999999;"), "\u{FFFD}");
    }

    #[test]
    fn entity_table_sorted_and_decodable() {
        for w in NAMED.windows(2) {
            assert!(w[0].0.as_bytes() < w[1].0.as_bytes(), "{} !< {}", w[0].0, w[1].0);
        }
        for (name, cp) in NAMED {
            assert!(name.len() <= MAX_ENTITY_NAME);
            let c = char::from_u32(*cp).unwrap();
            assert_eq!(decode_entities(&format!("&{name};")), c.to_string());
        }
    }

    #[test]
    fn scanner_quotes_comments_raw_text() {
        let html = r#"<a title="x > y" href='z'>t</a><!-- <p> --><script>if (a<b) "</p>";</script ><x-y a=b/>"#;
        let toks: Vec<_> = Scanner::new(html).collect();
        let Tok::Start(a) = &toks[0] else { panic!() };
        assert_eq!(a.attr("title"), Some("x > y"));
        assert_eq!(a.attr("HREF"), Some("z"));
        assert!(matches!(&toks[1], Tok::Text("t")));
        assert!(matches!(&toks[2], Tok::End(n) if n == "a"));
        assert!(matches!(&toks[3], Tok::Start(t) if t.name == "script"));
        assert!(matches!(&toks[4], Tok::RawText(r#"if (a<b) "</p>";"#)));
        assert!(matches!(&toks[5], Tok::End(n) if n == "script"));
        assert!(matches!(&toks[6], Tok::Start(t) if t.name == "x-y" && t.attr("a") == Some("b/")));
        assert_eq!(toks.len(), 7);
    }

    #[test]
    fn scanner_malformed_never_panics() {
        for s in ["<", "<a", "<a b=\"", "</", "</a", "<!--", "<!", "<?x", "a < b", "<1>", "<a b='c", "<script>x"] {
            let _ = Scanner::new(s).count();
            let _ = text(s);
        }
        assert_eq!(text("a < b and c<=d"), "a < b and c<=d");
        assert_eq!(text("a<b>c"), "ac"); // `<b` starts a tag, as in a browser
        assert_eq!(text("x <1> y"), "x <1> y");
    }

    #[test]
    fn paragraphs_and_whitespace() {
        assert_eq!(text("<p>Hello\n  <em>big</em>\tworld.</p><p>Two</p>"), "Hello big world.\n\nTwo");
        assert_eq!(text("a<b>b</b>c <i> d </i> e"), "abc d e");
        assert_eq!(text("<h1>T</h1>\n\n\n<p> x </p>  "), "T\n\nx");
        assert_eq!(text("line<br>next<br/><br>after"), "line\nnext\n\nafter");
        assert_eq!(text("<div><div><p>deep</p></div></div><p>x</p>"), "deep\n\nx");
        assert_eq!(text("<p>a<br>&nbsp;&nbsp;b &nbsp; c</p><pre>\u{a0}x</pre>"), "a\n  b   c\n\n x");
    }

    #[test]
    fn lists_and_tables() {
        assert_eq!(text("<p>L:</p><ul><li>a</li><li><p>b</p></li></ul><p>end</p>"), "L:\n\n- a\n- b\n\nend");
        assert_eq!(text("<ol start=\"3\"><li>x<ul><li>y</li></ul></li><li>z</li></ol>"), "3. x\n  - y\n4. z");
        assert_eq!(
            text("<table><thead><tr><th>A</th><th>B</th></tr></thead><tr><td>1</td><td>2</td></tr></table>"),
            "A | B\n1 | 2"
        );
    }

    #[test]
    fn code_blocks_verbatim_with_highlighting() {
        let html = "<p>Code:</p><pre><code class=\"language-rust\"><span class=\"boring\">fn main() {\n</span>\
                    <span class=\"hljs-keyword\">let</span>  x = <span class=\"hljs-number\">1</span>;\n\n    \
                    <span class=\"hljs-keyword\">if</span> x &lt; 2 &amp;&amp; y &gt; 1 {}\n\
                    <span class=\"boring\">}</span>\n</code></pre><p>After</p>";
        assert_eq!(text(html), "Code:\n\nlet  x = 1;\n\n    if x < 2 && y > 1 {}\n\nAfter");
        let keep = html_to_text(html, &ExtractOptions { hidden_lines: HiddenLines::Keep });
        assert_eq!(keep, "Code:\n\nfn main() {\nlet  x = 1;\n\n    if x < 2 && y > 1 {}\n}\n\nAfter");
        assert_eq!(text("<pre>\nfirst\r\n  second\n\n</pre>"), "first\n  second");
        assert_eq!(text("<pre>   </pre><p>x</p>"), "x");
    }

    #[test]
    fn dropped_elements() {
        let html = "<nav class=\"x\"><p>toc</p><nav>inner</nav>still</nav><script>var a = '<p>';</script>\
                    <style>p{}</style><p>keep <button>Copy</button>this</p>\
                    <div class=\"rule\" id=\"r-x\"><a class=\"rule-link\"><span>[x<wbr>.y]</span></a></div>\
                    <svg><text>rail</text></svg><div class=\"grammar-railroad grammar-hidden\"><div>r</div></div>\
                    <p>and <img src=\"a.png\" alt=\"pic\">this</p>";
        assert_eq!(text(html), "keep this\n\nand this");
        let footnotes = "<p>x<sup class=\"footnote-reference\" id=\"fr-a-1\"><a href=\"#footnote-a\">1</a></sup></p>\
                         <ol class=\"footnote-definition\"><li id=\"footnote-a\"><p>Note. <a href=\"#fr-a-1\">↩</a></p></li></ol>";
        assert_eq!(text(footnotes), "x1\n\n1. Note.");
    }

    #[test]
    fn extract_page_main_title_lang() {
        let html = "<!DOCTYPE HTML><html lang=\"en\"><head><title>What Is Ownership? - The Rust Programming \
                    Language</title><script>const main = '<main>';</script></head><body>\
                    <nav class=\"sidebar\"><main>not this</main></nav><div class=\"page\"><main>\
                    <h2 id=\"x\"><a class=\"header\" href=\"#x\">What Is <code>Ownership</code>?</a></h2>\
                    <p>Body &amp; soul.</p></main><nav>prev next</nav></div></body></html>";
        let p = extract_page(html, &ExtractOptions::default());
        assert!(p.has_main);
        assert!(!p.redirect);
        assert_eq!(p.lang.as_deref(), Some("en"));
        assert_eq!(p.title.as_deref(), Some("What Is Ownership? - The Rust Programming Language"));
        assert_eq!(p.first_heading.as_deref(), Some("What Is Ownership?"));
        assert_eq!(p.text, "What Is Ownership?\n\nBody & soul.");
    }

    #[test]
    fn extract_redirect_page() {
        let html = "<html><head><meta http-equiv=\"Refresh\" content=\"0; url=ch01.html\"><title>Redirecting...\
                    </title></head><body><p>Redirecting to <a href=\"ch01.html\">ch01</a></p></body></html>";
        let p = extract_page(html, &ExtractOptions::default());
        assert!(!p.has_main);
        assert!(p.redirect);
        assert_eq!(p.text, "");
    }
}
