use super::*;
use crate::config::Config;

const KEY: &str = "real-key-history-0001";

fn gateway() -> Arc<Gateway> {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"acme\"\nbase_url = \"https://acme.retailcrm.ru\"\n\
         api_key = \"{KEY}\"\n"
    );
    let config = Config::from_toml(&text, "test config", &|_| None).unwrap();
    Gateway::new(config, None).unwrap()
}

fn sample(uptime_seconds: u64) -> Sample {
    Sample {
        uptime_seconds,
        budgets: vec![BudgetPoint {
            egress: Arc::from("default"),
            class: Class::General,
            sends: uptime_seconds,
            throttled: 0,
            limit: 10.0,
            configured: 10.0,
        }],
        tenants: vec![],
    }
}

#[test]
fn the_ring_keeps_five_minutes_whatever_the_uptime() {
    let h = History::new();
    for t in 0..1000 {
        h.push(sample(t));
    }
    assert_eq!(h.len(), CAPACITY);
    let doc = h.doc();
    assert_eq!(doc.uptime_seconds.len(), CAPACITY);
    assert_eq!(
        doc.uptime_seconds[0],
        1000 - CAPACITY as u64,
        "oldest first"
    );
    assert_eq!(doc.budgets.len(), 1);
    assert_eq!(doc.budgets[0].sends.len(), CAPACITY);
    assert_eq!(doc.budgets[0].sends[CAPACITY - 1], Some(999));
}

#[test]
fn a_series_is_null_where_its_tenant_did_not_exist() {
    let h = History::new();
    h.push(sample(1));
    let mut s = sample(2);
    s.tenants.push(TenantPoint {
        name: Arc::from("late"),
        waiting: 3,
        inflight: 1,
        answers: [0, 4, 0, 0, 0],
    });
    h.push(s);
    let doc = h.doc();
    let t = &doc.tenants[0];
    assert_eq!(t.waiting, [None, Some(3)]);
    assert_eq!(t.answers["2xx"], [None, Some(4)]);
}

#[tokio::test]
async fn the_sampler_records_per_second_deltas_and_no_key() {
    let gw = gateway();
    let h = History::new();
    let mut sampler = Sampler::default();
    let m = &gw.metrics;
    // Counts from before the first sample are the baseline, not a spike.
    m.upstream_attempts
        .with_label_values(&["default", "general", "200"])
        .inc_by(100);
    sampler.tick(&gw, &h);

    m.upstream_attempts
        .with_label_values(&["default", "general", "200"])
        .inc_by(5);
    m.upstream_attempts
        .with_label_values(&["default", "general", "503"])
        .inc_by(2);
    m.upstream_throttled
        .with_label_values(&["default", "general", "503"])
        .inc_by(2);
    gw.metrics
        .requests
        .with_label_values(&["acme", "general", "201"])
        .inc_by(3);
    m.config_reloads.with_label_values(&["failure"]).inc();
    sampler.tick(&gw, &h);

    let doc = h.doc();
    let general = doc
        .budgets
        .iter()
        .find(|b| b.class == Class::General)
        .unwrap();
    assert_eq!(general.egress, "default");
    assert_eq!(general.sends, [Some(0), Some(7)]);
    assert_eq!(general.throttled, [Some(0), Some(2)]);
    assert_eq!(general.limit[1], Some(10.0));
    assert_eq!(general.configured[1], Some(10.0));
    let telephony = doc
        .budgets
        .iter()
        .find(|b| b.class == Class::Telephony)
        .unwrap();
    assert_eq!(telephony.configured[1], Some(40.0));
    assert_eq!(doc.tenants[0].name, "acme");
    assert_eq!(doc.tenants[0].answers["2xx"], [Some(0), Some(3)]);
    assert_eq!(doc.reloads.failed, 1);
    assert_eq!(doc.reloads.last.unwrap().outcome, "failure");

    // The last outcome stays until the next reload.
    m.config_reloads.with_label_values(&["success"]).inc();
    sampler.tick(&gw, &h);
    sampler.tick(&gw, &h);
    let doc = h.doc();
    assert_eq!(doc.reloads.last.unwrap().outcome, "success");
    assert_eq!(doc.tenants[0].answers["2xx"][3], Some(0));

    let text = serde_json::to_string(&doc).unwrap();
    assert!(!text.contains(KEY), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_sampler_task_stops_with_the_ring() {
    let gw = gateway();
    let h = History::start(&gw);
    let filled = async {
        while h.len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), filled)
        .await
        .expect("a sample a second");
    let weak = Arc::downgrade(&h);
    drop(h);
    assert!(weak.upgrade().is_none(), "the task holds no strong ref");
}
