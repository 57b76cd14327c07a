//! Issue 20: what `quokka run` serves over HTTP. `/metrics` read back by a parser of the
//! Prometheus text format agrees with the run's summary; the dashboard, opened by a real headless
//! Chromium, shows rates and a core that a `grow-cores` added; the HTTP port refuses bad input
//! (garbage, a 1 MB head, slow clients, a wrong token, more clients than it serves) while the
//! engine goes on undisturbed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quokka_io::client::Records;
use quokka_io::http::get;
use quokka_tests::fixtures::BILL_OF_RIGHTS;
use quokka_tests::harness::{send_frames, Sink, DEADLINE};
use quokka_tests::reference::reference_words;

use crate::{ctl, quokka, signal, Service};

const TOKEN: &str = "s3cret w/ spaces";

/// `quokka run word_count` on `cores` cores writing to `out`, every port chosen by itself.
fn word_count(out: SocketAddr, cores: &str, extra: &[&str]) -> Service {
    Service::start(
        "word_count",
        Command::new(quokka())
            .args(["run", "word_count", "--cores", cores])
            .args(["--out", &out.to_string()])
            .args(["--in", "127.0.0.1:0", "--control", "127.0.0.1:0"])
            .args(extra),
    )
}

fn http_of(engine: &Service) -> SocketAddr {
    engine.addrs.http.expect("an HTTP endpoint")
}

fn bill_of_rights() -> (Vec<&'static [u8]>, u64) {
    let frames: Vec<&[u8]> = BILL_OF_RIGHTS.lines().map(str::as_bytes).collect();
    let words = BILL_OF_RIGHTS
        .lines()
        .map(|l| reference_words(l).len())
        .sum::<usize>();
    (frames, words as u64)
}

/// `GET target` that must answer 200; its body.
fn get_ok(http: SocketAddr, target: &str) -> String {
    let (status, body) = get(http, target, Duration::from_secs(10)).expect("GET");
    let body = String::from_utf8(body).expect("UTF-8 body");
    assert_eq!(status, 200, "GET {target}: {body}");
    body
}

/// `/metrics` parsed: every line is a comment or a sample the parser reads (none ignored), and
/// every counter's samples end in `_total` (the parser reads the classic format, which types a
/// sample by its own name, so counters come back untyped: their types are checked here).
fn scrape(http: SocketAddr) -> prometheus_parse::Scrape {
    let text = get_ok(http, "/metrics");
    for counter in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
    {
        let samples = (text.lines())
            .filter(|l| l.starts_with(counter) && l[counter.len()..].starts_with(['{', ' ', '_']))
            .collect::<Vec<_>>();
        assert!(
            samples
                .iter()
                .all(|l| l[counter.len()..].starts_with("_total")),
            "{counter}: {samples:?}"
        );
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Sample { .. }
            ),
            "not a sample: {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The sum of `metric` over its samples (counters and gauges).
fn total(scrape: &prometheus_parse::Scrape, metric: &str) -> f64 {
    let samples: Vec<f64> = (scrape.samples.iter())
        .filter(|s| s.metric == metric)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{metric} is not a number: {other:?}"),
        })
        .collect();
    assert!(!samples.is_empty(), "no {metric}");
    samples.iter().sum()
}

