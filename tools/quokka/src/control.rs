//! The control endpoint of `quokka run` (`--control`) and the client side of `quokka ctl`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quokka_engine::Engine;
use quokka_io::control::{read_frame, write_frame, ControlError, Request, Response};

/// Serves control connections on `listener` for as long as the process runs; each connection
/// gets its own thread, so `status` answers while a change is in progress.
pub fn serve(listener: TcpListener, engine: Arc<Engine>) {
    std::thread::Builder::new()
        .name("quokka-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let engine = engine.clone();
                std::thread::spawn(move || handle(stream, &engine));
            }
        })
        .expect("spawn control thread");
}

fn handle(mut stream: TcpStream, engine: &Engine) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown peer".into(), |a| a.to_string());
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = read_frame(&mut stream).and_then(|payload| Request::decode(&payload));
    let response = match request {
        Ok(envelope) if !engine.token_matches(&envelope.token) => {
            tracing::warn!(%peer, "refused a control connection: wrong cluster token");
            Response::Error("wrong cluster token (see --cluster-token)".into())
        }
        Ok(envelope) => match envelope.request {
            Request::Join(body) => {
                tracing::info!(%peer, "a node asks to join");
                engine.admit(&mut stream, &body)
            }
            request => {
                tracing::info!(%peer, "control request: {request:?}");
                execute(engine, request)
            }
        },
        Err(e) => {
            tracing::warn!(%peer, "refused a control connection: {e}");
            Response::Error(format!("bad control message: {e}"))
        }
    };
    if let Err(e) = write_frame(&mut stream, &response.encode()) {
        tracing::warn!(%peer, "could not answer a control request: {e}");
    }
}

fn execute(engine: &Engine, request: Request) -> Response {
    let result = match request {
        Request::Status => Ok(engine.status().to_string()),
        Request::GrowCores(n) => engine
            .grow(usize::from(n))
            .map(|r| format!("grow-cores {n}: {r}")),
        Request::ShrinkCores(n) => engine
            .shrink(usize::from(n))
            .map(|r| format!("shrink-cores {n}: {r}")),
        Request::RemoveNode(name) => engine
            .remove_node(&name)
            .map(|r| format!("remove-node {name}: {r}")),
        Request::Join(_) | Request::Ready => {
            return Response::Error("a join must start with a join request".into())
        }
    };
    match result {
        Ok(text) => Response::Ok(text),
        Err(e) => Response::Error(e.to_string()),
    }
}

/// Sends one request with the cluster token and waits for the answer (a change may take a
/// while).
pub fn request(addr: SocketAddr, token: &str, request: &Request) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the control endpoint at {addr} (is `quokka run --control {addr}` up?)"))?;
    write_frame(&mut stream, &request.encode(token)?)?;
    let payload = read_frame(&mut stream).map_err(|e| match e {
        ControlError::Truncated => {
            anyhow::anyhow!("the engine closed the control connection without an answer")
        }
        e => e.into(),
    })?;
    Ok(Response::decode(&payload)?)
}
