//! `crmgate export`: asks a running gateway for an export and writes the
//! items as NDJSON to a file or stdout, with progress on stderr.
//!
//! It calls the gateway (not the CRM), so the export shares the budgets
//! with every other caller. Exit codes: 0 when the summary line says
//! complete; 1 when the export is incomplete (the resume point is printed)
//! or the output cannot be written; 2 for bad arguments; 3 when the gateway
//! cannot be reached or refuses. The client key is sent in the `X-API-KEY`
//! header only and never printed: not in a message, not in progress.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::HeaderValue;
use serde_json::Value;
use url::Url;

use super::progress::{Mode, Progress, Totals};
use super::{EXPORT_HEADER, PAGES_HEADER, TOTAL_HEADER};

/// `crmgate export`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The gateway's API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// The client key (prefer the CRMGATE_KEY environment variable: a
    /// command line is visible to other users of the machine).
    #[arg(long, env = "CRMGATE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The list or history method, e.g. /api/v5/orders or
    /// /acme/api/v5/orders/history.
    pub path: String,
    /// A request parameter, NAME=VALUE (repeatable), e.g. `filter[status]=new`.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// History: start after this entry id (`filter[sinceId]`).
    #[arg(long)]
    pub since_id: Option<u64>,
    /// Write the items here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Progress display: auto (a bar on a terminal, else a line every few
    /// seconds), bar (a bar even when stderr is not a terminal), plain, none.
    #[arg(long, default_value = "auto", hide = true)]
    pub progress: String,
}

/// How `crmgate export` ended: the exit code and what to print on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The process exit code.
    pub code: u8,
    /// The last words on stderr.
    pub message: String,
}

fn ended(code: u8, message: impl Into<String>) -> Ended {
    Ended {
        code,
        message: message.into(),
    }
}

/// The export URL: the gateway base, the method path, the parameters.
pub fn export_url(args: &ExportArgs) -> Result<Url, Ended> {
    let base = Url::parse(&args.gateway)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            ended(
                2,
                "--gateway must be an http:// or https:// URL, e.g. http://127.0.0.1:8080",
            )
        })?;
    let path = args.path.trim();
    if !path.starts_with('/') || !path.contains("/api/") || path.contains(['?', '#']) {
        return Err(ended(
            2,
            "PATH must be a method path such as /api/v5/orders or /acme/api/v5/orders/history (parameters go in --param)",
        ));
    }
    let mut url = base;
    let joined = format!("{}{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    let mut query = form_urlencoded::Serializer::new(String::new());
    for param in &args.params {
        let Some((name, value)) = param.split_once('=').filter(|(n, _)| !n.is_empty()) else {
            return Err(ended(
                2,
                "--param takes NAME=VALUE, e.g. 'filter[status]=new'",
            ));
        };
        if crate::rewrite::is_key_name(name) {
            return Err(ended(
                2,
                "the key goes in --key or CRMGATE_KEY, not in --param",
            ));
        }
        query.append_pair(name, value);
    }
    if let Some(since) = args.since_id {
        query.append_pair(super::walk::SINCE_ID, &since.to_string());
    }
    let query = query.finish();
    url.set_query((!query.is_empty()).then_some(query.as_str()));
    Ok(url)
}

/// The progress mode for `--progress`, and whether the bar is forced.
fn mode(flag: &str) -> Result<(Mode, bool), Ended> {
    Ok(match flag {
        "auto" if std::io::stderr().is_terminal() => (Mode::Bar, false),
        "auto" | "plain" => (Mode::Plain, false),
        "bar" => (Mode::Bar, true),
        "none" => (Mode::Quiet, false),
        _ => return Err(ended(2, "--progress must be auto, bar, plain or none")),
    })
}

/// Runs the export; what to print and the exit code.
pub async fn run(args: ExportArgs) -> Ended {
    match export(args).await {
        Ok(done) | Err(done) => done,
    }
}

async fn export(args: ExportArgs) -> Result<Ended, Ended> {
    let key = args
        .key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ended(2, "no client key: set CRMGATE_KEY (or pass --key)"))?;
    let mut key = HeaderValue::from_str(key)
        .map_err(|_| ended(2, "the client key holds characters a header cannot carry"))?;
    key.set_sensitive(true);
    let url = export_url(&args)?;
    let (mode, forced) = mode(&args.progress)?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| ended(1, format!("cannot create {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };

    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ended(3, format!("cannot set up the HTTP client: {e}")))?;
    let shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default())
        + &url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let response = client
        .get(url)
        .header("x-api-key", key)
        .header(EXPORT_HEADER, "ndjson")
        .send()
        .await
        .map_err(|e| {
            ended(
                3,
                format!("cannot reach the gateway at {shown}: {}", cause(&e)),
            )
        })?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let text = response.text().await.unwrap_or_default();
        let why = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["errorMsg"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "no JSON error message".into());
        return Err(ended(
            3,
            format!("the gateway refused the export: {} {why}", status.as_u16()),
        ));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    };
    let totals = Totals {
        items: header(TOTAL_HEADER),
        pages: header(PAGES_HEADER),
    };
    let mut progress = Progress::new(mode, totals, forced);
    let mut stream = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut items = 0u64;
    let mut summary: Option<Value> = None;
    let write_failed = |e: std::io::Error| ended(1, format!("cannot write the items: {e}"));
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                progress.finish(items);
                return Err(ended(
                    1,
                    format!(
                        "export incomplete: the stream broke off after {items} items ({}); no resume point was received",
                        cause(&e)
                    ),
                ));
            }
        };
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(n) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + n];
            start += n + 1;
            if line.starts_with(b"{\"crmgate_export\"") {
                summary = serde_json::from_slice::<Value>(line).ok();
                continue;
            }
            out.write_all(line).map_err(write_failed)?;
            out.write_all(b"\n").map_err(write_failed)?;
            items += 1;
        }
        pending.drain(..start);
        progress.update(items);
    }
    out.flush().map_err(write_failed)?;
    progress.finish(items);
    let Some(summary) = summary.map(|mut s| s["crmgate_export"].take()) else {
        return Err(ended(
            1,
            format!(
                "export incomplete: the stream ended after {items} items without a summary line"
            ),
        ));
    };
    Ok(judge(&summary, items))
}

