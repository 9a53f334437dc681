//! What every scenario shares when it reports: the skip notice for a
//! scenario that could not run (a program missing), and the wall-clock time
//! each scenario took. It judges nothing (`measure` does) and runs nothing.

use serde_json::json;

/// How long each scenario took (wall clock), for the report and the JSON:
/// the quick mode of the whole bench is meant to stay under 3 minutes.
pub struct Laps {
    last: std::time::Instant,
    /// Seconds per scenario name, in the order they ran.
    pub seconds: serde_json::Map<String, serde_json::Value>,
}

impl Laps {
    /// Starts timing now.
    pub fn new() -> Laps {
        Laps {
            last: std::time::Instant::now(),
            seconds: serde_json::Map::new(),
        }
    }

    /// Records scenario `name` as ending now, having started at the last
    /// `done` (or the bench's start).
    pub fn done(&mut self, name: &str) {
        let s = self.last.elapsed().as_secs_f64();
        println!("   ({name}: {s:.1} s)");
        self.seconds.insert(name.into(), json!(s));
        self.last = std::time::Instant::now();
    }
}

/// Prints a scenario's figures and adds them to the JSON under `name`, or
/// says loudly (in the report, on stderr and in the JSON) why it was skipped.
pub fn insert_or_skip<T: serde::Serialize>(
    json: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    title: &str,
    result: Result<T, String>,
    print: impl Fn(&T),
) {
    match result {
        Ok(figures) => {
            print(&figures);
            json.insert(name.into(), serde_json::to_value(&figures).unwrap());
        }
        Err(why) => {
            println!("\n== {title}");
            println!("\n   !!!!! SKIPPED: {why} !!!!!\n");
            eprintln!("!!!!! {name} scenario SKIPPED: {why} !!!!!");
            json.insert(name.into(), json!({ "skipped": why }));
        }
    }
}
