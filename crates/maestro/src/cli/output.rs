//! Human output of the CLI: aligned tables, `key: value` blocks, times and
//! durations; and the one place that writes to stdout.

use std::io::Write;

use maestro_core::model::Timestamp;
use serde_json::Value;

/// Write `text` (and a newline) to stdout. A closed pipe (`maestro ... |
/// head`) ends the process quietly instead of panicking.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                stdout.write_all(b"\n")
            }
        })
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("maestro: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `v` as pretty JSON on stdout (the `--json` output of one command).
pub fn json(v: &Value) {
    out(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// A table whose columns are as wide as their widest cell, separated by two
/// spaces; the last column is not padded.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (shown in upper case as given).
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(width(c));
            }
        }
        let mut s = String::new();
        for line in std::iter::once(&self.headers).chain(self.rows.iter()) {
            let mut l = String::new();
            for (i, c) in line.iter().enumerate() {
                l.push_str(c);
                if i + 1 < n {
                    l.extend(std::iter::repeat_n(' ', widths[i] - width(c) + 2));
                }
            }
            s.push_str(l.trim_end());
            s.push('\n');
        }
        s
    }
}

/// Display width of a cell (characters; the CLI's cells are plain text).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// `key: value` lines with the values aligned. Empty values are left out.
pub fn block(pairs: &[(&str, String)]) -> String {
    let w = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| width(k))
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        s.push_str(k);
        s.push(':');
        s.extend(std::iter::repeat_n(' ', w - width(k) + 1));
        // Continuation lines of a multi-line value line up with the first.
        let mut lines = v.lines();
        s.push_str(lines.next().unwrap_or(""));
        s.push('\n');
        for l in lines {
            s.extend(std::iter::repeat_n(' ', w + 2));
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// `s` cut to `max` characters with an ellipsis.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Now, in ms since the epoch.
pub fn now_ms() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration in ms for humans: `12 ms`, `1.5 s`, `2m 03s`, `1h 02m`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        let s = ms as f64 / 1000.0;
        if s < 10.0 {
            format!("{s:.1} s")
        } else {
            format!("{} s", ms / 1000)
        }
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// How long ago `ts` was: `3s ago`, `5m ago`, `2h ago`, `4d ago` (`-` for 0).
pub fn ago(ts: Timestamp) -> String {
    if ts == 0 {
        return "-".into();
    }
    let now = now_ms();
    if ts > now {
        return format!("in {}", short_span(ts - now));
    }
    format!("{} ago", short_span(now - ts))
}

fn short_span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `ts` as UTC `2026-04-30 12:34:56Z` (`-` for 0).
pub fn time(ts: Timestamp) -> String {
    if ts == 0 {
        return "-".into();
    }
    let secs = ts / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// `ts` as `time (ago)`.
pub fn when(ts: Timestamp) -> String {
    if ts == 0 {
        return String::new();
    }
    format!("{} ({})", time(ts), ago(ts))
}

/// `HH:MM:SS.mmm` UTC of `ts` (event lines).
pub fn clock(ts: Timestamp) -> String {
    let rem = (ts / 1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ts % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A JSON value on one line (strings without quotes).
pub fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID", "STATUS", "NOTE"]);
        t.row(vec!["a".into(), "online".into(), "x".into()]);
        t.row(vec!["longer-id".into(), "off".into()]);
        assert_eq!(
            t.render(),
            "ID         STATUS  NOTE\na          online  x\nlonger-id  off\n"
        );
    }

    #[test]
    fn block_aligns_values() {
        let b = block(&[
            ("id", "a".into()),
            ("skipped", String::new()),
            ("status", "x\ny".into()),
        ]);
        assert_eq!(b, "id:     a\nstatus: x\n        y\n");
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(duration(12), "12 ms");
        assert_eq!(duration(1500), "1.5 s");
        assert_eq!(duration(42_000), "42 s");
        assert_eq!(duration(123_000), "2m 03s");
        assert_eq!(clock(1_700_000_000_123), "22:13:20.123");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
