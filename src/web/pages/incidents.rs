//! The incidents: the list (open first), each draft rendered from its folder
//! (`incidents/<id>/incident.md`, Markdown → HTML with any raw HTML in it shown as text, the
//! chart drawn inline from `incident.json`), and the folder's files as downloads.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{Markup, PreEscaped, html};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};

use super::layout::{self, Nav, segment};
use super::{PageError, PageResult, PageSource};
use crate::incident::render::human_duration;
use crate::incident::{DIRECTORY, Incident, Summary, chart};

/// The largest draft document or file read (a draft is some tens of KiB; evidence.json of a
/// group incident a few MiB).
const FILE_LIMIT: u64 = 32 * 1024 * 1024;

/// One folder of the directory sink.
#[derive(Debug, Clone)]
pub struct Draft {
    pub id: String,
    /// What the lists show of `incident.json`, or why it could not be read.
    pub incident: Result<Summary, String>,
}

/// The drafts' summaries as last read, by folder, with the size and modification time of the
/// `incident.json` they were read from: a page view reads again only what changed. Every page
/// lists the drafts, and reading them all again took seconds after a mass outage (10,000
/// drafts: 2.3 s for the overview, 250 MB of memory).
#[derive(Debug, Default)]
pub struct SummaryCache(Mutex<HashMap<String, Cached>>);

/// A folder's summary and the stamp of the file it was read from.
type Cached = (FileStamp, Result<Summary, String>);

/// An `incident.json`'s size and modification time.
type FileStamp = (u64, Option<SystemTime>);

/// A name the pages accept for a draft folder or file: letters, digits, `.`, `_`, `-`, not
/// starting with a dot. Everything else (`..`, `/`, `%2F`, control characters) is refused.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn root(source: &PageSource) -> PathBuf {
    source.data_dir.join(DIRECTORY)
}

/// A draft's folder, if `id` names one (a real directory, not a symlink).
fn folder(source: &PageSource, id: &str) -> Option<PathBuf> {
    let path = root(source).join(id);
    let metadata = std::fs::symlink_metadata(&path).ok()?;
    (safe_name(id) && metadata.is_dir()).then_some(path)
}

/// Every draft, open ones first, then newest first; drafts whose `incident.json` cannot be read
/// are listed last with the reason.
pub fn load_all(source: &PageSource) -> PageResult<Vec<Draft>> {
    let root = root(source);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(
                anyhow::anyhow!("cannot list the drafts in {}: {e}", root.display()).into(),
            );
        }
    };
    let mut cache = source.summaries.0.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen = HashSet::new();
    let mut drafts = Vec::new();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let Some(folder) = folder(source, &id) else {
            continue;
        };
        let path = folder.join("incident.json");
        // Without a modification time (a file system that keeps none) nothing is cached.
        let stamp = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.len(), Some(m.modified().ok()?))));
        let incident = match (cache.get(&id), stamp) {
            (Some((cached, summary)), Some(stamp)) if *cached == stamp => summary.clone(),
            _ => {
                let summary = read_json(&path);
                if let Some(stamp) = stamp {
                    cache.insert(id.clone(), (stamp, summary.clone()));
                }
                summary
            }
        };
        seen.insert(id.clone());
        drafts.push(Draft { incident, id });
    }
    // Folders removed (retention) leave the cache too.
    cache.retain(|id, _| seen.contains(id));
    drop(cache);
    drafts.sort_by(|a, b| match (&a.incident, &b.incident) {
        (Ok(a), Ok(b)) => (!a.is_open(), std::cmp::Reverse(a.detected_at), &a.id).cmp(&(
            !b.is_open(),
            std::cmp::Reverse(b.detected_at),
            &b.id,
        )),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.id.cmp(&b.id),
    });
    Ok(drafts)
}

fn read_incident(folder: &Path) -> Result<Incident, String> {
    read_json(&folder.join("incident.json"))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = probes::files::read_small_string(path, FILE_LIMIT).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Drafts per page of the list. A mass outage opens thousands, and one page of all of them was
/// 2.4 MB of HTML at 10,000 drafts.
pub const PAGE_SIZE: usize = 100;

/// The list's page number from the query string (`page=N`, counted from 1; 1 without it). Other
/// parameters are ignored.
pub fn page_number(query: Option<&str>) -> PageResult<usize> {
    let mut pages = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("page="));
    let Some(value) = pages.next() else {
        return Ok(1);
    };
    if pages.next().is_some() {
        return Err(PageError::BadRequest(
            "`page` is given more than once: give it once, e.g. /incidents?page=2".into(),
        ));
    }
    match value.parse::<usize>() {
        Ok(page) if page >= 1 => Ok(page),
        _ => {
            let shown: String = value.chars().take(40).collect();
            Err(PageError::BadRequest(format!(
                "`page` must be a whole number from 1, e.g. /incidents?page=2 (got {shown:?})"
            )))
        }
    }
}

