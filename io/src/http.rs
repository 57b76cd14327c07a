//! A small HTTP/1.1 endpoint for reading: GET and HEAD only, one request per connection
//! (`Connection: close`), each on its own thread, at most [`HttpLimits::connections`] at once.
//! Whatever is not a well-formed request is refused: the request head must arrive whole within
//! [`HttpLimits::head`] of the accept (a slow client gets 408) and fit in
//! [`HttpLimits::head_bytes`] (431), garbage gets 400, another method 405, a request with a
//! body 413. With a token, every request must carry it (`Authorization: Bearer TOKEN` or
//! `?token=TOKEN`), else 401. The request head is parsed by `httparse`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the endpoint serves at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; beyond it a connection gets 503 and is closed.
    pub connections: usize,
    /// For the request head to arrive whole, from the accept.
    pub head: Duration,
    /// Largest request head, in bytes.
    pub head_bytes: usize,
    /// For the client to take the answer.
    pub write: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connections: 64,
            head: Duration::from_secs(5),
            head_bytes: 16 << 10,
            write: Duration::from_secs(10),
        }
    }
}

/// A request that passed the checks: its path and query parameters (percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub query: Vec<(String, String)>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text error (the text ends with a newline).
    pub fn error(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n").into_bytes(),
        }
    }
}

/// Serves `listener` for as long as the process runs: each request that passes the checks
/// (and carries `token`, unless it is empty) goes to `handle`.
pub fn serve(
    listener: TcpListener,
    limits: HttpLimits,
    token: String,
    handle: impl Fn(&Request) -> Response + Send + Sync + 'static,
) -> io::Result<JoinHandle<()>> {
    crate::bounded::serve(
        listener,
        "http",
        limits.connections,
        move |stream| {
            let busy = Response::error(503, "too many connections; try again shortly");
            // A fresh socket's buffer takes this at once; the timeout only guards the acceptor.
            let _ = answer(&stream, &busy, false, Duration::from_millis(100));
            let _ = stream.shutdown(Shutdown::Both);
        },
        move |stream| serve_one(stream, limits, &token, &handle),
    )
}

fn serve_one(
    stream: TcpStream,
    limits: HttpLimits,
    token: &str,
    handle: &dyn Fn(&Request) -> Response,
) {
    let accepted = Instant::now();
    let peer = stream.peer_addr().ok();
    let (response, head_only) = match read_head(&stream, accepted + limits.head, limits) {
        // A HEAD is answered without a body, a refusal too.
        Ok(head) => match check(&head, token) {
            Ok(request) => (handle(&request), head.method == "HEAD"),
            Err(refusal) => (refusal, head.method == "HEAD"),
        },
        Err(Refused::Gone) => return,
        Err(Refused::With(response)) => (response, false),
    };
    if response.status >= 400 {
        tracing::debug!(?peer, status = response.status, "refused an HTTP request");
    }
    if answer(&stream, &response, head_only, limits.write).is_ok() {
        linger(stream);
    }
}

/// A request head as read.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    authorization: Option<String>,
    has_body: bool,
}

enum Refused {
    /// The client left before a whole head: nothing to answer.
    Gone,
    With(Response),
}

/// Reads and parses the request head by `deadline`, within `limits.head_bytes`.
fn read_head(stream: &TcpStream, deadline: Instant, limits: HttpLimits) -> Result<Head, Refused> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refused::With(Response::error(
                408,
                "the request head did not arrive in time",
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| Refused::Gone)?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(0) => return Err(Refused::Gone),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Refused::Gone),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > limits.head_bytes {
            // Whole or not, the head is over the limit.
            let text = format!(
                "the request head is larger than {} bytes",
                limits.head_bytes
            );
            return Err(Refused::With(Response::error(431, &text)));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => return Ok(head_of(&req)),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                let text = "the request head has more than 64 headers";
                return Err(Refused::With(Response::error(431, text)));
            }
            Err(e) => {
                let text = format!("not an HTTP/1.x request: {e}");
                return Err(Refused::With(Response::error(400, &text)));
            }
        }
    }
}

