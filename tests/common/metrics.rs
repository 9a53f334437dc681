//! Reading the gateway's Prometheus exposition: the one text-format parser
//! of the integration tests, and the scrape of `/metrics`.
//!
//! The parser is strict: a line it cannot read fails the test, so a broken
//! exposition is never silently summed as zero. It only reads; it never
//! decides what a metric should be.

use super::client;

/// One sample of a text exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name, e.g. `crmgate_requests_total`.
    pub name: String,
    /// Label pairs in exposition order, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of a Prometheus text exposition (comments and blank lines
/// skipped). Fails the test on a line that is not a valid sample.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| parse_line(line).unwrap_or_else(|| panic!("bad exposition line: {line:?}")))
        .collect()
}

/// `name{k="v",...} value [timestamp]`, with `\\`, `\"` and `\n` escapes in
/// label values.
fn parse_line(line: &str) -> Option<Sample> {
    let (name, mut rest) = split_name(line)?;
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start();
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = split_name(inner)?;
            let (value, after) = quoted(after.trim_start().strip_prefix('=')?.trim_start())?;
            labels.push((key.to_string(), value));
            let after = after.trim_start();
            // A comma may also end the list (`{a="1",}`): the loop's
            // next turn then finds the brace.
            inner = match after.strip_prefix(',') {
                Some(next) => next,
                None if after.starts_with('}') => after,
                None => return None,
            };
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    // An optional timestamp (integer milliseconds), then nothing.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A metric or label name at the start of `s`, and what follows it.
fn split_name(s: &str) -> Option<(&str, &str)> {
    let end = s
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
        })
        .map_or(s.len(), |(i, _)| i);
    (end > 0).then(|| s.split_at(end))
}

/// A double-quoted label value at the start of `s`, unescaped, and what
/// follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 2..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                c @ ('\\' | '"') => value.push(c),
                _ => return None,
            },
            c => value.push(c),
        }
    }
    None
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// The sum of every sample of `name` whose labels include all of `labels`
/// (exact values), or `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = samples(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// GETs `{admin}/metrics`; fails the test unless it answers 200 with a
/// `text/plain` exposition.
pub async fn metrics_text(admin: &str) -> String {
    let resp = client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "content type {ctype}");
    resp.text().await.unwrap()
}

/// Scrapes `{admin}/metrics` and sums `name` over the samples that have
/// `labels`; 0 when there is none (a labelled counter appears only once
/// it has counted something).
pub async fn metric_now(admin: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&metrics_text(admin).await, name, labels).unwrap_or(0.0)
}
