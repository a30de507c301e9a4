//! The generated regions of a markdown document: `<!-- generated: NAME -->` ... `<!-- end
//! generated -->`. The tool rewrites what is between the markers and nothing else, so the
//! prose around the figures stays the author's.

use anyhow::{bail, Result};

const END: &str = "<!-- end generated -->";

fn start_marker(name: &str) -> String {
    format!("<!-- generated: {name} -->")
}

/// Where the region `name` lies in `doc`: the byte range of its contents (between the line of
/// its start marker and the line of its end marker). An error names the region that is
/// missing, repeated or unterminated.
fn region(doc: &str, name: &str) -> Result<std::ops::Range<usize>> {
    let marker = start_marker(name);
    let mut found = doc.match_indices(&marker);
    let Some((at, _)) = found.next() else {
        bail!("has no '{marker}' line (each generated region starts with one)");
    };
    if found.next().is_some() {
        bail!("has '{marker}' more than once");
    }
    let Some(line_end) = doc[at..].find('\n') else { bail!("'{marker}' is the last line, without '{END}'") };
    let start = at + line_end + 1;
    let Some(length) = doc[start..].find(END) else { bail!("'{marker}' has no '{END}' after it") };
    if doc[start..start + length].contains("<!-- generated: ") {
        bail!("'{marker}' has another region's start before its '{END}'");
    }
    Ok(start..start + length)
}

/// Checks that `doc` has each of `names` as a well-formed region (before a long run, so a
/// broken document fails at once rather than after the measurements).
pub fn check_regions(doc: &str, names: &[&str]) -> Result<()> {
    for name in names {
        region(doc, name)?;
    }
    Ok(())
}

/// `doc` with the contents of region `name` replaced by `contents` (a newline is added when
/// missing, so the end marker keeps its own line).
pub fn replace_region(doc: &str, name: &str, contents: &str) -> Result<String> {
    if contents.contains("<!-- generated: ") || contents.contains(END) {
        bail!("the contents of region '{name}' hold a region marker");
    }
    let range = region(doc, name)?;
    let mut out = String::with_capacity(doc.len() + contents.len());
    out.push_str(&doc[..range.start]);
    out.push_str(contents);
    if !contents.is_empty() && !contents.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&doc[range.end..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Title\n\nprose\n\n<!-- generated: a -->\nold a\n<!-- end generated -->\n\nmore prose\n<!-- generated: b -->\n<!-- end generated -->\ntail\n";

    #[test]
    fn only_the_region_changes() {
        let doc = replace_region(DOC, "a", "new a\nline 2").unwrap();
        assert_eq!(
            doc,
            "# Title\n\nprose\n\n<!-- generated: a -->\nnew a\nline 2\n<!-- end generated -->\n\nmore prose\n<!-- generated: b -->\n<!-- end generated -->\ntail\n"
        );
        let doc = replace_region(&doc, "b", "| t |\n").unwrap();
        assert!(doc.ends_with("<!-- generated: b -->\n| t |\n<!-- end generated -->\ntail\n"), "{doc}");
        assert_eq!(replace_region(&doc, "a", "old a\n").unwrap().replace("| t |\n", ""), DOC);
    }

    #[test]
    fn broken_markers_are_named() {
        let message = |doc: &str, name: &str| replace_region(doc, name, "x").unwrap_err().to_string();
        assert!(message(DOC, "c").contains("no '<!-- generated: c -->' line"));
        let twice = format!("{DOC}<!-- generated: a -->\n<!-- end generated -->\n");
        assert!(message(&twice, "a").contains("more than once"));
        assert!(message("<!-- generated: a -->\ntext\n", "a").contains("no '<!-- end generated -->'"));
        let nested = "<!-- generated: a -->\n<!-- generated: b -->\n<!-- end generated -->\n";
        assert!(message(nested, "a").contains("another region's start"));
        assert!(check_regions(DOC, &["a", "b"]).is_ok());
        assert!(check_regions(DOC, &["a", "z"]).is_err());
        assert!(replace_region(DOC, "a", "<!-- end generated -->").is_err());
    }
}