fn head_of(req: &httparse::Request) -> Head {
    let header = |name: &str| {
        (req.headers.iter())
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let has_body = header("transfer-encoding").is_some()
        || header("content-length").is_some_and(|v| v.trim().parse::<u64>() != Ok(0));
    Head {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        authorization: header("authorization"),
        has_body,
    }
}

/// The request if it may be served: a GET or HEAD without a body, carrying the token.
fn check(head: &Head, token: &str) -> Result<Request, Response> {
    if head.method != "GET" && head.method != "HEAD" {
        return Err(Response::error(405, "only GET and HEAD are served here"));
    }
    if head.has_body {
        return Err(Response::error(413, "a GET here carries no body"));
    }
    let request = parse_target(&head.target)
        .ok_or_else(|| Response::error(400, "the request target is not a path"))?;
    if !token.is_empty() {
        // The scheme's name is case-insensitive (RFC 7235).
        let bearer = (head.authorization.as_deref())
            .and_then(|a| a.trim().split_once([' ', '\t']))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let given = (request.query.iter())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.as_str());
        let carried = |t: Option<&str>| t.is_some_and(|t| crate::same_secret(t, token));
        if !carried(bearer) && !carried(given) {
            return Err(Response::error(
                401,
                "missing or wrong cluster token: send `Authorization: Bearer TOKEN` or add ?token=TOKEN",
            ));
        }
    }
    Ok(request)
}

/// `/path?k=v&...` (or `http://host/path?...`, which HTTP/1.1 servers must take too) into its
/// path and decoded parameters; `None` if it is neither.
fn parse_target(target: &str) -> Option<Request> {
    let target = match target.strip_prefix("http://") {
        Some(rest) => &rest[rest.find('/')?..],
        None => target,
    };
    if !target.starts_with('/') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = (query.split('&'))
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Request {
        path: decode(path)?,
        query,
    })
}