/// The number before `suffix` in `text` (`"5 outputs out"`, " outputs out" -> 5).
fn number_before(text: &str, suffix: &str) -> u64 {
    let head = &text[..text
        .find(suffix)
        .unwrap_or_else(|| panic!("no {suffix:?} in {text}"))];
    let digits: String = head
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

/// `/metrics`, scraped while the engine runs, parses with a Prometheus parser, and its counters
/// agree with the sink's count and with the summary the run prints at its end.
#[test]
fn metrics_read_by_a_prometheus_parser_agree_with_the_summary() {
    let sink = Sink::start(Records::Lines);
    let mut engine = word_count(sink.addr(), "2", &[]);
    let (http, input, control) = (
        http_of(&engine),
        engine.addrs.input(),
        engine.addrs.control(),
    );
    let (frames, words) = bill_of_rights();
    send_frames(input, &frames);
    sink.wait_for(words);
    // Cores publish once a second: wait for the copy that has every output.
    let deadline = Instant::now() + DEADLINE;
    let metrics = loop {
        let m = scrape(http);
        if total(&m, "quokka_outputs_total") as u64 == words {
            break m;
        }
        assert!(Instant::now() < deadline, "outputs never reached {words}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        total(&metrics, "quokka_source_frames_total") as u64,
        frames.len() as u64
    );
    let bytes: usize = frames.iter().map(|f| f.len() + 4).sum();
    assert_eq!(
        total(&metrics, "quokka_source_bytes_total") as u64,
        bytes as u64
    );
    assert_eq!(
        total(&metrics, "quokka_slots") as u64,
        4096,
        "every slot owned once"
    );
    assert_eq!(total(&metrics, "quokka_sink_up"), 2.0);
    assert_eq!(total(&metrics, "quokka_cluster_nodes"), 1.0);
    let latency: Vec<_> = (metrics.samples.iter())
        .filter(|s| s.metric == "quokka_latency_seconds")
        .collect();
    assert_eq!(latency.len(), 2, "a histogram per core");
    let mut counted = 0.0;
    for h in latency {
        let prometheus_parse::Value::Histogram(buckets) = &h.value else {
            panic!("not a histogram: {h:?}")
        };
        assert!(
            buckets.windows(2).all(|w| w[0].count <= w[1].count),
            "cumulative"
        );
        let inf = buckets.last().unwrap();
        assert!(inf.less_than.is_infinite());
        counted += inf.count;
    }
    assert_eq!(counted as u64, words, "every output's latency, once");
    assert_eq!(
        total(&metrics, "quokka_latency_seconds_count") as u64,
        words
    );

    // /status.json is what `ctl status --json` prints (as of the last second: wait for it).
    let from_http = loop {
        let v: serde_json::Value = serde_json::from_str(&get_ok(http, "/status.json")).unwrap();
        let outputs: u64 = (v["cores"].as_array().unwrap().iter())
            .map(|c| c["outputs"].as_u64().unwrap())
            .sum();
        if outputs == words {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "/status.json never showed {words} outputs"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, out, _) = ctl(control, &["status", "--json"]);
    let from_ctl: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&from_http), keys(&from_ctl));
    assert_eq!(
        from_http["cores"][1]["outputs"],
        from_ctl["cores"][1]["outputs"]
    );
    assert_eq!(from_http["nodes"][0]["http"], http.to_string());

    signal(&engine.child, "-TERM");
    engine.wait_exit_ok();
    let summary = engine.rest_of_stdout();
    assert_eq!(
        number_before(&summary, " frames in"),
        frames.len() as u64,
        "{summary}"
    );
    assert_eq!(number_before(&summary, " outputs out"), words, "{summary}");
}

/// The Chromium binary (`.ci/run` installs Debian's `chromium` when it is missing).
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
            }
        }
    }
    panic!("no Chromium: install Debian's `chromium` package (.ci/run does)");
}

/// Runs headless Chromium on `url` with `mode` (`--dump-dom`, `--screenshot=PATH`) after
/// letting the page's scripts run for 3 s of its virtual time; its stdout.
fn chromium_on(url: &str, mode: &str, profile: &Path) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([
            "--window-size=1300,1100",
            "--virtual-time-budget=3000",
            mode,
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success(), "chromium {mode} failed");
    out
}

/// The text of the element with `id` in `dom` (its first text, up to the next tag).
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &dom[at..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    &text[..text.find('<').unwrap()]
}

/// `data-value` of the element with `id`.
fn data_value(dom: &str, id: &str) -> f64 {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap();
    let tag = &dom[at..at + dom[at..].find('>').unwrap()];
    let v = &tag[tag.find("data-value=\"").unwrap() + 12..];
    v[..v.find('"').unwrap()].parse().unwrap()
}

