//! Reconcile: a create that failed after it was sent is looked up by its
//! `externalId` before anyone answers 502.
//!
//! A stage around [`crate::forward`]. `orders/create`, `customers/create`
//! and `customers-corporate/create` are not resent blindly: when the
//! connection breaks or times out after sending, the CRM may have created
//! the entity. forward reports that case as [`GatewayError::Ambiguous`];
//! this stage then waits `reconcile.delay` (the create may still be
//! running), asks `GET /api/v{N}/{group}/{externalId}?by=externalId` (with
//! the create's `site`) through the same scheduler, tenant, class and
//! deadline, and:
//! - found → answers 201 as the CRM would have, `X-Crmgate-Reconciled: found`;
//! - not found (the CRM's JSON 404) → resends the create (one more send,
//!   within `retry.max_attempts`), `X-Crmgate-Reconciled: resent`; when the
//!   resend is refused because the `externalId` already exists (the first
//!   one finished meanwhile), looks up again and answers as found;
//! - the lookup fails → 502 JSON naming the `externalId`.
//!
//! A create without `externalId` cannot be looked up and ends as forward's
//! 502. This stage never sends a create twice unless a lookup said it
//! does not exist, never sees the real key (forward adds it), and never
//! logs an `externalId` or a body.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use prometheus::IntCounterVec;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::access::Trace;
use crate::bodies::BodyLease;
use crate::error::GatewayError;
use crate::forward::Forward;
use crate::inbound::{Inbound, Outgoing, REQUEST_ID_HEADER};
use crate::rewrite::is_form;
use crate::scheduler::Ticket;
use crate::tenant::Tenant;

/// Response header: `found` or `resent`, when a create was reconciled.
pub const RECONCILED_HEADER: &str = "x-crmgate-reconciled";

/// What is escaped in the `externalId` path segment: all but letters,
/// digits and `-_~` (a `.` stays escaped, so `.` or `..` is never a dot
/// segment the URL parser would resolve).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// The largest lookup answer read (an order with many items is large).
const MAX_LOOKUP_BYTES: usize = 16 * 1024 * 1024;

/// How a create that failed after sending ended (the `outcome` label of
/// `crmgate_reconciled_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// The lookup found it: answered 201 from the lookup.
    Found,
    /// The lookup did not find it: the create was sent again, and its
    /// answer is the caller's.
    Resent,
    /// The lookup itself failed (or could not start before the deadline):
    /// 502 naming the `externalId`.
    LookupFailed,
    /// The lookup did not find it, but `retry.max_attempts` sends were
    /// made: 502 saying it is safe to send again.
    Exhausted,
    /// No `externalId` to look up: 502, as without this stage.
    NoExternalId,
}

impl Reconciled {
    /// Every outcome, for series that exist from the start.
    pub const ALL: [Reconciled; 5] = [
        Reconciled::Found,
        Reconciled::Resent,
        Reconciled::LookupFailed,
        Reconciled::Exhausted,
        Reconciled::NoExternalId,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reconciled::Found => "found",
            Reconciled::Resent => "resent",
            Reconciled::LookupFailed => "lookup_failed",
            Reconciled::Exhausted => "exhausted",
            Reconciled::NoExternalId => "no_external_id",
        }
    }
}

/// The kinds of entity whose creates can be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// `orders/create`, field `order`.
    Order,
    /// `customers/create`, field `customer`.
    Customer,
    /// `customers-corporate/create`, field `customerCorporate`.
    CustomerCorporate,
}

impl Entity {
    /// The path group: `orders`, `customers`, `customers-corporate`.
    pub fn group(self) -> &'static str {
        match self {
            Entity::Order => "orders",
            Entity::Customer => "customers",
            Entity::CustomerCorporate => "customers-corporate",
        }
    }

    /// The form field of the create, and the key of the entity in answers.
    pub fn field(self) -> &'static str {
        match self {
            Entity::Order => "order",
            Entity::Customer => "customer",
            Entity::CustomerCorporate => "customerCorporate",
        }
    }
}

/// A create this stage can reconcile: what it creates, and where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    /// What it creates.
    pub entity: Entity,
    /// `v5`, as the caller wrote it.
    pub version: String,
    /// The entity's `externalId`, if it has one.
    pub external_id: Option<String>,
    /// The create's `site` (form or query), if any.
    pub site: Option<String>,
}

