//! Plain-text tables for people.

/// `rows` as JSON, or as a table of `header` and the cells `cells` makes of each row.
pub fn print<T: serde::Serialize>(
    rows: &[T],
    json: bool,
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
    } else {
        print!("{}", table(header, &rows.iter().map(cells).collect::<Vec<_>>()));
    }
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `1.5 µs`, `12 ms`, `3.2 s`; `-` when unknown.
pub fn latency(nanos: Option<u64>) -> String {
    match nanos {
        None => "-".into(),
        Some(u64::MAX) => "> 18 min".into(),
        Some(n) if n < 1_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        Some(n) if n < 1_000_000_000 => format!("{:.1} ms", n as f64 / 1e6),
        Some(n) => format!("{:.1} s", n as f64 / 1e9),
    }
}

/// `42s`, `5m12s`, `3h04m`, `2d03h`.
pub fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_figures_read_well() {
        let out = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(out, "A    LONGER\nxyz  1\n");
        assert_eq!(latency(Some(1_500)), "1.5 µs");
        assert_eq!(latency(Some(12_000_000)), "12.0 ms");
        assert_eq!(latency(None), "-");
        assert_eq!(
            (uptime(42), uptime(312), uptime(11_040), uptime(183_600)),
            ("42s".into(), "5m12s".into(), "3h04m".into(), "2d03h".into())
        );
    }
}
