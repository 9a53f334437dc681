//! The stage's state machine against a scripted CRM, on paused time: which
//! create is broken, and how, is the script's choice, not the network's, so
//! every outcome is known in advance and asserted exactly.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::Opts;

use super::*;
use crate::bodies::BodyPool;
use crate::classify::Class;
use crate::config::Config;
use crate::live::Snapshot;
use crate::scheduler::Priority;

/// How a scripted create send breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The connection breaks before the CRM reads the create.
    ResetBeforeProcessing,
    /// The CRM stores the create, then the connection breaks.
    ResetAfterProcessing,
}

/// What the scripted CRM holds and has seen.
#[derive(Default)]
struct Crm {
    /// Orders by `externalId`: their ids.
    orders: HashMap<String, u64>,
    /// How many times each `externalId` was stored.
    stored: HashMap<String, u32>,
    /// The fault of each create that was broken.
    broken: HashMap<String, Fault>,
    /// Faults for the next create sends, in arrival order.
    faults: VecDeque<Fault>,
}

/// A RetailCRM as the stage sees it through forward: creates, lookups by
/// `externalId`, its refusal of a duplicate, and the scripted faults. Each
/// send takes 20 ms of (paused) time, so concurrent creates interleave.
struct ScriptedCrm {
    snap: Arc<Snapshot>,
    crm: Mutex<Crm>,
}

const LATENCY: Duration = Duration::from_millis(20);

impl ScriptedCrm {
    fn new(faults: impl IntoIterator<Item = Fault>) -> ScriptedCrm {
        let text = "[[tenants]]\nname = \"acme\"\nbase_url = \"https://acme.retailcrm.ru\"\n\
                    api_key = \"real-key-0001\"\n";
        let config = Config::from_toml(text, "test config", &|_| None).unwrap();
        ScriptedCrm {
            snap: Arc::new(Snapshot::new(config)),
            crm: Mutex::new(Crm {
                faults: faults.into_iter().collect(),
                ..Crm::default()
            }),
        }
    }

    fn answer(&self, req: &Outgoing) -> Result<(StatusCode, Value), GatewayError> {
        let mut crm = self.crm.lock().unwrap();
        if let Some(create) = create_of(req) {
            let ext = create.external_id.expect("every scripted create has one");
            let fault = crm.faults.pop_front();
            if fault == Some(Fault::ResetBeforeProcessing) {
                crm.broken.insert(ext, Fault::ResetBeforeProcessing);
                return Err(reset());
            }
            if crm.orders.contains_key(&ext) {
                let errors = json!({"externalId": "Order with externalId already exists."});
                let body =
                    json!({"success": false, "errorMsg": "Order is not loaded", "errors": errors});
                return Ok((StatusCode::BAD_REQUEST, body));
            }
            let id = crm.orders.len() as u64 + 1;
            crm.orders.insert(ext.clone(), id);
            *crm.stored.entry(ext.clone()).or_default() += 1;
            if fault == Some(Fault::ResetAfterProcessing) {
                crm.broken.insert(ext, Fault::ResetAfterProcessing);
                return Err(reset());
            }
            return Ok((StatusCode::CREATED, json!({"success": true, "id": id})));
        }
        assert_eq!(req.method, Method::GET, "only creates and lookups are sent");
        assert!(req.query.as_deref().unwrap_or("").contains("by=externalId"));
        let ext = req.path.rsplit('/').next().unwrap();
        Ok(match crm.orders.get(ext) {
            Some(id) => (
                StatusCode::OK,
                json!({"success": true, "order": {"id": id, "externalId": ext}}),
            ),
            None => (
                StatusCode::NOT_FOUND,
                json!({"success": false, "errorMsg": "Not found"}),
            ),
        })
    }
}

/// A send that broke after it may have been written, as forward reports it.
fn reset() -> GatewayError {
    GatewayError::Ambiguous(Box::new(GatewayError::UpstreamUnreachable {
        tenant: "acme".into(),
        cause: "connection reset".into(),
    }))
}

impl Forward for ScriptedCrm {
    async fn send(&self, req: Inbound, trace: &mut Trace) -> Result<Response, GatewayError> {
        trace.attempts += 1;
        tokio::time::sleep(LATENCY).await;
        let (status, body) = self.answer(&req.out)?;
        let mut resp = Response::new(Body::from(body.to_string()));
        *resp.status_mut() = status;
        Ok(resp)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.clone()
    }
}

