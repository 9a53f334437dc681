//! Reconciliation of creates that failed after they were sent, against the
//! simulator: found, resent, lookup failed, out of attempts, no
//! `externalId`, and a resend refused because the first create finished
//! meanwhile. Every test also checks that the CRM never holds a second
//! entity with the same `externalId`.

mod common;

use common::*;
use crmgate::sim::Simulator;
use serde_json::Value;

/// Short waits, so the tests do not sit out the 1 s default.
const FAST: &str = "[reconcile]\ndelay = \"100ms\"\n[retry]\ninitial_backoff = \"20ms\"\n";

/// The two entities the issue names, plus corporate customers.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Order,
    Customer,
    Corporate,
}

impl Kind {
    fn group(self) -> &'static str {
        match self {
            Kind::Order => "orders",
            Kind::Customer => "customers",
            Kind::Corporate => "customers-corporate",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Customer => "customer",
            Kind::Corporate => "customerCorporate",
        }
    }

    /// `POST .../create` with this `externalId` (none: a `number` only).
    fn create(self, external_id: Option<&str>) -> Call {
        let entity = match external_id {
            Some(ext) => format!(r#"{{"externalId":"{ext}","firstName":"Test"}}"#),
            None => r#"{"firstName":"Test","number":"no-ext"}"#.to_string(),
        };
        let path = format!("/api/v5/{}/create", self.group());
        Call::post(&path, Some(ACME_CLIENT), &[(self.field(), &entity)])
    }

    /// What the simulator holds with this `externalId`.
    fn stored(self, sim: &Simulator, external_id: &str) -> Vec<Value> {
        let all = match self {
            Kind::Order => sim.orders_created("acme"),
            Kind::Customer => sim.customers_created("acme", false),
            Kind::Corporate => sim.customers_created("acme", true),
        };
        all.into_iter()
            .filter(|e| e["externalId"] == external_id)
            .collect()
    }
}

/// Sends `call` as request `id` and also returns `X-Crmgate-Reconciled`.
async fn send(gate: &Gate, call: &Call, id: &str) -> (Outcome, Option<String>) {
    let resp = call.request(&client(), &gate.url, id).send().await.unwrap();
    let header = resp
        .headers()
        .get("x-crmgate-reconciled")
        .map(|v| v.to_str().unwrap().to_string());
    (Outcome::read(id, resp).await, header)
}

/// (method, path, status) of what the simulator received for request `id`.
fn arrivals(sim: &Simulator, id: &str) -> Vec<(String, String, u16)> {
    sim.records()
        .iter()
        .filter(|r| id_of(r) == id)
        .map(|r| (r.method.clone(), r.path.clone(), r.status))
        .collect()
}

async fn reconciled(gate: &Gate, outcome: &str) -> f64 {
    let labels = [("tenant", "acme"), ("outcome", outcome)];
    metric_now(&gate.admin, "crmgate_reconciled_total", &labels).await
}

#[tokio::test]
async fn a_create_processed_before_the_reset_is_found_and_never_sent_again() {
    let (sim, gate) = setup(FAST).await;
    for (kind, ext) in [
        (Kind::Order, "found-o"),
        (Kind::Customer, "found-c"),
        (Kind::Corporate, "found-k"),
    ] {
        sim.faults().reset_after_processing_next(1);
        let (o, header) = send(&gate, &kind.create(Some(ext)), ext).await;
        assert_eq!((o.status, header.as_deref()), (201, Some("found")), "{o:?}");
        assert_eq!(o.attempts, Some(2), "the create and one lookup: {o:?}");
        let stored = kind.stored(&sim, ext);
        assert_eq!(stored.len(), 1, "{kind:?}: exactly one at the CRM");
        let body = o.json();
        assert_eq!(body["success"], true, "{body}");
        assert_eq!(body["id"], stored[0]["id"], "{body}");
        assert_eq!(body[kind.field()]["externalId"], ext, "{body}");

        let lookup = format!("/api/v5/{}/{ext}", kind.group());
        assert_eq!(
            arrivals(&sim, ext),
            [
                ("POST".into(), format!("/api/v5/{}/create", kind.group()), 0),
                ("GET".into(), lookup, 200),
            ],
            "{kind:?}"
        );
        let get = sim
            .records()
            .into_iter()
            .rfind(|r| id_of(r) == ext)
            .unwrap();
        assert_eq!(get.query.as_deref(), Some("by=externalId&site=main"));
        assert_eq!(get.api_key.as_deref(), Some(ACME_KEY), "the real key");
    }
    assert_eq!(reconciled(&gate, "found").await, 3.0);
    assert_no_client_key(&sim.records());
}