/// The create in `out`, when it is a POST form to one of the three create
/// methods.
pub fn create_of(out: &Outgoing) -> Option<Create> {
    if out.method != Method::POST {
        return None;
    }
    let rest = out.path.strip_prefix("/api/")?;
    let (version, method) = rest.split_once('/')?;
    let numbered = version
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let entity = match method {
        "orders/create" => Entity::Order,
        "customers/create" => Entity::Customer,
        "customers-corporate/create" => Entity::CustomerCorporate,
        _ => return None,
    };
    if !numbered {
        return None;
    }
    let form: Vec<(String, String)> = if is_form(&out.headers) {
        form_urlencoded::parse(&out.body).into_owned().collect()
    } else {
        Vec::new()
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let external_id = field(entity.field())
        .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
        .and_then(|v| match v.get("externalId")? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let site = field("site").cloned().or_else(|| {
        form_urlencoded::parse(out.query.as_deref().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "site")
            .map(|(_, v)| v.into_owned())
    });
    Some(Create {
        entity,
        version: version.to_string(),
        external_id,
        site,
    })
}

/// The lookup request for `create`: a GET by `externalId`, with the
/// create's `site`, its request id and forwarding chain.
pub fn lookup_request(create: &Create, external_id: &str, headers: &HeaderMap) -> Outgoing {
    let id = utf8_percent_encode(external_id, SEGMENT);
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("by", "externalId");
    if let Some(site) = &create.site {
        query.append_pair("site", site);
    }
    let mut out_headers = HeaderMap::new();
    for name in [REQUEST_ID_HEADER, "x-forwarded-for", "user-agent"] {
        if let Some(v) = headers.get(name) {
            out_headers.insert(name, v.clone());
        }
    }
    out_headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    Outgoing {
        method: Method::GET,
        path: format!("/api/{}/{}/{id}", create.version, create.entity.group()),
        query: Some(query.finish()),
        headers: out_headers,
        body: Bytes::new(),
    }
}

/// What a lookup learnt.
#[derive(Debug)]
enum Lookup {
    /// The CRM has it: its id and the entity.
    Found(Value, Value),
    /// The CRM answered its JSON 404.
    Missing,
    /// No usable answer; why.
    Failed(String),
}

/// One request through the stage: creates are reconciled, anything else
/// goes straight to `forward`. How each reconciliation ended is counted in
/// `reconciled` (`crmgate_reconciled_total`).
pub async fn run<F: Forward>(
    forward: &F,
    reconciled: &IntCounterVec,
    req: Inbound,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    let Some(create) = create_of(&req.out) else {
        return forward.send(req, trace).await;
    };
    let Inbound {
        tenant,
        ticket,
        out,
        lease,
    } = req;
    // The body stays accounted until the caller has its answer, whatever
    // number of sends that takes.
    let stage = Stage {
        forward,
        tenant,
        ticket,
        create,
        lease,
    };
    let (outcome, result) = stage.reconcile(*out, trace).await;
    if let Some(outcome) = outcome {
        trace.reconciled = Some(outcome.as_str());
        reconciled
            .with_label_values(&[&stage.tenant.name, outcome.as_str()])
            .inc();
    }
    result
}

/// One create being reconciled.
struct Stage<'a, F> {
    forward: &'a F,
    tenant: Arc<Tenant>,
    ticket: Ticket,
    create: Create,
    /// The caller's body, held until the caller has its answer.
    lease: BodyLease,
}

impl<F: Forward> Stage<'_, F> {
    /// An [`Inbound`] for one more send of this request. The body's bytes
    /// stay held by the caller's lease, so each send's own lease is empty.
    fn inbound(&self, out: Outgoing) -> Inbound {
        Inbound {
            tenant: self.tenant.clone(),
            ticket: self.ticket.clone(),
            out: Box::new(out),
            lease: BodyLease::new(self.lease.pool()),
        }
    }

    async fn send(&self, out: Outgoing, trace: &mut Trace) -> Result<Response, GatewayError> {
        self.forward.send(self.inbound(out), trace).await
    }

    /// Sends the create and reconciles it; the outcome, when there was
    /// anything to reconcile.
    async fn reconcile(
        &self,
        out: Outgoing,
        trace: &mut Trace,
    ) -> (Option<Reconciled>, Result<Response, GatewayError>) {
        let mut result = self.send(out.clone(), trace).await;
        let mut resent = false;
        loop {
            let failure = match result {
                Err(GatewayError::Ambiguous(inner)) => inner,
                Ok(resp) if resent => return self.after_resend(resp, &out, trace).await,
                other => return (resent.then_some(Reconciled::Resent), other),
            };
            let Some(external_id) = self.create.external_id.clone() else {
                return (
                    Some(Reconciled::NoExternalId),
                    Err(GatewayError::Ambiguous(failure)),
                );
            };
            let delay = self.forward.snapshot().config.reconcile.delay;
            if Instant::now() + delay >= self.ticket.deadline {
                let cause = "the caller's deadline comes before the lookup could be made";
                return self.lookup_failed(&external_id, cause.into());
            }
            tokio::time::sleep(delay).await;
            trace.queue += delay;
            match self.lookup(&external_id, &out.headers, trace).await {
                Lookup::Found(id, entity) => {
                    return (Some(Reconciled::Found), Ok(self.found(id, entity)))
                }
                Lookup::Failed(cause) => return self.lookup_failed(&external_id, cause),
                Lookup::Missing => {
                    let max = self.forward.snapshot().config.retry.max_attempts.get();
                    if trace.attempts >= max {
                        let error = self.unreconciled(
                            &external_id,
                            format!(
                                "the CRM says it does not exist, but the {max} sends \
                                 retry.max_attempts allows were made; it is safe to send it again"
                            ),
                        );
                        return (Some(Reconciled::Exhausted), Err(error));
                    }
                    resent = true;
                    result = self.send(out.clone(), trace).await;
                }
            }
        }
    }

    /// The answer to a resend: the caller's, unless the CRM refused it
    /// because the `externalId` now exists (the first send finished after
    /// the lookup): then it is looked up again and answered as found.
    async fn after_resend(
        &self,
        resp: Response,
        out: &Outgoing,
        trace: &mut Trace,
    ) -> (Option<Reconciled>, Result<Response, GatewayError>) {
        if resp.status() != StatusCode::BAD_REQUEST {
            return (Some(Reconciled::Resent), Ok(mark(resp, Reconciled::Resent)));
        }
        let (parts, body) = resp.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_LOOKUP_BYTES).await {
            Ok(b) => b,
            Err(e) => {
                let error = GatewayError::UpstreamUnreachable {
                    tenant: self.tenant.name.to_string(),
                    cause: format!("the answer to the resent create broke off: {e}"),
                };
                return (Some(Reconciled::Resent), Err(error));
            }
        };
        let resp = Response::from_parts(parts, Body::from(bytes.clone()));
        if !is_duplicate(&bytes) {
            return (Some(Reconciled::Resent), Ok(mark(resp, Reconciled::Resent)));
        }
        let external_id = self.create.external_id.clone().unwrap_or_default();
        match self.lookup(&external_id, &out.headers, trace).await {
            Lookup::Found(id, entity) => (Some(Reconciled::Found), Ok(self.found(id, entity))),
            // The CRM says it exists but will not show it: its own answer
            // says the most.
            _ => (Some(Reconciled::Resent), Ok(mark(resp, Reconciled::Resent))),
        }
    }

    /// Asks the CRM for the entity by `externalId`, through the scheduler.
    async fn lookup(&self, external_id: &str, headers: &HeaderMap, trace: &mut Trace) -> Lookup {
        let out = lookup_request(&self.create, external_id, headers);
        let resp = match self.send(out, trace).await {
            Ok(resp) => resp,
            Err(e) => return Lookup::Failed(e.to_string()),
        };
        let status = resp.status();
        let body = match axum::body::to_bytes(resp.into_body(), MAX_LOOKUP_BYTES).await {
            Ok(b) => b,
            Err(e) => return Lookup::Failed(format!("the lookup's answer broke off: {e}")),
        };
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let field = self.create.entity.field();
        match (status, json) {
            (StatusCode::OK, Some(v)) if v["success"] == true && v[field].is_object() => {
                let entity = v[field].clone();
                Lookup::Found(entity["id"].clone(), entity)
            }
            // Only the CRM's own JSON 404 means "no such entity"; a proxy's
            // HTML 404 says nothing about it.
            (StatusCode::NOT_FOUND, Some(v)) if v["success"] == false => Lookup::Missing,
            (status, _) => Lookup::Failed(format!("the CRM answered the lookup with {status}")),
        }
    }

    /// 201 as the CRM answers a create, from the entity the lookup found.
    fn found(&self, id: Value, entity: Value) -> Response {
        let mut body = json!({"success": true, "id": id});
        body[self.create.entity.field()] = entity;
        let mut resp = Response::new(Body::from(body.to_string()));
        *resp.status_mut() = StatusCode::CREATED;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        mark(resp, Reconciled::Found)
    }

    fn lookup_failed(
        &self,
        external_id: &str,
        cause: String,
    ) -> (Option<Reconciled>, Result<Response, GatewayError>) {
        let detail = format!(
            "whether it exists could not be checked ({cause}); look it up by externalId \
             before sending it again"
        );
        (
            Some(Reconciled::LookupFailed),
            Err(self.unreconciled(external_id, detail)),
        )
    }

    fn unreconciled(&self, external_id: &str, detail: String) -> GatewayError {
        GatewayError::Unreconciled {
            tenant: self.tenant.name.to_string(),
            entity: self.create.entity.field(),
            external_id: external_id.to_string(),
            detail,
        }
    }
}

/// Adds `X-Crmgate-Reconciled` to an answer.
fn mark(mut resp: Response, outcome: Reconciled) -> Response {
    resp.headers_mut().insert(
        RECONCILED_HEADER,
        HeaderValue::from_static(outcome.as_str()),
    );
    resp
}

/// True when a 400 body is RetailCRM's refusal of an `externalId` that
/// already exists (`"errors": {"externalId": "... already exists."}`).
fn is_duplicate(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let text = |v: &Value| v.to_string().to_ascii_lowercase();
    v["success"] == false && {
        let errors = text(&v["errors"]);
        errors.contains("externalid") && errors.contains("exist")
    }
}

#[cfg(test)]
mod machine;
#[cfg(test)]
mod tests;
