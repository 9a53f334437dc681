//! The cursor on made-up pages, and the pump's prefetch bound, hang-up and
//! failure with a fake fetch (paused time: nothing sleeps for real).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;

fn page_body(field: &str, ids: &[u64], total_pages: u64) -> Vec<u8> {
    let items: Vec<String> = ids.iter().map(|i| format!("{{\"id\":{i}}}")).collect();
    format!(
        "{{\"success\":true,\"pagination\":{{\"limit\":2,\"totalCount\":0,\"totalPageCount\":{total_pages}}},\"{field}\":[{}]}}",
        items.join(",")
    )
    .into_bytes()
}

fn take(walk: &mut Walk, body: &[u8]) -> String {
    let page = ndjson::read_page(body).unwrap();
    String::from_utf8(walk.take(&page).text).unwrap()
}

#[test]
fn the_plan_keeps_the_callers_parameters_and_owns_the_cursor() {
    let q = "filter%5Bstatus%5D=new&limit=20&page=3&site=main";
    let plan = Plan::new("/api/v5/orders", Some(q), 100);
    assert!(!plan.history);
    assert_eq!(plan.rest, "filter%5Bstatus%5D=new&site=main");
    assert_eq!(
        plan.first_page, 3,
        "an export resumes from the caller's page"
    );
    let walk = Walk::new(plan);
    assert_eq!(
        walk.next_query(),
        Some("filter%5Bstatus%5D=new&site=main&page=3&limit=100")
    );

    let q = "filter[sinceId]=40&page=2&filter[endDate]=2026-02-01";
    let plan = Plan::new("/api/v5/orders/history", Some(q), 50);
    assert!(plan.history);
    assert_eq!(plan.rest, "filter[endDate]=2026-02-01");
    assert_eq!(plan.history_start, "filter[sinceId]=40");
    assert_eq!(plan.since_id.as_deref(), Some("40"));
    assert_eq!(
        Walk::new(plan).next_query(),
        Some("filter[endDate]=2026-02-01&filter[sinceId]=40&limit=50")
    );
}

#[test]
fn a_list_is_walked_page_by_page_to_the_last_page_it_reports() {
    let mut walk = Walk::new(Plan::new("/api/v5/orders", None, 2));
    assert_eq!(walk.next_query(), Some("page=1&limit=2"));
    assert_eq!(
        take(&mut walk, &page_body("orders", &[5, 4], 2)),
        "{\"id\":5}\n{\"id\":4}\n"
    );
    assert_eq!(walk.next_query(), Some("page=2&limit=2"));
    // A create moved 4 onto page 2 and the list grew to 3 pages.
    assert_eq!(
        take(&mut walk, &page_body("orders", &[4, 3], 3)),
        "{\"id\":3}\n"
    );
    assert_eq!(walk.next_query(), Some("page=3&limit=2"));
    assert_eq!(
        take(&mut walk, &page_body("orders", &[2], 3)),
        "{\"id\":2}\n"
    );
    assert_eq!(walk.next_query(), None);
    let s = walk.summary(None);
    assert_eq!((s.pages, s.items, s.last_id, s.failed), (3, 4, None, None));
    assert_eq!(
        walk.summary(Some("x".into())).failed,
        Some(("x".into(), Resume::Page(4)))
    );
}

#[test]
fn history_follows_the_last_id_until_a_short_page() {
    let mut walk = Walk::new(Plan::new(
        "/api/v5/orders/history",
        Some("filter%5BsinceId%5D=0"),
        2,
    ));
    assert_eq!(walk.next_query(), Some("filter%5BsinceId%5D=0&limit=2"));
    take(&mut walk, &page_body("history", &[1, 2], 9));
    assert_eq!(walk.next_query(), Some("filter%5BsinceId%5D=2&limit=2"));
    let failed = walk.summary(Some("CRM down".into()));
    assert_eq!(failed.failed.unwrap().1, Resume::SinceId(Some(2.into())));
    take(&mut walk, &page_body("history", &[3, 4], 9));
    take(&mut walk, &page_body("history", &[5], 9));
    assert_eq!(walk.next_query(), None, "a short page ends the walk");
    let s = walk.summary(None);
    assert_eq!((s.pages, s.items, s.last_id), (3, 5, Some(Some(5.into()))));

    // Nothing new since the caller's cursor: last_id stays the caller's.
    let mut walk = Walk::new(Plan::new(
        "/api/v5/customers/history",
        Some("filter[sinceId]=77"),
        2,
    ));
    take(&mut walk, &page_body("history", &[], 0));
    assert_eq!(walk.next_query(), None);
    assert_eq!(walk.summary(None).last_id, Some(Some(77.into())));
}

