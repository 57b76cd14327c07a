//! The control endpoint of `quokka run` (`--control`) and the client side of `quokka ctl`.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, RwLock};

use anyhow::Result;
use quokka_engine::Engine;
use quokka_io::control::{
    self, Client, ControlError, Limits, Request, Response, Session, Timeouts,
};

/// The engine the control endpoint drives: none while a member whose coordinator was lost
/// waits to join it again (its old engine is gone, its new one not started yet).
pub type Current = RwLock<Option<Arc<Engine>>>;

/// Serves control connections on `listener` for as long as the process runs, within the
/// default [`Limits`]: at most 64 connections at once (each on its own thread, so `status`
/// answers while a change is in progress; beyond that a connection is refused at once), and
/// 10 s for a connection's whole request.
pub fn serve(listener: TcpListener, engine: Arc<Current>) {
    let limits = Limits::default();
    match listener.local_addr() {
        Ok(addr) => tracing::info!(
            "control endpoint listening on {addr} (at most {} connections at once, {:?} per request)",
            limits.connections,
            limits.request
        ),
        Err(e) => tracing::warn!("control endpoint: no local address: {e}"),
    }
    control::serve(listener, limits, move |session| {
        // Cloned out, so a member's rejoin never waits on a request in progress.
        let current = engine.read().unwrap_or_else(|e| e.into_inner()).clone();
        handle(session, current.as_deref())
    })
    .expect("spawn control thread");
}

fn handle(mut session: Session, engine: Option<&Engine>) {
    let peer = session.peer();
    let request = session.request();
    let Some(engine) = engine else {
        if !matches!(request, Err(ControlError::Closed(_))) {
            let waiting = "this node's coordinator was lost: it waits to join it again (restart the coordinator with its command and --state-dir)";
            let _ = session.answer(&Response::Error(waiting.into()));
        }
        return;
    };
    let response = match request {
        Ok(envelope) if !engine.token_matches(&envelope.token) => {
            tracing::warn!(%peer, "refused a control connection: wrong cluster token");
            Response::Error("wrong cluster token (see --cluster-token)".into())
        }
        Ok(envelope) => match envelope.request {
            Request::Join(body) => {
                tracing::info!(%peer, "a node asks to join");
                engine.admit(&mut session, &body)
            }
            request => {
                tracing::info!(%peer, "control request: {request:?}");
                execute(engine, request)
            }
        },
        Err(ControlError::Closed(_)) => {
            tracing::debug!(%peer, "a control connection closed without a request");
            return;
        }
        Err(e @ ControlError::Timeout { .. }) => {
            tracing::warn!(%peer, "dropped a control connection: {e}");
            Response::Error(e.to_string())
        }
        Err(e) => {
            tracing::warn!(%peer, "refused a control connection: {e}");
            Response::Error(format!("bad control message: {e}"))
        }
    };
    if let Err(e) = session.answer(&response) {
        tracing::warn!(%peer, "could not answer a control request: {e}");
    }
}

fn execute(engine: &Engine, request: Request) -> Response {
    let result = match request {
        Request::Status => Ok(engine.status().to_string()),
        Request::StatusJson => Ok(engine.status().to_json()),
        Request::GrowCores(n) => engine
            .grow(usize::from(n))
            .map(|r| format!("grow-cores {n}: {r}")),
        Request::ShrinkCores(n) => engine
            .shrink(usize::from(n))
            .map(|r| format!("shrink-cores {n}: {r}")),
        Request::RemoveNode(name) => engine
            .remove_node(&name)
            .map(|r| format!("remove-node {name}: {r}")),
        Request::Checkpoint => {
            return match engine.checkpoint() {
                Ok(c) => Response::Ok(format!(
                    "checkpoint {} is durable: {} bytes written ({} bytes of state) in {} ms",
                    c.checkpoint,
                    c.written,
                    c.state_bytes,
                    c.duration.as_millis()
                )),
                Err(e) => Response::Error(e.to_string()),
            }
        }
        Request::Autoscale(how) => {
            return match parse_autoscale(&how).and_then(|range| engine.set_autoscale(range)) {
                Ok(text) => Response::Ok(text),
                Err(e) => Response::Error(e),
            }
        }
        Request::Join(_) | Request::Ready => {
            return Response::Error("a join must start with a join request".into())
        }
    };
    match result {
        Ok(text) => Response::Ok(text),
        Err(e) => {
            tracing::warn!("refused a change: {e}");
            Response::Error(e.to_string())
        }
    }
}

/// `off`, `on` (the range it last had) or `MIN..MAX`, as `ctl autoscale` takes it; `None`:
/// off, `Some(None)`: on again.
pub fn parse_autoscale(how: &str) -> Result<Option<Option<(usize, usize)>>, String> {
    match how {
        "off" => Ok(None),
        "on" => Ok(Some(None)),
        range => Ok(Some(Some(
            parse_range(range).map_err(|e| format!("{e} (or off, or on)"))?,
        ))),
    }
}

/// `MIN..MAX` cores.
pub fn parse_range(range: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{range}`: give MIN..MAX cores, e.g. 1..4");
    let (min, max) = range.split_once("..").ok_or_else(bad)?;
    Ok((
        min.parse().map_err(|_| bad())?,
        max.parse().map_err(|_| bad())?,
    ))
}

/// Sends one request with the cluster token and waits for the answer, within `timeouts`
/// (nothing is sent until the endpoint has greeted).
pub fn request(
    addr: SocketAddr,
    token: &str,
    request: &Request,
    timeouts: Timeouts,
) -> Result<Response> {
    let mut client = Client::connect(addr, timeouts)?;
    client.request(token, request).map_err(|e| match e {
        ControlError::Timeout { .. } => anyhow::Error::new(e).context(format!(
            "{addr} did not answer in time; a change may still be in progress \
             (see `quokka ctl status`, or wait longer with --timeout)"
        )),
        ControlError::Closed(_) => {
            anyhow::anyhow!("the engine at {addr} closed the control connection without an answer")
        }
        e => anyhow::Error::new(e).context(format!("control request to {addr}")),
    })
}