/// Page `page` of the drafts (open ones first, then newest first), [`PAGE_SIZE`] to a page.
pub fn list(source: &PageSource, page: usize) -> PageResult<Markup> {
    let drafts = load_all(source)?;
    let pages = drafts.len().div_ceil(PAGE_SIZE).max(1);
    if page > pages {
        return Err(PageError::NotFound(format!(
            "no page {page} of the incident list: it has {} of {PAGE_SIZE} ({})",
            counted(pages, "page"),
            counted(drafts.len(), "draft"),
        )));
    }
    let open = drafts
        .iter()
        .filter(|d| d.incident.as_ref().is_ok_and(|i| i.is_open()))
        .count();
    let first = (page - 1) * PAGE_SIZE;
    let shown = &drafts[first..(first + PAGE_SIZE).min(drafts.len())];
    let link = |to: usize| format!("/incidents?page={to}");
    let body = html! {
        @if drafts.is_empty() {
            p.muted { "No incident drafts in " (root(source).display()) "." }
        } @else {
            p #list-position {
                (counted(drafts.len(), "draft")) ", " (open) " open"
                @if pages > 1 {
                    "; page " (page) " of " (pages) ": drafts " (first + 1) "–" (first + shown.len())
                }
            }
            table.incidents {
                thead { tr {
                    th { "ID" } th { "Status" } th { "Severity" } th { "Detected" } th { "Duration" } th { "Title" }
                } }
                tbody {
                    @for draft in shown {
                        @match &draft.incident {
                            Ok(i) => tr class={ "status-" (i.status.as_str()) } {
                                td { a href={ "/incidents/" (segment(&draft.id)) } { (draft.id) } }
                                td.status { (i.status.as_str()) }
                                td { (i.severity) }
                                td { (i.detected_at.display()) }
                                td { (i.duration_s.map_or("open".into(), |s| human_duration(Duration::from_secs(s)))) }
                                td.title { (i.title) }
                            },
                            Err(error) => tr {
                                td { a href={ "/incidents/" (segment(&draft.id)) } { (draft.id) } }
                                td.error colspan="5" { "cannot read incident.json: " (error) }
                            },
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pages {
                    @if page > 1 {
                        a href=(link(1)) { "first" } " "
                        a href=(link(page - 1)) rel="prev" { "previous" } " "
                    }
                    @if page < pages {
                        a href=(link(page + 1)) rel="next" { "next" } " "
                        a href=(link(pages)) { "last" }
                    }
                }
            }
        }
    };
    Ok(layout::page("Incidents", Nav::Incidents, body))
}

/// "1 draft", "2 drafts".
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

pub fn draft(source: &PageSource, id: &str) -> PageResult<Markup> {
    let Some(folder) = folder(source, id) else {
        return Err(PageError::NotFound(format!("no incident draft {id:?}")));
    };
    let incident = read_incident(&folder);
    let markdown = match probes::files::read_small_string(&folder.join("incident.md"), FILE_LIMIT) {
        Ok(text) => Ok(text),
        Err(error) => match &incident {
            Ok(incident) => Ok(crate::incident::render::markdown(incident)),
            Err(_) => Err(error.to_string()),
        },
    };
    // The chart is drawn again from the data (never copied from chart.svg on disk).
    let chart_svg = incident
        .as_ref()
        .ok()
        .map(|i| inline_svg(&chart::render(i)));
    let files = files(&folder);
    let title = match &incident {
        Ok(i) => i.title.clone(),
        Err(_) => id.to_string(),
    };
    let body = html! {
        @if let Err(error) = &incident {
            p.error { "cannot read incident.json: " (error) }
        }
        @match &markdown {
            Ok(text) => article.draft { (PreEscaped(markdown_html(text, id, chart_svg.as_deref()))) },
            Err(error) => p.error { "cannot read incident.md: " (error) },
        }
        section #files {
            h2 { "Files" }
            ul {
                @for (name, size) in &files {
                    li {
                        a href={ "/incidents/" (segment(id)) "/files/" (segment(name)) } download { (name) }
                        " (" (probes::files::human_size(*size)) ")"
                    }
                }
            }
        }
    };
    Ok(layout::page(&title, Nav::Incidents, body))
}

/// The `<svg>` element of a chart document (without its XML declaration).
fn inline_svg(document: &str) -> String {
    document
        .find("<svg")
        .map_or_else(String::new, |start| document[start..].to_string())
}

/// A draft's Markdown as HTML. Raw HTML in it becomes text (pulldown-cmark would pass it
/// through); the chart image becomes the inline chart; relative links point at the draft's files;
/// only http(s) and mailto links are kept besides.
pub fn markdown_html(markdown: &str, id: &str, chart_svg: Option<&str>) -> String {
    let mut in_chart = false;
    let link = |dest: CowStr<'_>| -> CowStr<'static> {
        let dest = dest.into_string();
        if ["http://", "https://", "mailto:"]
            .iter()
            .any(|scheme| dest.starts_with(scheme))
        {
            dest.into()
        } else if safe_name(&dest) {
            format!("/incidents/{}/files/{}", segment(id), segment(&dest)).into()
        } else {
            "#".into()
        }
    };
    let events = Parser::new_ext(markdown, Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS)
        .filter_map(|event| match event {
            Event::Html(text) | Event::InlineHtml(text) => Some(Event::Text(text)),
            Event::Start(Tag::Image { dest_url, .. }) if dest_url.as_ref() == "chart.svg" => {
                in_chart = true;
                Some(Event::Html(
                    chart_svg.unwrap_or_default().to_string().into(),
                ))
            }
            Event::End(TagEnd::Image) if in_chart => {
                in_chart = false;
                None
            }
            _ if in_chart => None,
            // Other images become links: the files are downloads, not pictures.
            Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            })
            | Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) => Some(Event::Start(Tag::Link {
                link_type,
                dest_url: link(dest_url),
                title,
                id,
            })),
            Event::End(TagEnd::Image) => Some(Event::End(TagEnd::Link)),
            other => Some(other.into_static()),
        });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

