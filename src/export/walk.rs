//! The walk: which page comes next (page number for lists, `sinceId` for
//! history), and the task that fetches pages ahead of the caller.
//!
//! [`Walk`] is the cursor and the tally, pure: it reads a page and says
//! what to ask for next. [`pump`] is the loop that fetches and hands pages
//! to the response body through a bounded channel: it reserves room for a
//! page *before* asking for it, so at most `export.prefetch` pages wait in
//! memory, and it stops at once, without another request, when the body
//! is dropped (the caller hung up). It never sees a key.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::ndjson::{self, ItemId, Lines, Page, Resume, Seen, Summary};
use crate::bodies::BodyLease;
use crate::rewrite::append_param;

/// The request parameter that carries the history cursor.
pub const SINCE_ID: &str = "filter[sinceId]";
/// The history parameter a first call may start from instead.
pub const START_DATE: &str = "filter[startDate]";

/// What to walk, from the caller's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// A `.../history` method: walked by `filter[sinceId]`.
    pub history: bool,
    /// The caller's parameters, raw, without `limit`, `page` (and, for
    /// history, `filter[sinceId]` and `filter[startDate]`).
    pub rest: String,
    /// Lists: the first page (the caller's `page`, else 1).
    pub first_page: u64,
    /// History: the caller's own `filter[sinceId]` / `filter[startDate]`
    /// pairs, raw, for the first request only.
    pub history_start: String,
    /// History: the caller's `filter[sinceId]`, for a resume point before
    /// the first entry.
    pub since_id: Option<String>,
    /// `limit` of every page.
    pub limit: u32,
}

impl Plan {
    /// Reads the caller's query for the method at `api_path`.
    pub fn new(api_path: &str, query: Option<&str>, limit: u32) -> Plan {
        let history = api_path.trim_end_matches('/').ends_with("/history");
        let mut plan = Plan {
            history,
            rest: String::new(),
            first_page: 1,
            history_start: String::new(),
            since_id: None,
            limit,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = form_urlencoded::parse(pair.as_bytes())
                .next()
                .unwrap_or_default();
            match &*name {
                "limit" => {}
                "page" if !history => plan.first_page = value.parse().unwrap_or(1).max(1),
                "page" => {}
                SINCE_ID | START_DATE if history => {
                    if name == SINCE_ID {
                        plan.since_id = Some(value.into_owned());
                    }
                    join(&mut plan.history_start, pair);
                }
                _ => join(&mut plan.rest, pair),
            }
        }
        plan
    }
}

fn join(to: &mut String, pair: &str) {
    if !to.is_empty() {
        to.push('&');
    }
    to.push_str(pair);
}

/// Where the walk stands: the next request, and what was written so far.
#[derive(Debug)]
pub struct Walk {
    plan: Plan,
    seen: Seen,
    /// The next request's query; `None` once the walk is done.
    next: Option<String>,
    /// Lists: the page `next` asks for.
    page: u64,
    pages: u64,
    items: u64,
    /// History: the id of the newest entry seen.
    last_id: Option<ItemId>,
}

impl Walk {
    /// A walk at its start.
    pub fn new(plan: Plan) -> Walk {
        let mut walk = Walk {
            page: plan.first_page,
            plan,
            seen: Seen::default(),
            next: None,
            pages: 0,
            items: 0,
            last_id: None,
        };
        walk.next = Some(walk.query(None));
        walk
    }

    /// The query of a request: the caller's parameters, then the cursor.
    fn query(&self, since: Option<&ItemId>) -> String {
        let mut q = self.plan.rest.clone().into_bytes();
        if self.plan.history {
            match since {
                Some(id) => {
                    let id = match id {
                        ItemId::Number(n) => n.to_string(),
                        ItemId::Other(text) => text.trim_matches('"').to_string(),
                    };
                    append_param(&mut q, SINCE_ID, &id);
                }
                None if !self.plan.history_start.is_empty() => {
                    if !q.is_empty() {
                        q.push(b'&');
                    }
                    q.extend_from_slice(self.plan.history_start.as_bytes());
                }
                None => {}
            }
        } else {
            append_param(&mut q, "page", &self.page.to_string());
        }
        append_param(&mut q, "limit", &self.plan.limit.to_string());
        String::from_utf8(q).unwrap_or_default()
    }

    /// The next request's query, or `None` when the walk is complete.
    pub fn next_query(&self) -> Option<&str> {
        self.next.as_deref()
    }

