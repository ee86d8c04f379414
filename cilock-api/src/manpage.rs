//! Man pages as both binaries write them (`cilock manpages`,
//! `cilock-daemon --manpage`): the title line, and the page text made
//! readable by groff and mandoc on any output device. The pages themselves
//! come from each binary's clap definition (clap_mangen).

/// `.TH TITLE SECTION "" "cilock VERSION" "cilock Manual"`: the title, the
/// section, no date (the page of a version is the same whenever it is
/// built; clap_mangen's own title line drops an empty date, which shifts
/// the source and manual into its place), the source and the manual's name;
/// then `.nh` and `.ad l` (as asciidoctor's and pandoc's pages): no
/// hyphenation, so flags and page names never break at a line end, and
/// lines not justified, so a long flag does not leave a line groff cannot
/// adjust.
pub fn title_line(title: &str, section: &str, version: &str) -> String {
    format!(".TH {title} {section} \"\" \"cilock {version}\" \"cilock Manual\"\n.nh\n.ad l\n")
}

/// The page as groff and mandoc read it without a preprocessor, on any
/// output device: non-ASCII characters of the help texts in ASCII (`…` as
/// `...`, dashes, arrows and quotes as groff's named glyphs, others as
/// `\[uXXXX]`), and the `Aq` string that each clap_mangen section defines
/// again defined once.
pub fn finish_page(page: &[u8]) -> Vec<u8> {
    const AQ: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let text = String::from_utf8_lossy(page);
    let mut out = String::with_capacity(text.len());
    let mut rest: &str = &text;
    if let Some(first) = rest.find(AQ) {
        out.push_str(&rest[..first + AQ.len()]);
        rest = &rest[first + AQ.len()..];
    }
    let rest = rest.replace(AQ, "");
    out.push_str(&rest);
    let mut escaped = String::with_capacity(out.len());
    for c in out.chars() {
        match c {
            c if c.is_ascii() => escaped.push(c),
            // Spelled so that every groff device has them (ASCII too).
            '\u{2026}' => escaped.push_str("..."),
            '\u{2014}' => escaped.push_str("\\(em"),
            '\u{2013}' => escaped.push_str("\\(en"),
            '\u{2192}' => escaped.push_str("\\(->"),
            '\u{201C}' => escaped.push_str("\\(lq"),
            '\u{201D}' => escaped.push_str("\\(rq"),
            c => escaped.push_str(&format!("\\[u{:04X}]", u32::from(c))),
        }
    }
    escaped.into_bytes()
}