/// The exit code and message for the summary line's inner object.
pub fn judge(summary: &Value, items: u64) -> Ended {
    let pages = summary["pages"].as_u64().unwrap_or(0);
    let last_id = match &summary["last_id"] {
        Value::Null => String::new(),
        id => format!(", last_id {id} (the next sync starts with --since-id {id})"),
    };
    if summary["complete"] == Value::Bool(true) {
        return ended(
            0,
            format!("export complete: {pages} pages, {items} items{last_id}"),
        );
    }
    let error = summary["error"].as_str().unwrap_or("unknown error");
    let resume = &summary["resume"];
    let how = match (&resume["page"], &resume["sinceId"]) {
        (Value::Number(page), _) => format!("resume with --param page={page}"),
        (_, Value::Number(id)) => format!("resume with --since-id {id}"),
        (_, Value::Null) if resume.get("sinceId").is_some() => {
            "resume with the same parameters (no entry was received)".into()
        }
        _ => "no resume point was given".into(),
    };
    ended(
        1,
        format!("export incomplete after {pages} pages, {items} items: {error}; {how}"),
    )
}

/// An error and its sources, without the URL.
fn cause(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(gateway: &str, path: &str, params: &[&str]) -> ExportArgs {
        ExportArgs {
            gateway: gateway.into(),
            key: Some("k".into()),
            path: path.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
            since_id: None,
            out: None,
            progress: "auto".into(),
        }
    }

    #[test]
    fn the_url_joins_base_path_and_encoded_parameters() {
        let mut a = args(
            "http://127.0.0.1:8080/",
            "/acme/api/v5/orders/history",
            &["filter[status]=new", "site=a b"],
        );
        a.since_id = Some(40);
        assert_eq!(
            export_url(&a).unwrap().as_str(),
            "http://127.0.0.1:8080/acme/api/v5/orders/history?filter%5Bstatus%5D=new&site=a+b&filter%5BsinceId%5D=40"
        );
        let a = args("http://gw.local", "/api/v5/orders", &[]);
        assert_eq!(
            export_url(&a).unwrap().as_str(),
            "http://gw.local/api/v5/orders"
        );
    }

    #[test]
    fn bad_arguments_are_code_2_with_a_precise_message() {
        let cases = [
            args("127.0.0.1:8080", "/api/v5/orders", &[]),
            args("ftp://x", "/api/v5/orders", &[]),
            args("http://x", "orders", &[]),
            args("http://x", "/api/v5/orders?limit=20", &[]),
            args("http://x", "/api/v5/orders", &["novalue"]),
            args("http://x", "/api/v5/orders", &["apiKey=secret"]),
        ];
        for a in cases {
            let e = export_url(&a).unwrap_err();
            assert_eq!(e.code, 2, "{a:?}");
            assert!(!e.message.contains("secret"), "{}", e.message);
        }
        assert_eq!(mode("sideways").unwrap_err().code, 2);
    }

    #[test]
    fn the_summary_decides_the_exit_code_and_the_resume_advice() {
        let done = json!({"complete": true, "pages": 3, "items": 250});
        assert_eq!(
            judge(&done, 250),
            ended(0, "export complete: 3 pages, 250 items")
        );
        let history = json!({"complete": true, "pages": 1, "items": 5, "last_id": 9});
        assert!(judge(&history, 5).message.contains("--since-id 9"));
        let failed = json!({"complete": false, "pages": 2, "items": 200,
            "error": "no slot", "resume": {"page": 3}});
        let e = judge(&failed, 200);
        assert_eq!(e.code, 1);
        assert!(
            e.message.ends_with("no slot; resume with --param page=3"),
            "{}",
            e.message
        );
        let failed = json!({"complete": false, "pages": 0, "items": 0,
            "error": "x", "resume": {"sinceId": 17}, "last_id": 17});
        assert!(judge(&failed, 0)
            .message
            .contains("resume with --since-id 17"));
    }
}