/// Percent-decoding (and `+` as a space); `None` on a bad escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes the answer by one deadline for all of it: a client that reads a byte now and then
/// does not hold its place any longer.
fn answer(stream: &TcpStream, r: &Response, head_only: bool, within: Duration) -> io::Result<()> {
    let deadline = Instant::now() + within;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    match r.status {
        401 => head += "WWW-Authenticate: Bearer\r\n",
        405 => head += "Allow: GET, HEAD\r\n",
        _ => {}
    }
    head += "\r\n";
    let body: &[u8] = if head_only { &[] } else { &r.body };
    for mut part in [head.as_bytes(), body] {
        while !part.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            stream.set_write_timeout(Some(left))?;
            match (&*stream).write(part) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => part = &part[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Closes after an answer without resetting it away: the client may still be sending (an
/// oversized head), and closing with unread bytes would reset the connection before it reads
/// the answer. Reads and drops what comes for up to a second.
fn linger(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    while let Some(left) =
        Some(until.saturating_duration_since(Instant::now())).filter(|l| !l.is_zero())
    {
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A blocking GET for tools and tests: the status and body, within `timeout` in all.
pub fn get(addr: SocketAddr, target: &str, timeout: Duration) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response");
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let status = std::str::from_utf8(&all[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, all.split_off(end + 4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str) -> Head {
        Head {
            method: method.into(),
            target: target.into(),
            authorization: None,
            has_body: false,
        }
    }

    #[test]
    fn targets_decode_into_path_and_parameters() {
        let r = parse_target("/status.json?token=a%2Bb+c&x").unwrap();
        assert_eq!(r.path, "/status.json");
        assert_eq!(
            r.query,
            [
                ("token".into(), "a+b c".into()),
                ("x".into(), String::new())
            ]
        );
        assert_eq!(
            parse_target("http://host:1/m?a=b").unwrap().path,
            "/m",
            "absolute form"
        );
        assert_eq!(parse_target("*"), None);
        assert_eq!(parse_target("/%zz"), None);
        assert_eq!(parse_target("/%ff"), None, "not UTF-8");
        assert_eq!(parse_target("/%4"), None);
        assert_eq!(parse_target("/%+f"), None, "a sign is not a hex digit");
    }

    #[test]
    fn only_bodiless_gets_and_heads_with_the_token_pass() {
        assert!(check(&head("GET", "/"), "").is_ok());
        assert!(check(&head("HEAD", "/metrics"), "").is_ok());
        assert_eq!(check(&head("POST", "/"), "").unwrap_err().status, 405);
        let mut with_body = head("GET", "/");
        with_body.has_body = true;
        assert_eq!(check(&with_body, "").unwrap_err().status, 413);
        assert_eq!(check(&head("GET", "/"), "s3cret").unwrap_err().status, 401);
        assert_eq!(
            check(&head("GET", "/?token=nope"), "s3cret")
                .unwrap_err()
                .status,
            401
        );
        assert!(check(&head("GET", "/?token=s3cret"), "s3cret").is_ok());
        let mut bearer = head("GET", "/metrics");
        bearer.authorization = Some("Bearer s3cret".into());
        assert!(check(&bearer, "s3cret").is_ok());
        bearer.authorization = Some("bearer s3cret".into());
        assert!(
            check(&bearer, "s3cret").is_ok(),
            "the scheme is case-insensitive"
        );
        bearer.authorization = Some("Basic s3cret".into());
        assert_eq!(check(&bearer, "s3cret").unwrap_err().status, 401);
    }

    fn endpoint(limits: HttpLimits, token: &str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, limits, token.into(), |r| match r.path.as_str() {
            "/" => Response::ok("text/plain", "hello"),
            _ => Response::error(404, "no such page"),
        })
        .unwrap();
        addr
    }

    fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn serves_a_get_and_refuses_what_is_not_a_request() {
        let addr = endpoint(HttpLimits::default(), "");
        assert_eq!(
            get(addr, "/", Duration::from_secs(5)).unwrap(),
            (200, b"hello".to_vec())
        );
        assert_eq!(get(addr, "/nope", Duration::from_secs(5)).unwrap().0, 404);
        assert!(raw(addr, b"\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let head = raw(addr, b"HEAD / HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 ") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(raw(addr, b"DELETE / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
    }

    #[test]
    fn an_oversized_head_gets_431_and_a_slow_one_408() {
        let limits = HttpLimits {
            head: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let addr = endpoint(limits, "");
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(1 << 20, b'a');
        assert!(raw(addr, &big).starts_with("HTTP/1.1 431 "));
        // Half a head, then silence: the deadline answers, whatever the client does.
        assert!(raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n").starts_with("HTTP/1.1 408 "));
    }

    #[test]
    fn beyond_the_connection_limit_a_client_gets_503() {
        let limits = HttpLimits {
            connections: 1,
            head: Duration::from_secs(5),
            ..HttpLimits::default()
        };
        let addr = endpoint(limits, "");
        let held = TcpStream::connect(addr).unwrap();
        // The first connection holds the only place until its head arrives; the acceptor
        // counts it before it accepts the next one.
        let answer = raw(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        drop(held);
    }

    #[test]
    fn a_token_is_asked_for_and_found_in_either_place() {
        let addr = endpoint(HttpLimits::default(), "t0k");
        let no = raw(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert!(no.starts_with("HTTP/1.1 401 ") && no.contains("WWW-Authenticate: Bearer"));
        assert_eq!(
            get(addr, "/?token=t0k", Duration::from_secs(5)).unwrap().0,
            200
        );
        let yes = raw(addr, b"GET / HTTP/1.1\r\nAuthorization: Bearer t0k\r\n\r\n");
        assert!(yes.starts_with("HTTP/1.1 200 "), "{yes}");
    }
}
