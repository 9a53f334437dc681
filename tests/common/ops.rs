//! What the operations tests share: the keys no output may ever show, a
//! background GET, the status document's budgets and `POST /reload`.

use serde_json::Value;
use tokio::task::JoinHandle;

use super::*;

/// A client key no tenant accepts.
pub const BAD_CLIENT: &str = "svc-intruder-0bad";
/// acme's key after rotation.
pub const ROTATED_KEY: &str = "real-acme-key-rotated-5d1e";

/// Every key a test may have used: none may ever show up in output.
pub const SECRETS: [&str; 7] = [
    ACME_KEY,
    BETA_KEY,
    ACME_CLIENT,
    ACME_CLIENT2,
    BETA_CLIENT,
    BAD_CLIENT,
    ROTATED_KEY,
];

/// Fails the test when `text` (named `what`) holds any of [`SECRETS`].
pub fn assert_no_secret(what: &str, text: &str) {
    for key in SECRETS {
        assert!(
            !text.contains(key),
            "{what} contains the key {key:?}:\n{text}"
        );
    }
}

/// GET `url` with client key `key` in the header, in the background.
pub fn spawn_get(
    client: &reqwest::Client,
    url: String,
    key: &'static str,
) -> JoinHandle<reqwest::Result<(u16, String)>> {
    let request = client.get(url).header("X-API-KEY", key);
    tokio::spawn(async move {
        let resp = request.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    })
}

/// The general-class budget rows of a `/status` document.
pub fn general_budgets(status: &Value) -> Vec<Value> {
    status["budgets"]
        .as_array()
        .expect("budgets is an array")
        .iter()
        .filter(|b| b["class"] == "general")
        .cloned()
        .collect()
}

/// `POST /reload`, with a check that no key shows in its answer.
pub async fn post_reload(gate: &Gate) -> (u16, Value) {
    let (code, text) = admin_reload(&gate.admin).await;
    assert_no_secret("/reload", &text);
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}