/// The regular files of a draft folder with safe names, and their sizes.
fn files(folder: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
                    (safe_name(&name) && metadata.is_file()).then_some((name, metadata.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// One file of a draft, as a download.
pub fn file(source: &PageSource, id: &str, name: &str) -> PageResult<Response> {
    let refused = || PageError::NotFound(format!("no file {name:?} in incident draft {id:?}"));
    if !safe_name(name) {
        return Err(refused());
    }
    let folder = folder(source, id).ok_or_else(refused)?;
    let path = folder.join(name);
    // Not a symlink (it could point anywhere), and read_small refuses FIFOs and devices.
    let metadata = std::fs::symlink_metadata(&path).map_err(|_| refused())?;
    if !metadata.is_file() {
        return Err(refused());
    }
    let bytes = probes::files::read_small(&path, FILE_LIMIT).map_err(|e| anyhow::anyhow!(e))?;
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("md" | "jsonl" | "txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn example_draft() -> serde_json::Value {
        serde_json::from_str(include_str!("../../../docs/examples/incident.json"))
            .expect("the example draft")
    }

    /// `example` as draft `id` with `status`, in the data directory `data`.
    fn write_draft(data: &Path, example: &serde_json::Value, id: &str, status: &str) -> PathBuf {
        let mut draft = example.clone();
        draft["id"] = id.into();
        draft["status"] = status.into();
        let folder = data.join(DIRECTORY).join(id);
        std::fs::create_dir_all(&folder).expect("folder");
        let path = folder.join("incident.json");
        std::fs::write(&path, draft.to_string()).expect("write");
        path
    }

    /// A data directory with `n` drafts, every eighth one open.
    pub(in crate::web::pages) fn many_drafts(n: usize) -> (tempfile::TempDir, PageSource) {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::store::Store::open(dir.path()).expect("store");
        let example = example_draft();
        for i in 1..=n {
            let status = if i % 8 == 0 { "open" } else { "resolved" };
            write_draft(dir.path(), &example, &format!("20261121-{i:03}"), status);
        }
        let source = PageSource::new(dir.path(), None).expect("source");
        (dir, source)
    }

    /// After a mass outage the list is paged: open drafts first, [`PAGE_SIZE`] to a page, with
    /// where the page sits and links to the others; a page past the end is a clear 404.
    #[test]
    fn the_list_is_paged_with_the_open_drafts_first() {
        let (_dir, source) = many_drafts(250);
        let rows = |html: &str, class: &str| html.matches(&format!("<tr class=\"{class}")).count();

        let first = list(&source, 1).expect("page 1").into_string();
        assert_eq!(rows(&first, "status-"), PAGE_SIZE, "{first}");
        assert_eq!(
            rows(&first, "status-open"),
            31,
            "every open draft is on page 1"
        );
        assert!(
            first.contains("250 drafts, 31 open; page 1 of 3: drafts 1–100"),
            "{first}"
        );
        assert!(
            first.contains("href=\"/incidents?page=2\" rel=\"next\""),
            "{first}"
        );
        assert!(first.contains("href=\"/incidents?page=3\""), "{first}");
        assert!(!first.contains("rel=\"prev\""), "{first}");

        let last = list(&source, 3).expect("page 3").into_string();
        assert_eq!(rows(&last, "status-resolved"), 50, "{last}");
        assert!(last.contains("page 3 of 3: drafts 201–250"), "{last}");
        assert!(
            last.contains("href=\"/incidents?page=2\" rel=\"prev\""),
            "{last}"
        );
        assert!(!last.contains("rel=\"next\""), "{last}");

        match list(&source, 4) {
            Err(PageError::NotFound(message)) => assert_eq!(
                message,
                "no page 4 of the incident list: it has 3 pages of 100 (250 drafts)"
            ),
            other => panic!("page 4: {other:?}"),
        }
    }

    #[test]
    fn the_page_number_is_a_whole_number_from_one() {
        for (query, page) in [
            (None, 1),
            (Some(""), 1),
            (Some("page=2"), 2),
            (Some("sort=x&page=3"), 3),
        ] {
            assert_eq!(page_number(query).expect("a page"), page, "{query:?}");
        }
        for query in [
            "page=0",
            "page=",
            "page=abc",
            "page=-1",
            "page=99999999999999999999999",
            "page=1&page=2",
        ] {
            match page_number(Some(query)) {
                Err(PageError::BadRequest(message)) => {
                    assert!(message.contains("`page`"), "{query}: {message}")
                }
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    /// Every page lists the drafts: a view reads again only the `incident.json` files that
    /// changed (size or modification time), and forgets the folders that are gone.
    #[test]
    fn the_drafts_are_read_again_only_when_their_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::store::Store::open(dir.path()).expect("store");
        let source = PageSource::new(dir.path(), None).expect("source");
        let example = example_draft();
        let write = |id: &str, status: &str| write_draft(dir.path(), &example, id, status);
        let listed = || -> Vec<String> {
            load_all(&source)
                .expect("drafts")
                .iter()
                .map(|d| match &d.incident {
                    Ok(s) => format!("{} {} {}", d.id, s.status.as_str(), s.affects("far")),
                    Err(error) => format!("{} error {error}", d.id),
                })
                .collect()
        };
        write("20261121-001", "resolved");
        let second = write("20261121-002", "open");
        assert_eq!(
            listed(),
            ["20261121-002 open true", "20261121-001 resolved true"]
        );

        // The same size and time: not read again (this garbage would show as an error).
        let stamp = std::fs::metadata(&second).expect("metadata");
        std::fs::write(&second, "x".repeat(stamp.len() as usize)).expect("garbage");
        std::fs::File::options()
            .write(true)
            .open(&second)
            .and_then(|f| f.set_modified(stamp.modified().expect("mtime")))
            .expect("set mtime");
        assert_eq!(
            listed(),
            ["20261121-002 open true", "20261121-001 resolved true"]
        );
        // A change is read: the draft resolved, and the garbage is an error once it is read.
        write("20261121-001", "open");
        std::fs::write(&second, "x").expect("garbage");
        let now = listed();
        assert_eq!(now[0], "20261121-001 open true");
        assert!(now[1].starts_with("20261121-002 error "), "{now:?}");
        std::fs::remove_dir_all(dir.path().join(DIRECTORY).join("20261121-002")).expect("rm");
        assert_eq!(listed(), ["20261121-001 open true"]);
        assert_eq!(source.summaries.0.lock().expect("lock").len(), 1);
    }

    #[test]
    fn raw_html_in_a_draft_is_text_and_links_stay_inside_the_draft() {
        let html = markdown_html(
            "# <script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n\
             ![latency](chart.svg)\n\n[evidence](evidence.json) [up](../../etc/passwd) \
             [js](javascript:alert(3)) [site](https://example.net/)\n",
            "20261121-001",
            Some("<svg class=\"chart\"></svg>"),
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(2)&gt;"),
            "{html}"
        );
        assert!(html.contains("<svg class=\"chart\"></svg>"), "{html}");
        assert!(
            html.contains("href=\"/incidents/20261121-001/files/evidence.json\""),
            "{html}"
        );
        assert!(!html.contains("passwd\""), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://example.net/\""), "{html}");
    }

    #[test]
    fn only_plain_names_are_safe() {
        for good in ["incident.md", "evidence.json", "20261121-001", "chart.svg"] {
            assert!(safe_name(good), "{good}");
        }
        for bad in [
            "", "..", ".hidden", "../x", "a/b", "a\\b", "a%2Fb", "a\nb", "a b",
        ] {
            assert!(!safe_name(bad), "{bad:?}");
        }
    }
}