fn create(crm: &ScriptedCrm, ext: &str) -> Inbound {
    let tenant = crm.snap.tenants.get("acme").unwrap().clone();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("order", &json!({"externalId": ext}).to_string())
        .finish();
    Inbound {
        ticket: Ticket {
            tenant: tenant.name.clone(),
            weight: 1,
            max_queued: 100,
            client: "client".into(),
            priority: Priority::Normal,
            class: Class::General,
            deadline: Instant::now() + Duration::from_secs(30),
        },
        tenant,
        out: Box::new(Outgoing {
            method: Method::POST,
            path: "/api/v5/orders/create".into(),
            query: None,
            headers,
            body: Bytes::from(body),
        }),
        lease: BodyLease::new(&Arc::new(BodyPool::default())),
    }
}

#[tokio::test(start_paused = true)]
async fn under_concurrent_creates_with_resets_no_external_id_is_ever_created_twice() {
    let crm = Arc::new(ScriptedCrm::new(
        [Fault::ResetBeforeProcessing; 6]
            .into_iter()
            .chain([Fault::ResetAfterProcessing; 6]),
    ));
    let reconciled =
        IntCounterVec::new(Opts::new("reconciled", "test"), &["tenant", "outcome"]).unwrap();
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let ext = format!("many-{i}");
            let (crm, reconciled) = (crm.clone(), reconciled.clone());
            tokio::spawn(async move {
                let mut trace = Trace::default();
                let req = create(&crm, &ext);
                let resp = run(&*crm, &reconciled, req, &mut trace).await.unwrap();
                let header = resp
                    .headers()
                    .get(RECONCILED_HEADER)
                    .map(|h| h.to_str().unwrap().to_string());
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                let json: Value = serde_json::from_slice(&body).unwrap();
                (ext, status, header, json, trace)
            })
        })
        .collect();
    let mut by_header = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let (ext, status, header, json, trace) = t.await.unwrap();
        let crm = crm.crm.lock().unwrap();
        assert_eq!(status, StatusCode::CREATED, "{ext}: {json}");
        assert_eq!(crm.stored.get(&ext), Some(&1), "{ext} stored once");
        assert_eq!(json["id"], json!(crm.orders[&ext]), "{ext}: {json}");
        // The reconciliation each broken create gets follows from how it
        // broke: stored before the reset, it is found; not, it is resent.
        let (expected, sends) = match crm.broken.get(&ext) {
            None => (None, 1),
            Some(Fault::ResetAfterProcessing) => (Some("found"), 2),
            Some(Fault::ResetBeforeProcessing) => (Some("resent"), 3),
        };
        assert_eq!(header.as_deref(), expected, "{ext}");
        assert_eq!(trace.reconciled, expected, "{ext}");
        assert_eq!(trace.attempts, sends, "{ext}: create, lookup, resend");
        *by_header
            .entry(header.unwrap_or_else(|| "none".into()))
            .or_default() += 1;
    }
    let expected = [("found", 6), ("none", 18), ("resent", 6)];
    assert_eq!(
        by_header,
        expected.map(|(k, n)| (k.to_string(), n)).into(),
        "every fault went to a create"
    );
    assert_eq!(crm.crm.lock().unwrap().orders.len(), 30);
    for (outcome, n) in [("found", 6), ("resent", 6), ("lookup_failed", 0)] {
        let counted = reconciled.with_label_values(&["acme", outcome]).get();
        assert_eq!(counted, n, "{outcome}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lookup_waits_the_configured_delay_after_the_broken_create() {
    let crm = ScriptedCrm::new([Fault::ResetAfterProcessing]);
    let reconciled =
        IntCounterVec::new(Opts::new("reconciled", "test"), &["tenant", "outcome"]).unwrap();
    let delay = crm.snap.config.reconcile.delay;
    let started = Instant::now();
    let mut trace = Trace::default();
    let resp = run(&crm, &reconciled, create(&crm, "late"), &mut trace)
        .await
        .unwrap();
    assert_eq!(resp.headers()[RECONCILED_HEADER], "found");
    // Create, the delay, then the lookup: on paused time, exactly.
    assert_eq!(started.elapsed(), LATENCY + delay + LATENCY);
    assert_eq!(trace.queue, delay, "the delay counts as waiting");
}