#[tokio::test]
async fn a_create_the_crm_never_processed_is_resent_once() {
    let (sim, gate) = setup(FAST).await;
    for (kind, ext) in [(Kind::Order, "resent-o"), (Kind::Customer, "resent-c")] {
        // The connection breaks after the request was written, before the
        // CRM processed it: from the gateway it looks exactly like a reset
        // after processing.
        sim.faults().reset_before_processing_next(1);
        let (o, header) = send(&gate, &kind.create(Some(ext)), ext).await;
        assert_eq!(
            (o.status, header.as_deref()),
            (201, Some("resent")),
            "{o:?}"
        );
        assert_eq!(o.attempts, Some(3), "create, lookup, create: {o:?}");
        assert_eq!(o.json()["success"], true);
        assert_eq!(kind.stored(&sim, ext).len(), 1, "{kind:?}");
        let statuses: Vec<(String, u16)> = arrivals(&sim, ext)
            .into_iter()
            .map(|(m, _, s)| (m, s))
            .collect();
        assert_eq!(
            statuses,
            [
                ("POST".into(), 0),
                ("GET".into(), 404),
                ("POST".into(), 201)
            ],
            "{kind:?}"
        );
    }
    assert_eq!(reconciled(&gate, "resent").await, 2.0);
    assert_eq!(reconciled(&gate, "found").await, 0.0);
}

#[tokio::test]
async fn a_failed_lookup_is_502_naming_the_external_id() {
    // Time to break the lookup once the create is in; no attempt left to retry it.
    let (sim, gate) = setup(
        "[reconcile]\ndelay = \"500ms\"\n[retry]\ninitial_backoff = \"20ms\"\nmax_attempts = 2\n",
    )
    .await;
    for (kind, ext) in [(Kind::Order, "lost-o"), (Kind::Customer, "lost-c")] {
        sim.faults().reset_after_processing_next(1);
        let call = kind.create(Some(ext));
        let task = {
            let (call, url) = (call.clone(), gate.url.clone());
            tokio::spawn(async move { call.send(&client(), &url, ext).await })
        };
        // Once the CRM has it, break the lookup (max_attempts: no retry).
        wait_until("the create was processed", || {
            kind.stored(&sim, ext).len() == 1
        })
        .await;
        sim.faults().reset_before_processing_next(1);
        let o = task.await.unwrap();
        o.assert_gateway_error(502);
        let msg = o.json()["errorMsg"].as_str().unwrap().to_string();
        assert!(msg.contains(&format!("\"{ext}\"")), "{msg}");
        assert!(msg.contains("could not be checked"), "{msg}");
        assert!(
            !msg.contains(ACME_KEY) && !msg.contains(ACME_CLIENT),
            "{msg}"
        );
        let posts = arrivals(&sim, ext)
            .iter()
            .filter(|(m, _, _)| m == "POST")
            .count();
        assert_eq!(posts, 1, "{kind:?}: never resent without a lookup");
        assert_eq!(kind.stored(&sim, ext).len(), 1);
    }
    assert_eq!(reconciled(&gate, "lookup_failed").await, 2.0);
}

#[tokio::test]
async fn a_deadline_too_close_for_the_lookup_is_502_at_once() {
    let (sim, gate) = setup("[reconcile]\ndelay = \"5s\"\n").await;
    sim.faults().reset_after_processing_next(1);
    let call = Kind::Order
        .create(Some("hurried"))
        .header("x-crmgate-max-wait", "1s");
    let (o, header) = send(&gate, &call, "hurried").await;
    o.assert_gateway_error(502);
    assert_eq!(header, None);
    assert!(
        o.body.contains("hurried") && o.body.contains("deadline"),
        "{o:?}"
    );
    assert_eq!(arrivals(&sim, "hurried").len(), 1, "no lookup was sent");
    assert_eq!(reconciled(&gate, "lookup_failed").await, 1.0);
}

#[tokio::test]
async fn without_attempts_left_a_missing_create_is_502_saying_it_is_safe_to_resend() {
    let (sim, gate) = setup(&format!("{FAST}max_attempts = 2\n")).await;
    sim.faults().reset_before_processing_next(1);
    let (o, _) = send(&gate, &Kind::Customer.create(Some("spent")), "spent").await;
    o.assert_gateway_error(502);
    assert_eq!(o.attempts, Some(2), "{o:?}");
    assert!(
        o.body.contains("spent") && o.body.contains("safe to send it again"),
        "{o:?}"
    );
    let methods: Vec<String> = arrivals(&sim, "spent").into_iter().map(|a| a.0).collect();
    assert_eq!(methods, ["POST", "GET"]);
    assert!(Kind::Customer.stored(&sim, "spent").is_empty());
    assert_eq!(reconciled(&gate, "exhausted").await, 1.0);
}

