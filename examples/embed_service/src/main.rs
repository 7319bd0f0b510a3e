//! A small HTTP service that embeds one orchestrator per sweep.
//!
//! ```text
//! embed_service [--listen 127.0.0.1:8080] [--root DIR] [--keep-finished 100]
//! POST   /sweeps              {"config": "<yaml>", "overrides": ["task=1..3"], "command": ["sh", "-c", "..."]}
//! GET    /sweeps/{id}         status and per-job outcomes
//! GET    /sweeps/{id}/events  Server-Sent Events, one JSON event each
//! DELETE /sweeps/{id}         cancel: SIGTERM to every job's process group, SIGKILL after the grace period
//! ```
//!
//! Sweep dirs go under `--root` (default: the current dir). A long-lived service must not
//! grow without bound: it remembers the last `--keep-finished` finished sweeps and forgets
//! older ones (their records stay in each sweep dir's `jobs.jsonl`). It prints
//! `listening on ADDR` once it accepts connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use orchestrator::{Event, Stop, StopReason};
use orchestrator_hydra::sweep::{ConfigInput, PreparedSweep, SweepRequest};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

/// The body of `POST /sweeps`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSweep {
    /// Config YAML (the seed format); absent = joblib's defaults.
    #[serde(default)]
    config: Option<String>,
    /// Overrides, as on the command line.
    #[serde(default)]
    overrides: Vec<String>,
    /// The app: program then arguments.
    command: Vec<String>,
}

struct Sweep {
    dir: PathBuf,
    total: u64,
    state: &'static str,
    records: Vec<Value>,
    stop: watch::Sender<Stop>,
    /// While the sweep runs; dropped when it ends, which ends every client's event stream.
    events: Option<broadcast::Sender<String>>,
    /// Order in which the sweep ended (for forgetting the oldest ended ones first).
    ended: Option<u64>,
}

#[derive(Clone, Default)]
struct App {
    root: PathBuf,
    sweeps: Arc<Mutex<HashMap<u64, Sweep>>>,
    next: Arc<Mutex<u64>>,
    ends: Arc<std::sync::atomic::AtomicU64>,
    keep_finished: usize,
}