    /// Takes one page: its new items as lines, and the cursor moved on.
    pub fn take(&mut self, page: &Page<'_>) -> Lines {
        let lines = ndjson::lines(&page.items, &mut self.seen);
        self.pages += 1;
        self.items += lines.written;
        let got = page.items.len() as u64;
        self.next = if self.plan.history {
            let advanced = lines.last_id.is_some() && lines.last_id != self.last_id;
            if lines.last_id.is_some() {
                self.last_id = lines.last_id.clone();
            }
            // A short page is the end; so is a page whose cursor would not
            // move (no id to continue from).
            (got >= u64::from(self.plan.limit) && advanced)
                .then(|| self.query(self.last_id.as_ref()))
        } else {
            let more = match page.pagination.total_page_count {
                Some(total) => self.page < total,
                None => got >= u64::from(self.plan.limit),
            };
            self.page += 1;
            (got > 0 && more).then(|| self.query(None))
        };
        lines
    }

    /// The summary: complete, or failed with `error` and where to resume.
    pub fn summary(&self, error: Option<String>) -> Summary {
        let last_id = || {
            self.last_id.as_ref().map(ItemId::to_json).or_else(|| {
                let since = self.plan.since_id.as_deref()?;
                Some(
                    since
                        .parse::<u64>()
                        .map_or_else(|_| Value::from(since), Value::from),
                )
            })
        };
        Summary {
            pages: self.pages,
            items: self.items,
            last_id: self.plan.history.then(last_id),
            failed: error.map(|e| {
                let resume = if self.plan.history {
                    Resume::SinceId(last_id())
                } else {
                    Resume::Page(self.page)
                };
                (e, resume)
            }),
        }
    }

    /// Items written so far.
    pub fn items(&self) -> u64 {
        self.items
    }
}

/// A page's answer as fetched: its body, held in the gateway's pool of
/// buffered bytes until it has been handed on.
#[derive(Debug)]
pub struct Fetched {
    /// The body's bytes.
    pub body: Bytes,
    /// Its share of `limits.max_buffered_bytes`.
    pub lease: Option<BodyLease>,
}

/// One piece of the response body: a page's lines (or the summary), with
/// the lease of the page they came from.
#[derive(Debug)]
pub struct Chunk {
    /// NDJSON text.
    pub bytes: Bytes,
    /// Held until the body takes the chunk.
    pub lease: Option<BodyLease>,
}

/// Fetches one page for a query: its body, or why it failed for good.
pub type Fetch =
    Box<dyn FnMut(String) -> Pin<Box<dyn Future<Output = Result<Fetched, String>> + Send>> + Send>;

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every page was written, and the summary says complete.
    Complete,
    /// A page failed for good; the summary says where to resume.
    Failed,
    /// The caller went away; nothing more was requested.
    HungUp,
}

/// Fetches the rest of the walk into `tx`, then the summary line. Room for
/// each page is reserved before it is requested (the prefetch bound: the
/// channel's capacity), and the request is dropped as soon as the
/// receiver is: a hang-up stops the walk at once. `tally` hears the items
/// written per page.
pub async fn pump(
    mut walk: Walk,
    tx: mpsc::Sender<Chunk>,
    mut fetch: Fetch,
    mut tally: impl FnMut(u64) + Send,
) -> Ending {
    loop {
        let Ok(permit) = tx.reserve().await else {
            return Ending::HungUp;
        };
        let Some(query) = walk.next_query().map(str::to_owned) else {
            permit.send(summary(&walk, None));
            return Ending::Complete;
        };
        let fetched = tokio::select! {
            biased;
            _ = tx.closed() => return Ending::HungUp,
            f = fetch(query) => f,
        };
        let failure = match fetched {
            Ok(f) => match ndjson::read_page(&f.body) {
                Ok(page) => {
                    let lines = walk.take(&page);
                    tally(lines.written);
                    permit.send(Chunk {
                        bytes: Bytes::from(lines.text),
                        lease: f.lease,
                    });
                    continue;
                }
                Err(e) => format!("a later page could not be read: {e}"),
            },
            Err(e) => e,
        };
        if tx.is_closed() {
            return Ending::HungUp;
        }
        permit.send(summary(&walk, Some(failure)));
        return Ending::Failed;
    }
}

fn summary(walk: &Walk, error: Option<String>) -> Chunk {
    Chunk {
        bytes: Bytes::from(ndjson::summary_line(&walk.summary(error))),
        lease: None,
    }
}

#[cfg(test)]
mod tests;
