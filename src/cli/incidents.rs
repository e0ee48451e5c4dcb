//! `vantage incidents list` and `vantage incidents show ID`: the incident drafts this agent wrote,
//! read from its data directory (`incidents.db`; the documents are in `incidents/<id>/`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::incident::render::{self, human_duration};
use crate::incident::{DB_FILE, DIRECTORY, IncidentDb};

use super::table;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    location: super::DataDirArgs,
    #[command(subcommand)]
    command: IncidentsCommand,
}

#[derive(Debug, Subcommand)]
enum IncidentsCommand {
    /// Every incident, newest first: id, status, severity, detected, duration, title.
    List,
    /// One incident's status document (Markdown), or its data with --json.
    Show {
        /// The incident id, e.g. 20261121-001 (see `vantage incidents list`).
        id: String,
        /// Print incident.json instead of the Markdown document.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let Some(data_dir) = args.location.resolve() else {
        return Ok(ExitCode::from(2));
    };
    if !data_dir.join(DB_FILE).exists() {
        anyhow::bail!(
            "no incident state at {}: the agent has not run with this data directory (point at it with --config/--data-dir)",
            data_dir.join(DB_FILE).display()
        );
    }
    let db = IncidentDb::open(&data_dir)?;
    match &args.command {
        IncidentsCommand::List => {
            let summaries = db.summaries()?;
            if summaries.is_empty() {
                println!("no incidents in {}", db.path().display());
                return Ok(ExitCode::SUCCESS);
            }
            let mut unreadable = Vec::new();
            let rows: Vec<Vec<String>> = summaries
                .into_iter()
                .map(|(id, summary)| match summary {
                    Ok(i) => vec![
                        id,
                        i.status.as_str().to_string(),
                        i.severity,
                        i.detected_at.display(),
                        match i.duration_s {
                            Some(s) => human_duration(Duration::from_secs(s)),
                            None => "open".into(),
                        },
                        i.title,
                    ],
                    Err(error) => {
                        unreadable.push(error);
                        let unknown = || "?".to_string();
                        vec![id, unknown(), unknown(), unknown(), unknown(), unknown()]
                    }
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &["ID", "STATUS", "SEVERITY", "DETECTED", "DURATION", "TITLE"],
                    &rows,
                    &[],
                )
            );
            if unreadable.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "{} of {} incidents in {} cannot be read (written by a newer vantage, or damaged); \
                 the first: {}",
                unreadable.len(),
                rows.len(),
                db.path().display(),
                unreadable[0]
            );
            Ok(ExitCode::from(1))
        }
        IncidentsCommand::Show { id, json } => {
            let Some(incident) = db.get(id)? else {
                eprintln!(
                    "no incident {id:?} in {}; see `vantage incidents list`",
                    db.path().display()
                );
                return Ok(ExitCode::from(1));
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&incident)?);
            } else {
                print!("{}", render::markdown(&incident));
                // On stderr, so that stdout stays the document to paste.
                eprintln!(
                    "(documents: {})",
                    data_dir.join(DIRECTORY).join(&incident.id).display()
                );
                for sink in db.sink_progress(&incident.id)? {
                    let missing = match &sink.last_error {
                        Some(error) if sink.delivered < sink.events => {
                            format!(", last error: {error}")
                        }
                        _ if sink.delivered < sink.events => ", not tried yet".into(),
                        _ => String::new(),
                    };
                    eprintln!(
                        "(sink {}: {} of {} events delivered{missing})",
                        sink.sink, sink.delivered, sink.events
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
