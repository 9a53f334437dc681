//! The export's text: reading one page answer, writing its items as NDJSON
//! lines (de-duplicated by `id` within one export), and the summary line.
//!
//! Pure functions and plain data: no I/O, no clock, no gateway. Items are
//! copied byte for byte as the CRM wrote them (re-encoded only when an
//! item spans lines, which NDJSON cannot carry). It never sees a key.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use roaring::RoaringTreemap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Why a first answer cannot be exported (the 400's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotExportable {
    /// Not a JSON object.
    #[error("the answer is not a JSON object")]
    NotJson,
    /// No `pagination` object.
    #[error("the answer has no \"pagination\" object")]
    NoPagination,
    /// No list field, or several.
    #[error("the answer has {0} list fields; an export needs exactly one")]
    ListFields(usize),
}

/// The `pagination` object of a page.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    /// Items matching the request, all pages together.
    #[serde(default)]
    pub total_count: Option<u64>,
    /// Pages at this page size.
    #[serde(default)]
    pub total_page_count: Option<u64>,
    /// The page answered.
    #[serde(default)]
    pub current_page: Option<u64>,
}

/// One page answer, read.
#[derive(Debug)]
pub struct Page<'a> {
    /// The name of the one list field (`orders`, `history`, ...).
    pub field: String,
    /// Its pagination.
    pub pagination: Pagination,
    /// The items, as the CRM wrote them.
    pub items: Vec<&'a RawValue>,
}

/// Reads a page answer: a JSON object with a `pagination` object and
/// exactly one array field.
pub fn read_page(body: &[u8]) -> Result<Page<'_>, NotExportable> {
    let fields: HashMap<Cow<'_, str>, &RawValue> =
        serde_json::from_slice(body).map_err(|_| NotExportable::NotJson)?;
    let pagination = fields
        .get("pagination")
        .filter(|raw| raw.get().trim_start().starts_with('{'))
        .and_then(|raw| serde_json::from_str::<Pagination>(raw.get()).ok())
        .ok_or(NotExportable::NoPagination)?;
    let lists: Vec<(&Cow<'_, str>, &&RawValue)> = fields
        .iter()
        .filter(|(_, raw)| raw.get().trim_start().starts_with('['))
        .collect();
    let [(name, raw)] = lists.as_slice() else {
        return Err(NotExportable::ListFields(lists.len()));
    };
    let items: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| NotExportable::NotJson)?;
    Ok(Page {
        field: name.to_string(),
        pagination,
        items,
    })
}

/// An item's `id`, when it has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ItemId {
    /// A whole, non-negative number (RetailCRM's ids).
    Number(u64),
    /// Anything else, as its JSON text.
    Other(String),
}

impl ItemId {
    /// The id for a summary line or a resume point.
    pub fn to_json(&self) -> Value {
        match self {
            ItemId::Number(n) => json!(n),
            ItemId::Other(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }
}

/// The `id` of one item, if it has one that is not `null`.
pub fn item_id(item: &RawValue) -> Option<ItemId> {
    #[derive(Deserialize)]
    struct WithId<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let id = serde_json::from_str::<WithId<'_>>(item.get()).ok()?.id?;
    let text = id.get().trim();
    if text == "null" {
        return None;
    }
    Some(match text.parse::<u64>() {
        Ok(n) => ItemId::Number(n),
        Err(_) => ItemId::Other(text.to_string()),
    })
}

/// Ids already written in one export. Numeric ids sit in a compressed
/// bitmap (a run of ids costs bits, not words), so a long export's set
/// stays small next to the pages it holds.
#[derive(Debug, Default)]
pub struct Seen {
    numbers: RoaringTreemap,
    others: HashSet<String>,
}

impl Seen {
    /// Records `id`; false when it was already written.
    pub fn insert(&mut self, id: &ItemId) -> bool {
        match id {
            ItemId::Number(n) => self.numbers.insert(*n),
            ItemId::Other(text) => self.others.insert(text.clone()),
        }
    }
}

/// What one page added to the stream.
#[derive(Debug, Default)]
pub struct Lines {
    /// The NDJSON text: one line per new item.
    pub text: Vec<u8>,
    /// Items written.
    pub written: u64,
    /// Items skipped as already written.
    pub duplicates: u64,
    /// The `id` of the page's last item (written or not), for a cursor.
    pub last_id: Option<ItemId>,
}

/// Writes the items of one page that `seen` does not hold yet.
pub fn lines(items: &[&RawValue], seen: &mut Seen) -> Lines {
    let mut out = Lines {
        text: Vec::with_capacity(items.iter().map(|i| i.get().len() + 1).sum()),
        ..Lines::default()
    };
    for item in items {
        let id = item_id(item);
        if let Some(id) = &id {
            if !seen.insert(id) {
                out.duplicates += 1;
                out.last_id = Some(id.clone());
                continue;
            }
        }
        push_line(&mut out.text, item);
        out.written += 1;
        out.last_id = id;
    }
    out
}

/// One item as one line: as written, unless it spans lines.
fn push_line(text: &mut Vec<u8>, item: &RawValue) {
    let raw = item.get().trim();
    if raw.contains(['\n', '\r']) {
        let value: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
        text.extend_from_slice(value.to_string().as_bytes());
    } else {
        text.extend_from_slice(raw.as_bytes());
    }
    text.push(b'\n');
}

/// Where a failed export can continue.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// A list: request from this page on.
    Page(u64),
    /// History: request entries after this id (`None`: from where the
    /// caller started).
    SinceId(Option<Value>),
}

/// How an export ended, for the summary line.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Pages fetched and written.
    pub pages: u64,
    /// Items written.
    pub items: u64,
    /// History only: the id of the newest entry seen (the next sync's
    /// `sinceId`).
    pub last_id: Option<Option<Value>>,
    /// `None` when complete; else why, and where to resume.
    pub failed: Option<(String, Resume)>,
}