/// A real headless Chromium opens the dashboard of a running engine (with a cluster token in
/// the URL, which the page must pass on to what it polls), sees non-zero rates, then the
/// second core `grow-cores 1` adds; a screenshot is left in target/tmp for a person to look at.
/// The test reads the page's DOM (the total rate the charts are drawn from, the slot map's
/// rows, the error bar), not the canvas pixels.
#[test]
fn the_dashboard_in_a_headless_browser_shows_rates_and_a_grown_core() {
    let sink = Sink::start(Records::Lines);
    let mut engine = word_count(sink.addr(), "1", &["--cluster-token", TOKEN]);
    let (http, input, control) = (
        http_of(&engine),
        engine.addrs.input(),
        engine.addrs.control(),
    );
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let sending = sending.clone();
        std::thread::spawn(move || {
            let (frames, _) = bill_of_rights();
            while sending.load(Ordering::Relaxed) {
                send_frames(input, &frames);
                // A steady trickle, leaving the CPUs to the browser.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let profile = tempdir("chromium-profile");
    let url = format!("http://{http}/?token=s3cret%20w%2F%20spaces");
    let dom_until = |what: &str, seen: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let dom = chromium_on(&url, "--dump-dom", &profile);
            assert_eq!(element(&dom, "error"), "", "the page shows an error");
            if seen(&dom) {
                return dom;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}:\n{dom}"
            );
        }
    };
    dom_until("a non-zero rate", &|dom| {
        data_value(dom, "total-rate") > 0.0
    });
    let (_, out, err) = ctl(control, &["--cluster-token", TOKEN, "grow-cores", "1"]);
    assert!(out.starts_with("grow-cores 1: 1 -> 2 cores"), "{out}{err}");
    let dom = dom_until("core 1", &|dom| dom.contains("<tr data-core=\"1\""));
    assert!(dom.contains("<tr data-core=\"0\""));
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    chromium_on(&url, &format!("--screenshot={}", shot.display()), &profile);
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real picture"
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    sending.store(false, Ordering::Relaxed);
    sender.join().unwrap();
    signal(&engine.child, "-TERM");
    engine.wait_exit_ok();
}

fn tempdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `bytes` on a fresh connection to `http` and reads the answer's status line.
fn answer_to(http: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let bytes = bytes.to_vec();
        // The endpoint may answer (and stop reading) before a large request is all written.
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        })
    };
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    writer.join().unwrap();
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Garbage, a 1 MB head, a request without or with a wrong token, a write method, slow clients
/// and more clients than the port serves: each is refused with its status, and meanwhile the
/// engine counts every word, answers `ctl`, and serves a good request.
#[test]
fn the_http_port_refuses_bad_input_and_disturbs_nothing() {
    let sink = Sink::start(Records::Lines);
    let mut engine = word_count(sink.addr(), "2", &["--cluster-token", TOKEN]);
    let (http, input, control) = (
        http_of(&engine),
        engine.addrs.input(),
        engine.addrs.control(),
    );
    let (frames, words) = bill_of_rights();
    // Slow clients first: each sends half a head and holds on; 64 are served at once, the
    // rest are turned away at once with 503.
    let slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(http).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    send_frames(input, &frames);
    let mut refused = 0;
    for mut s in slow {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        match answer.lines().next().unwrap_or("") {
            "HTTP/1.1 503 Service Unavailable" => refused += 1,
            "HTTP/1.1 408 Request Timeout" => {}
            other => panic!("a slow client got {other:?}"),
        }
    }
    assert_eq!(refused, 100 - 64, "beyond 64 at once, refused");
    assert_eq!(
        answer_to(http, b"\x16\x03\x01\x02\x00garbage\r\n\r\n"),
        "HTTP/1.1 400 Bad Request"
    );
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(1 << 20, b'a');
    assert_eq!(
        answer_to(http, &big),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        answer_to(http, b"GET /metrics HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 401 Unauthorized"
    );
    let wrong = b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n";
    assert_eq!(answer_to(http, wrong), "HTTP/1.1 401 Unauthorized");
    assert_eq!(
        get(http, "/status.json?token=s3cret", Duration::from_secs(10))
            .unwrap()
            .0,
        401
    );
    let post = b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
    assert_eq!(answer_to(http, post), "HTTP/1.1 405 Method Not Allowed");
    let right = format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    assert_eq!(answer_to(http, right.as_bytes()), "HTTP/1.1 200 OK");
    // Undisturbed: every word counted, the control port answers.
    send_frames(input, &frames);
    sink.wait_for(2 * words);
    let (code, status, err) = ctl(control, &["--cluster-token", TOKEN, "status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(status.contains("2 cores"), "{status}");
    signal(&engine.child, "-TERM");
    engine.wait_exit_ok();
    let summary = engine.rest_of_stdout();
    assert_eq!(
        number_before(&summary, " outputs out"),
        2 * words,
        "{summary}"
    );
    assert_eq!(sink.lines().concat().len() as u64, 2 * words);
}
