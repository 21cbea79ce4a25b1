//! What `torchwire-bench load` sends: rows of floats (read from a CSV file, or synthetic) and texts
//! (read from a file, or one repeated), cut into the per-request batches that the request
//! templates of every target are built from.
//!
//! Pure data: no networking and no knowledge of any target's wire format (that is `peers.rs`).
//! Files are read once, before the run, so that parsing never shows up in the latencies.

use std::path::Path;

use anyhow::{Context, bail};

/// A ~12-token English sentence (with special tokens), the default text of `load` and `raw`.
pub const DEFAULT_TEXT: &str = "The service was quick and the food was really good.";

/// Most distinct request bodies prepared for a run: requests cycle through them. A file whose
/// rows do not divide evenly into requests would otherwise need up to `rows × lines` bodies.
pub const MAX_DISTINCT_REQUESTS: usize = 1024;

/// Rows of a CSV file of floats: one row per line; blank lines and lines starting with `#` are
/// skipped, and so is a first data line that is not all numbers (a header). Every row must
/// have as many values as the first.
pub fn parse_csv(text: &str, origin: &str) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let mut seen_data_line = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed: Result<Vec<f32>, _> = line.split(',').map(|v| v.trim().parse::<f32>()).collect();
        let first_data_line = !seen_data_line;
        seen_data_line = true;
        let row = match parsed {
            Ok(row) => row,
            Err(_) if first_data_line => continue,
            Err(e) => bail!("{origin}:{}: not a row of numbers ({e}): {line:?}", n + 1),
        };
        if let Some(v) = row.iter().find(|v| !v.is_finite()) {
            bail!("{origin}:{}: {v} is not a finite number", n + 1);
        }
        if let Some(first) = rows.first()
            && row.len() != first.len()
        {
            bail!("{origin}:{}: ragged rows: {} values, but the first row has {}", n + 1, row.len(), first.len());
        }
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("{origin}: no rows of numbers (only blank lines, comments or a header)");
    }
    Ok(rows)
}

/// [`parse_csv`] on a file.
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_csv(&text, &path.display().to_string())
}

/// Texts of a text file: one per line, trailing whitespace and blank lines dropped.
pub fn parse_texts(text: &str, origin: &str) -> anyhow::Result<Vec<String>> {
    let texts: Vec<String> =
        text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).map(String::from).collect();
    if texts.is_empty() {
        bail!("{origin}: no texts (the file is empty or blank)");
    }
    Ok(texts)
}

/// [`parse_texts`] on a file.
pub fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_texts(&text, &path.display().to_string())
}

/// `items` cut into batches of `per`, wrapping around the end: batch `k` starts at item
/// `k × per mod len`. Enough batches to come back to the start (at most
/// [`MAX_DISTINCT_REQUESTS`]), so cycling through them cycles through the items evenly.
pub fn batches<T: Clone>(items: &[T], per: usize) -> Vec<Vec<T>> {
    if items.is_empty() || per == 0 {
        return Vec::new();
    }
    let count = (items.len() / gcd(items.len(), per)).min(MAX_DISTINCT_REQUESTS);
    (0..count).map(|k| (0..per).map(|j| items[(k * per + j) % items.len()].clone()).collect()).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `rows × width` synthetic features: small, deterministic, different per element.
pub fn synthetic_rows(rows: usize, width: usize) -> Vec<Vec<f32>> {
    (0..rows).map(|r| (0..width).map(|c| (((r * width + c) % 17) as f32) * 0.37 + 1.0).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_skips_comments_blank_lines_and_a_header() {
        let rows = parse_csv("# made by hand\nage,bp\n\n 63, 145.5\n#x\n37,130\n", "t.csv").unwrap();
        assert_eq!(rows, vec![vec![63.0, 145.5], vec![37.0, 130.0]]);
    }

    #[test]
    fn csv_without_header_keeps_its_first_row() {
        assert_eq!(parse_csv("1,2\n3,4", "t.csv").unwrap().len(), 2);
    }

    #[test]
    fn csv_errors_say_where() {
        let ragged = parse_csv("1,2,3\n4,5\n", "t.csv").unwrap_err().to_string();
        assert!(ragged.contains("t.csv:2") && ragged.contains("ragged"), "{ragged}");
        let word = parse_csv("a,b\n1,2\n3,x\n", "t.csv").unwrap_err().to_string();
        assert!(word.contains("t.csv:3"), "{word}");
        let empty = parse_csv("# nothing\nname,value\n\n", "t.csv").unwrap_err().to_string();
        assert!(empty.contains("no rows"), "{empty}");
        assert!(parse_csv("1,NaN\n", "t.csv").is_err());
    }

    #[test]
    fn texts_drop_blank_lines_and_refuse_an_empty_file() {
        assert_eq!(parse_texts("good\n\n  \nbad  \n", "t.txt").unwrap(), vec!["good", "bad"]);
        assert!(parse_texts("\n \n", "t.txt").unwrap_err().to_string().contains("no texts"));
    }

    #[test]
    fn files_are_read_and_a_missing_file_is_named() {
        let dir = std::env::temp_dir().join(format!("torchwire-workload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("rows.csv");
        std::fs::write(&csv, "a,b\n1,2\n").unwrap();
        assert_eq!(read_csv(&csv).unwrap(), vec![vec![1.0, 2.0]]);
        let err = read_texts(&dir.join("missing.txt")).unwrap_err().to_string();
        assert!(err.contains("missing.txt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn batches_wrap_and_cover_every_item() {
        let b = batches(&[1, 2, 3], 2);
        assert_eq!(b, vec![vec![1, 2], vec![3, 1], vec![2, 3]]);
        assert_eq!(batches(&[1, 2, 3, 4], 2), vec![vec![1, 2], vec![3, 4]]);
        assert_eq!(batches(&[7], 3), vec![vec![7, 7, 7]]);
        let many: Vec<u32> = (0..5000).collect();
        assert_eq!(batches(&many, 1).len(), MAX_DISTINCT_REQUESTS);
    }
}