/// The summary line, newline included:
/// `{"crmgate_export": {"complete": true, "pages": P, "items": N}}`, or
/// with `"complete": false`, `"error"` and `"resume"`.
pub fn summary_line(s: &Summary) -> Vec<u8> {
    // Written by hand so the fields keep this order whatever serde_json's
    // map type is.
    let mut line = format!(
        "{{\"crmgate_export\":{{\"complete\":{},\"pages\":{},\"items\":{}",
        s.failed.is_none(),
        s.pages,
        s.items
    );
    if let Some(last_id) = &s.last_id {
        line.push_str(&format!(
            ",\"last_id\":{}",
            last_id.clone().unwrap_or(Value::Null)
        ));
    }
    if let Some((error, resume)) = &s.failed {
        let resume = match resume {
            Resume::Page(page) => json!({ "page": page }),
            Resume::SinceId(id) => json!({ "sinceId": id.clone().unwrap_or(Value::Null) }),
        };
        line.push_str(&format!(",\"error\":{},\"resume\":{resume}", json!(error)));
    }
    line.push_str("}}\n");
    line.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_has_pagination_and_exactly_one_list() {
        let body = br#"{"success":true,"pagination":{"limit":20,"totalCount":45,"currentPage":1,"totalPageCount":3},"orders":[{"id":1,"n":"a"},{"id":2}]}"#;
        let page = read_page(body).unwrap();
        assert_eq!(page.field, "orders");
        assert_eq!(page.pagination.total_count, Some(45));
        assert_eq!(page.pagination.total_page_count, Some(3));
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.items[0].get(), r#"{"id":1,"n":"a"}"#);

        assert_eq!(read_page(b"<html>").unwrap_err(), NotExportable::NotJson);
        assert_eq!(
            read_page(br#"{"success":true,"orders":[]}"#).unwrap_err(),
            NotExportable::NoPagination
        );
        assert_eq!(
            read_page(br#"{"pagination":{},"a":[],"b":[]}"#).unwrap_err(),
            NotExportable::ListFields(2)
        );
        assert_eq!(
            read_page(br#"{"pagination":{},"sites":{"a":{}}}"#).unwrap_err(),
            NotExportable::ListFields(0)
        );
    }

    #[test]
    fn items_are_copied_as_written_one_per_line_and_never_twice() {
        let mut seen = Seen::default();
        let body =
            br#"{"pagination":{},"history":[{"id":7, "x":"a\nb"},{"id":8},{"id":"c-1"},{"n":1}]}"#;
        let page = read_page(body).unwrap();
        let first = lines(&page.items, &mut seen);
        assert_eq!(
            String::from_utf8(first.text).unwrap(),
            "{\"id\":7, \"x\":\"a\\nb\"}\n{\"id\":8}\n{\"id\":\"c-1\"}\n{\"n\":1}\n"
        );
        assert_eq!((first.written, first.duplicates), (4, 0));
        assert_eq!(first.last_id, None, "the last item has no id");

        // The next page repeats 8 and "c-1" (a create shifted the list).
        let body = br#"{"pagination":{},"orders":[{"id":8},{"id":"c-1"},{"id":9}]}"#;
        let page = read_page(body).unwrap();
        let next = lines(&page.items, &mut seen);
        assert_eq!(String::from_utf8(next.text).unwrap(), "{\"id\":9}\n");
        assert_eq!((next.written, next.duplicates), (1, 2));
        assert_eq!(next.last_id, Some(ItemId::Number(9)));
    }

    #[test]
    fn an_item_spanning_lines_is_re_encoded_on_one() {
        let mut seen = Seen::default();
        let body = b"{\"pagination\":{},\"orders\":[{\n  \"id\": 1,\n  \"a\": [1, 2]\n}]}";
        let page = read_page(body).unwrap();
        let out = lines(&page.items, &mut seen);
        assert_eq!(
            String::from_utf8(out.text).unwrap(),
            "{\"a\":[1,2],\"id\":1}\n"
        );
    }

    #[test]
    fn summary_lines() {
        let done = Summary {
            pages: 3,
            items: 250,
            last_id: None,
            failed: None,
        };
        assert_eq!(
            String::from_utf8(summary_line(&done)).unwrap(),
            "{\"crmgate_export\":{\"complete\":true,\"pages\":3,\"items\":250}}\n"
        );
        let failed = Summary {
            pages: 2,
            items: 200,
            last_id: Some(Some(json!(4711))),
            failed: Some(("no slot".into(), Resume::SinceId(Some(json!(4711))))),
        };
        let v: Value = serde_json::from_slice(&summary_line(&failed)).unwrap();
        assert_eq!(
            v,
            json!({"crmgate_export": {"complete": false, "pages": 2, "items": 200,
                "last_id": 4711, "error": "no slot", "resume": {"sinceId": 4711}}})
        );
        let list = Summary {
            failed: Some(("x".into(), Resume::Page(3))),
            ..done
        };
        let v: Value = serde_json::from_slice(&summary_line(&list)).unwrap();
        assert_eq!(v["crmgate_export"]["resume"], json!({"page": 3}));
    }
}
