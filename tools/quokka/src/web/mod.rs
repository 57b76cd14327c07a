//! `quokka run --http`: every node serves, on a thread of its own and never on a core,
//! - `/metrics`: the Prometheus text of [`Engine::metrics`] (what the cores last published);
//! - `/status.json`: what `quokka ctl status --json` prints, as of the last second;
//! - `/series.json`: the last five minutes of per-core rates and latency, one sample a second;
//! - `/`: the dashboard, one page with its CSS and JS inlined (compiled into the binary, so
//!   one request with the token gets all of it); it polls the two above.
//!
//! One sampler thread asks the engine for its status once a second, whoever watches: however
//! many clients poll, this node's cores answer one status request a second for it (a member's
//! cores one more for the coordinator's sampler), and `/metrics` never asks them.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quokka_engine::{Engine, Status};
use quokka_io::http::{self, HttpLimits, Request, Response};
use serde_json::{json, Value};

use crate::control::Current;

/// Samples kept for the charts: five minutes at one a second.
const SAMPLES: usize = 300;

/// The dashboard page with its style and script inlined.
fn page() -> &'static str {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        include_str!("index.html")
            .replace("/* dashboard.css */", include_str!("dashboard.css"))
            .replace("/* dashboard.js */", include_str!("dashboard.js"))
    })
}

/// What the sampler saw last.
#[derive(Default)]
struct Seen {
    /// The last status, as JSON; none while the node waits to join its coordinator again.
    status: Option<String>,
    samples: VecDeque<Value>,
}

/// Serves the HTTP endpoint on `listener` for as long as the process runs; with a non-empty
/// `token`, every request must carry it.
pub fn serve(listener: TcpListener, token: String, engine: Arc<Current>) -> std::io::Result<()> {
    let limits = HttpLimits::default();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            "dashboard on http://{addr}/ (metrics at /metrics; at most {} connections at once, {:?} for a request){}",
            limits.connections,
            limits.head,
            if token.is_empty() { "" } else { "; requests must carry the cluster token" }
        );
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sampler = (seen.clone(), engine.clone());
    std::thread::Builder::new()
        .name("quokka-sampler".into())
        .spawn(move || sample(&sampler.0, &sampler.1))?;
    http::serve(listener, limits, token, move |request| {
        route(request, &seen, &engine)
    })?;
    Ok(())
}

fn route(request: &Request, seen: &Mutex<Seen>, engine: &Current) -> Response {
    const JSON: &str = "application/json";
    let waiting = || {
        Response::error(
            503,
            "this node's coordinator was lost: it waits to join it again",
        )
    };
    match request.path.as_str() {
        "/" | "/index.html" => Response::ok("text/html; charset=utf-8", page()),
        "/metrics" => match current(engine) {
            Some(engine) => Response::ok(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                engine.metrics(),
            ),
            None => waiting(),
        },
        "/status.json" => match seen.lock().unwrap().status.clone() {
            Some(status) => Response::ok(JSON, status),
            None => waiting(),
        },
        "/series.json" => {
            let seen = seen.lock().unwrap();
            let samples: Vec<&Value> = seen.samples.iter().collect();
            Response::ok(JSON, json!({ "samples": samples }).to_string())
        }
        _ => Response::error(
            404,
            "no such page: / (dashboard), /metrics, /status.json, /series.json",
        ),
    }
}

fn current(engine: &Current) -> Option<Arc<Engine>> {
    engine.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Once a second: the engine's status (the whole cluster's on the coordinator, this node's on
/// a member) and a sample of it for the charts.
fn sample(seen: &Mutex<Seen>, engine: &Current) {
    loop {
        let status = current(engine).map(|e| match e.is_coordinator() {
            true => e.status(),
            false => e.own_status(),
        });
        {
            let mut seen = seen.lock().unwrap();
            seen.status = status.as_ref().map(Status::to_json);
            if let Some(s) = &status {
                if seen.samples.len() == SAMPLES {
                    seen.samples.pop_front();
                }
                seen.samples.push_back(point(s));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One sample for the charts: the time, and each core's rates and latency of the last second.
fn point(s: &Status) -> Value {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let cores: Vec<Value> = (s.cores.iter())
        .map(|c| {
            json!({
                "node": c.node,
                "core": c.core,
                "outputs_per_sec": c.outputs_per_sec,
                "frames_per_sec": c.frames_per_sec,
                "p50_ns": c.latency_p50,
                "p99_ns": c.latency_p99,
                "p999_ns": c.latency_p999,
            })
        })
        .collect();
    json!({ "t": ms, "cores": cores })
}