impl App {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sweep>> {
        self.sweeps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sweep `id` has ended: record how, then forget the sweeps that ended longest ago
    /// beyond `keep_finished`.
    fn finish(&self, id: u64, state: &'static str) {
        let order = self.ends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut sweeps = self.lock();
        if let Some(s) = sweeps.get_mut(&id) {
            s.state = state;
            s.ended = Some(order);
            s.events = None;
        }
        let mut ended: Vec<(u64, u64)> = sweeps.iter().filter_map(|(id, s)| Some((s.ended?, *id))).collect();
        if ended.len() > self.keep_finished {
            ended.sort_unstable();
            for (_, old) in &ended[..ended.len() - self.keep_finished] {
                sweeps.remove(old);
            }
        }
    }
}

fn no_sweep(id: u64) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no sweep {id}: never started, or ended and forgotten (the service keeps the last \
             --keep-finished ended sweeps; every sweep's records stay in its dir's jobs.jsonl)"
        ),
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn create(State(app): State<App>, body: Bytes) -> Response {
    let req: NewSweep = match serde_json::from_slice(&body) {
        Ok(r) => r,
        // serde names the field: "missing field `command`", "unknown field `comand`".
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")),
    };
    if req.command.is_empty() {
        return error(StatusCode::BAD_REQUEST, "invalid request body: field `command` must not be empty");
    }
    let config = match req.config {
        Some(text) => ConfigInput::Text { text, name: "field `config`".into() },
        None => ConfigInput::Defaults,
    };
    let app_cmd: Vec<OsString> = req.command.iter().map(OsString::from).collect();
    let request = SweepRequest::new(config, req.overrides, app_cmd, app.root.clone());
    let mut prepared = match PreparedSweep::prepare(&request) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    prepared.options.forward_output = true;
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let run = match prepared.start(Some(ev_tx), stop_rx) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let id = {
        let mut next = app.next.lock().unwrap_or_else(|e| e.into_inner());
        *next += 1;
        *next
    };
    let (bcast, _) = broadcast::channel(1024);
    let body = json!({"id": id, "sweep_dir": run.abs_dir, "jobs": run.total});
    app.lock().insert(
        id,
        Sweep {
            dir: run.abs_dir.clone(),
            total: run.total,
            state: "running",
            records: Vec::new(),
            stop: stop_tx,
            events: Some(bcast.clone()),
            ended: None,
        },
    );
    // Follow the run: keep per-job outcomes and fan events out to SSE clients.
    let follower = app.clone();
    tokio::spawn(async move {
        // The run's own last event, sent once the sweep's state is known.
        let mut last = None;
        while let Some(ev) = ev_rx.recv().await {
            let value = ev.to_json();
            if matches!(ev, Event::RunFinished { .. }) {
                last = Some(value);
                continue;
            }
            if let Event::Finished(rec) = &ev
                && let Some(s) = follower.lock().get_mut(&id)
            {
                s.records.push(rec.to_value());
            }
            // No subscriber is fine: the state above is what GET returns.
            let _ = bcast.send(value.to_string());
        }
        let summary = run.done.await.unwrap_or_default();
        // Only a DELETE cancels; a halt policy stops a sweep on its own.
        let state = match summary.stop {
            Stop::None => "finished",
            Stop::Drain | Stop::Graceful { reason: StopReason::Halt, .. } => "halted",
            _ => "cancelled",
        };
        // Ended first: a client subscribing now gets the ended sweep's event instead of a live
        // stream that would miss this one.
        follower.finish(id, state);
        let mut last = last.unwrap_or_else(|| json!({"event": "sweep_finished"}));
        if let Some(fields) = last.as_object_mut() {
            fields.insert("state".into(), json!(state));
        }
        let _ = bcast.send(last.to_string());
    });
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

async fn status(State(app): State<App>, Path(id): Path<u64>) -> Response {
    match app.lock().get(&id) {
        Some(s) => axum::Json(json!({
            "id": id, "state": s.state, "sweep_dir": s.dir, "jobs": s.total,
            "finished": s.records.len(), "records": s.records,
        }))
        .into_response(),
        None => no_sweep(id),
    }
}

type EventStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<SseEvent, Infallible>> + Send>>;

async fn events(State(app): State<App>, Path(id): Path<u64>) -> Result<impl IntoResponse, Response> {
    let stream: EventStream = match app.lock().get(&id) {
        // A lagging client skips events rather than slowing the sweep down; the stream ends
        // with the sweep.
        Some(Sweep { events: Some(tx), .. }) => Box::pin(
            BroadcastStream::new(tx.subscribe()).filter_map(|m| m.ok()).map(|data| Ok(SseEvent::default().data(data))),
        ),
        // Ended already: its last event, and the end of the stream.
        Some(s) => {
            let last = json!({"event": "sweep_finished", "state": s.state, "finished": s.records.len()});
            Box::pin(tokio_stream::once(Ok(SseEvent::default().data(last.to_string()))))
        }
        None => return Err(no_sweep(id)),
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn cancel(State(app): State<App>, Path(id): Path<u64>) -> Response {
    match app.lock().get(&id) {
        Some(s) if s.ended.is_some() => {
            let msg = format!("sweep {id} has ended already ({})", s.state);
            (StatusCode::CONFLICT, axum::Json(json!({"id": id, "state": s.state, "error": msg}))).into_response()
        }
        Some(s) => {
            s.stop.send_modify(|st| *st = (*st).max(Stop::Graceful { reason: StopReason::Interrupted, signal: 15 }));
            (StatusCode::ACCEPTED, axum::Json(json!({"id": id, "state": "cancelling"}))).into_response()
        }
        None => no_sweep(id),
    }
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut root = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut keep_finished = 100;
    let usage = |why: &str| -> ! {
        eprintln!("error: {why}\nusage: embed_service [--listen ADDR] [--root DIR] [--keep-finished N]");
        std::process::exit(2);
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--root", Some(v)) => root = PathBuf::from(v),
            ("--keep-finished", Some(v)) => match v.parse() {
                Ok(n) if n >= 1 => keep_finished = n,
                _ => usage(&format!("--keep-finished takes a number of sweeps (1 or more), not `{v}`")),
            },
            (flag @ ("--listen" | "--root" | "--keep-finished"), None) => usage(&format!("{flag} needs a value")),
            (other, _) => usage(&format!("unknown argument `{other}`")),
        }
    }
    let app = App { root, keep_finished, ..App::default() };
    let router = Router::new()
        .route("/sweeps", axum::routing::post(create))
        .route("/sweeps/{id}", get(status).delete(cancel))
        .route("/sweeps/{id}/events", get(events))
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    if let Ok(addr) = listener.local_addr() {
        println!("listening on {addr}");
    }
    if let Err(e) = axum::serve(listener, router).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