#[tokio::test]
async fn a_create_without_external_id_is_502_as_before_and_never_looked_up() {
    let (sim, gate) = setup(FAST).await;
    for kind in [Kind::Order, Kind::Customer] {
        sim.faults().reset_after_processing_next(1);
        let id = format!("no-ext-{}", kind.field());
        let (o, header) = send(&gate, &kind.create(None), &id).await;
        o.assert_gateway_error(502);
        assert_eq!((o.attempts, header), (Some(1), None), "{o:?}");
        assert_eq!(
            arrivals(&sim, &id).len(),
            1,
            "{kind:?}: one send, no lookup"
        );
    }
    assert_eq!(reconciled(&gate, "no_external_id").await, 2.0);
    // A GET is not a create: its reset is simply retried.
    sim.faults().reset_after_processing_next(1);
    let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
        .send(&client(), &gate.url, "get")
        .await;
    assert_eq!((o.status, o.attempts), (200, Some(2)), "{o:?}");
}

#[tokio::test]
async fn a_resend_refused_as_a_duplicate_is_looked_up_again_and_found() {
    // One send a second, so the test can act between the lookup and the
    // resend (a second apart) the way a slow first create would.
    let (sim, gate) = setup(&format!("{FAST}[limits]\ngeneral_per_second = 1\n")).await;
    sim.faults().reset_before_processing_next(1);
    let call = Kind::Order.create(Some("late"));
    let task = {
        let (call, url) = (call.clone(), gate.url.clone());
        tokio::spawn(async move {
            let resp = call.request(&client(), &url, "late").send().await.unwrap();
            let header = resp.headers().get("x-crmgate-reconciled").cloned();
            (Outcome::read("late", resp).await, header)
        })
    };
    wait_until("the lookup answered 404", || {
        arrivals(&sim, "late")
            .iter()
            .any(|a| a.0 == "GET" && a.2 == 404)
    })
    .await;
    // The first create "finishes" now, straight at the CRM.
    let direct = client()
        .post(format!("{}/api/v5/orders/create", sim.base_url()))
        .header("x-api-key", ACME_KEY)
        .header("x-request-id", "direct")
        .form(&[("order", r#"{"externalId":"late"}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 201);
    let (o, header) = task.await.unwrap();
    assert_eq!(o.status, 201, "{o:?}");
    assert_eq!(header.unwrap(), "found");
    let stored = Kind::Order.stored(&sim, "late");
    assert_eq!(stored.len(), 1);
    assert_eq!(o.json()["id"], stored[0]["id"]);
    let statuses: Vec<u16> = arrivals(&sim, "late").into_iter().map(|a| a.2).collect();
    assert_eq!(
        statuses,
        [0, 404, 400, 200],
        "create, lookup, refused resend, lookup"
    );
    assert_eq!(reconciled(&gate, "found").await, 1.0);
}

#[tokio::test]
async fn under_concurrent_creates_with_resets_no_external_id_is_ever_created_twice() {
    let (sim, gate) = setup(FAST).await;
    let n = 30;
    // The first six requests break before processing, the next six after.
    sim.faults().reset_before_processing_next(6);
    sim.faults().reset_after_processing_next(6);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let ext = format!("many-{i}");
            let (call, url) = (Kind::Order.create(Some(&ext)), gate.url.clone());
            tokio::spawn(async move {
                let resp = call.request(&client(), &url, &ext).send().await.unwrap();
                let header = resp.headers().get("x-crmgate-reconciled").cloned();
                (ext.clone(), header, Outcome::read(&ext, resp).await)
            })
        })
        .collect();
    let mut by_header = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let (ext, header, o) = t.await.unwrap();
        let stored = Kind::Order.stored(&sim, &ext).len();
        assert!(stored <= 1, "{ext} created {stored} times");
        match o.status {
            201 => assert_eq!(stored, 1, "{o:?}"),
            // Only when a lookup could not settle it: the caller is told
            // which externalId to check.
            502 => assert!(o.body.contains(&format!("\\\"{ext}\\\"")), "{o:?}"),
            _ => panic!("{o:?}"),
        }
        let key = header.map_or(o.status.to_string(), |h| h.to_str().unwrap().to_string());
        *by_header.entry(key).or_default() += 1;
    }
    println!("answers by reconciliation: {by_header:?}");
    let created = sim.orders_created("acme");
    let distinct: std::collections::HashSet<String> = created
        .iter()
        .map(|o| o["externalId"].to_string())
        .collect();
    assert_eq!(distinct.len(), created.len(), "a duplicate at the CRM");
    // Over the network, which reconciliation each broken create needs
    // depends on timing: a lookup of an early failure may itself take one
    // of the resets meant "after processing" (and is simply retried, being
    // a GET), and a reset seen before the request was written is retried as
    // unsent. The same run with every fault placed by a script, and exact
    // counts of found and resent, is src/reconcile/machine.rs; here at least
    // one create must have gone through reconciliation at all.
    let reconciled = by_header.get("found").copied().unwrap_or(0)
        + by_header.get("resent").copied().unwrap_or(0);
    assert!(reconciled >= 1, "{by_header:?}");
}