/// A fake CRM list of `pages` pages of two items, counting requests.
fn fake(pages: u64, fail_from: Option<u64>, asked: Arc<AtomicU64>) -> Fetch {
    Box::new(move |query: String| {
        let asked = asked.clone();
        Box::pin(async move {
            let n: u64 = query
                .split('&')
                .find_map(|p| p.strip_prefix("page="))
                .and_then(|p| p.parse().ok())
                .unwrap();
            asked.fetch_add(1, Ordering::SeqCst);
            if fail_from.is_some_and(|f| n >= f) {
                return Err(format!("page {n} failed"));
            }
            Ok(Fetched {
                body: Bytes::from(page_body("orders", &[2 * n, 2 * n + 1], pages)),
                lease: None,
            })
        })
    })
}

/// Lets every other task run until it blocks (paused time moves only when
/// all tasks are idle).
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn at_most_prefetch_pages_are_fetched_ahead_of_the_reader() {
    let asked = Arc::new(AtomicU64::new(0));
    let mut walk = Walk::new(Plan::new("/api/v5/orders", None, 2));
    take(&mut walk, &page_body("orders", &[0, 1], 10));
    let (tx, mut rx) = mpsc::channel(2);
    let task = tokio::spawn(pump(walk, tx, fake(10, None, asked.clone()), |_| {}));
    settle().await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "two pages ahead, then it waits"
    );
    rx.recv().await.unwrap();
    settle().await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        3,
        "one taken, one more fetched"
    );
    let mut lines = 0;
    while let Some(chunk) = rx.recv().await {
        lines += chunk.bytes.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(task.await.unwrap(), Ending::Complete);
    assert_eq!(asked.load(Ordering::SeqCst), 9, "pages 2..=10");
    assert_eq!(
        lines,
        2 * 8 + 1,
        "pages 3..=10 after the first taken, and the summary"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hang_up_stops_the_walk_without_another_request() {
    let asked = Arc::new(AtomicU64::new(0));
    let walk = Walk::new(Plan::new("/api/v5/orders", Some("page=2"), 2));
    let (tx, rx) = mpsc::channel(2);
    let task = tokio::spawn(pump(walk, tx, fake(50, None, asked.clone()), |_| {}));
    settle().await;
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    drop(rx);
    assert_eq!(task.await.unwrap(), Ending::HungUp);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "nothing requested after the hang-up"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_page_ends_with_a_summary_that_says_where_to_resume() {
    let asked = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let counted = written.clone();
    let walk = Walk::new(Plan::new("/api/v5/orders", None, 2));
    let (tx, mut rx) = mpsc::channel(2);
    let tally = move |n| {
        counted.fetch_add(n, Ordering::SeqCst);
    };
    let task = tokio::spawn(pump(walk, tx, fake(5, Some(3), asked), tally));
    let mut text = Vec::new();
    while let Some(chunk) = rx.recv().await {
        text.extend_from_slice(&chunk.bytes);
    }
    assert_eq!(task.await.unwrap(), Ending::Failed);
    let text = String::from_utf8(text).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        last,
        serde_json::json!({"crmgate_export": {"complete": false, "pages": 2, "items": 4,
            "error": "page 3 failed", "resume": {"page": 3}}})
    );
    assert_eq!(written.load(Ordering::SeqCst), 4);
}
