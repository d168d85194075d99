//! `chorus archive` and `chorus prune` as the command line shows them: the listing printed as a table, CSV or JSON
//! with a progress bar, and the prune plan printed for a person to check. The work is done in
//! [`crate::search::listing`] and [`crate::retention`].

use chorus_connectors::parquet::ScanStats;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Error;
use crate::config::Config;
use crate::retention::{AudioPrunePlan, PrunePlan};
use crate::search::listing::{self, ArchiveQuery, ArchiveRow, Step};

/// Lists what `query` admits (see [`listing::list`]); `progress` shows a bar over the files on stderr.
pub fn query(config: &Config, query: &ArchiveQuery, progress: bool) -> Result<(Vec<ArchiveRow>, ScanStats), Error> {
    let mut bar: Option<ProgressBar> = None;
    listing::list(config, query, &mut |step| match step {
        Step::Planned { files } if progress => {
            let started = ProgressBar::new(files);
            started.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} files, {msg} rows ({elapsed})")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            started.set_prefix("chorus archive");
            bar = Some(started);
        }
        Step::Planned { .. } => {}
        Step::Read { rows } => {
            if let Some(bar) = &bar {
                bar.inc(1);
                bar.set_message(rows.to_string());
            }
        }
        Step::Done => {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
        }
    })
}

/// How `chorus archive` prints rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    Table,
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// A JSON array of objects.
    Json,
}

const COLUMNS: [&str; 9] =
    ["segment_id", "space", "sensor", "start_time", "end_time", "coverage", "label", "label_score", "cluster"];

fn fields(row: &ArchiveRow) -> [String; 9] {
    let segment = &row.segment;
    [
        segment.segment_id.clone(),
        segment.space.clone(),
        segment.sensor.clone(),
        segment.start_time.clone(),
        segment.end_time.clone(),
        format!("{:.3}", row.coverage),
        row.label.clone().unwrap_or_default(),
        row.label_score.map(|s| format!("{s:.3}")).unwrap_or_default(),
        row.cluster.clone().unwrap_or_default(),
    ]
}

/// Writes `rows` to `out` in `format`.
pub fn write(rows: &[ArchiveRow], format: Format, out: &mut impl std::io::Write) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)
        }
        Format::Csv => {
            let quote = |f: &str| {
                // A cell a spreadsheet would run as a formula (labels come from people) is kept as text.
                let f = if f.starts_with(['=', '+', '-', '@']) { format!("'{f}") } else { f.to_owned() };
                if f.contains([',', '"', '\n', '\r']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f }
            };
            writeln!(out, "{}", COLUMNS.join(","))?;
            for row in rows {
                writeln!(out, "{}", fields(row).iter().map(|f| quote(f)).collect::<Vec<_>>().join(","))?;
            }
            Ok(())
        }
        Format::Table => {
            let cells: Vec<[String; 9]> = rows.iter().map(fields).collect();
            let widths: Vec<usize> = (0..COLUMNS.len())
                .map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0).max(COLUMNS[c].len()))
                .collect();
            let line = |values: &[&str]| {
                let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}", w = *w)).collect();
                padded.join("  ").trim_end().to_owned()
            };
            writeln!(out, "{}", line(&COLUMNS))?;
            for row in &cells {
                writeln!(out, "{}", line(&row.iter().map(String::as_str).collect::<Vec<_>>()))?;
            }
            Ok(())
        }
    }
}

/// Prints `plan` for a person to check.
pub fn print_plan(plan: &PrunePlan, days: u32, out: &mut impl std::io::Write) -> std::io::Result<()> {
    if plan.partitions.is_empty() {
        return writeln!(
            out,
            "Nothing to prune: no partition holds segments from before {} ({days} days).",
            plan.cutoff
        );
    }
    writeln!(out, "Day partitions from before {} (older than {days} days):", plan.cutoff)?;
    let space_w = plan.partitions.iter().map(|p| p.space.len()).max().unwrap_or(0);
    for p in &plan.partitions {
        writeln!(
            out,
            "  {:<11}  space={:<space_w$}  date={}  {:>4} file(s)  {:>10}",
            p.dataset,
            p.space,
            p.date,
            p.files,
            human_bytes(p.bytes)
        )?;
    }
    let (files, bytes) = plan.size();
    writeln!(out, "In all: {} partition(s), {files} file(s), {}.", plan.partitions.len(), human_bytes(bytes))?;
    for snapshot in &plan.snapshots {
        writeln!(out, "Then: index snapshot {} (rebuilt from the archive at the next start).", snapshot.display())?;
    }
    for graph in &plan.graphs {
        writeln!(out, "Then: kNN graph {} (rebuilt from the index at the next start).", graph.display())?;
    }
    Ok(())
}

/// Prints an audio prune's `plan` for a person to check.
pub fn print_audio_plan(plan: &AudioPrunePlan, days: u32, out: &mut impl std::io::Write) -> std::io::Result<()> {
    if plan.partitions.is_empty() {
        return writeln!(out, "Nothing to prune: no partition from before {} ({days} days) holds audio.", plan.cutoff);
    }
    let keeping = if plan.keep_labelled { ", but that of segments carrying a given label" } else { "" };
    writeln!(out, "Day partitions from before {} (older than {days} days) whose audio goes{keeping}:", plan.cutoff)?;
    let space_w = plan.partitions.iter().map(|p| p.space.len()).max().unwrap_or(0);
    for p in &plan.partitions {
        writeln!(
            out,
            "  space={:<space_w$}  date={}  {:>4} file(s)  {:>10}, of which audio {:>10}",
            p.space,
            p.date,
            p.files,
            human_bytes(p.bytes),
            human_bytes(p.audio_bytes)
        )?;
    }
    let (files, bytes, audio) = plan.size();
    writeln!(
        out,
        "In all: {} partition(s), {files} file(s), {}, of which audio {}; every row stays.",
        plan.partitions.len(),
        human_bytes(bytes),
        human_bytes(audio)
    )
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
