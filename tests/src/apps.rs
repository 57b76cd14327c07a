//! Alphabet and Market Spread end to end, against reference models computed here.

use std::collections::HashMap;

use quokka_apps::market_spread::{
    self, generate, read_symbols, GenSpec, Market, NBBO_LEN, ORDER_LEN,
};
use quokka_apps::{alphabet, market_spread::OrderResult};
use quokka_engine::Engine;
use quokka_io::client::{FrameSender, Records};

use crate::fixtures::{INITIAL_NBBO, SYMBOLS, VOTES};
use crate::harness::{wait_applied, Running, DEADLINE};

/// Sends already-framed bytes over one connection to `source` and closes it.
fn send_framed(run: &Running, source: usize, bytes: &[u8]) {
    let mut sender = FrameSender::connect(run.input(source), DEADLINE).expect("connect");
    sender.send_raw(bytes).expect("send");
    sender.finish().expect("close");
}

fn alphabet_on(cores: usize) {
    let run = Running::start(&alphabet::app(), cores, Records::Lines);
    send_framed(&run, 0, VOTES);
    // Reference: per letter, the running totals in file order.
    let mut expected: HashMap<u8, Vec<u64>> = HashMap::new();
    let mut totals: HashMap<u8, u64> = HashMap::new();
    for frame in VOTES.chunks(9) {
        let v = alphabet::decode(&frame[4..]).unwrap();
        let t = totals.entry(v.letter).or_default();
        *t += u64::from(v.votes);
        expected.entry(v.letter).or_default().push(*t);
    }
    run.sink.wait_for(10_000);
    let (summary, sink) = run.stop();
    let mut got: HashMap<u8, Vec<u64>> = HashMap::new();
    for line in sink.lines().iter().flatten() {
        let (letter, total) = line.split_once(" => ").expect("letter => total");
        got.entry(letter.as_bytes()[0])
            .or_default()
            .push(total.parse().unwrap());
    }
    assert_eq!(got, expected, "every letter's running totals, in order");
    assert_eq!(summary.outputs(), 10_000);
}

#[test]
fn alphabet_one_core() {
    alphabet_on(1);
}

#[test]
fn alphabet_two_cores() {
    alphabet_on(2);
}

/// The order results a market spread run must produce: every order whose symbol's last quote
/// (after all of `nbbo`) rejects trades, with that quote. Sorted, timestamps ignored.
fn reference_results(nbbo: &[&[u8]], orders: &[u8]) -> Vec<String> {
    let mut quotes: HashMap<[u8; 4], (f64, f64, bool)> = HashMap::new();
    for file in nbbo {
        for f in file.chunks(NBBO_LEN + 4) {
            let Market::Nbbo(n) = market_spread::decode_nbbo(&f[4..]).unwrap() else {
                unreachable!()
            };
            let spread = n.offer - n.bid;
            let reject = spread >= 0.05 || spread / ((n.bid + n.offer) / 2.0) >= 0.05;
            quotes.insert(n.symbol, (n.bid, n.offer, reject));
        }
    }
    let mut out: Vec<String> = orders
        .chunks(ORDER_LEN + 4)
        .filter_map(|f| {
            let Market::Order(o) = market_spread::decode_order(&f[4..]).unwrap() else {
                unreachable!()
            };
            let (bid, offer, reject) = quotes.get(&o.symbol).copied().unwrap_or((0.0, 0.0, true));
            reject.then(|| {
                format!(
                    "{:?}",
                    OrderResult {
                        order: o,
                        bid,
                        offer
                    }
                )
            })
        })
        .collect();
    out.sort();
    out
}

fn results(lines: Vec<Vec<Vec<u8>>>) -> Vec<String> {
    let mut out: Vec<String> = lines
        .iter()
        .flatten()
        .map(|r| {
            format!(
                "{:?}",
                market_spread::decode_result(r).expect("a 55-byte order result")
            )
        })
        .collect();
    out.sort();
    out
}

/// The fixture's initial NBBO, then generated NBBO for 2,900 symbols, then orders; `during`
/// runs while the orders are sent.
fn market_spread_case(cores: usize, during: impl FnOnce(&Engine) + Send) {
    let symbols = read_symbols(SYMBOLS).unwrap();
    let (orders, nbbo) = generate(
        &symbols,
        GenSpec {
            orders: 30_000,
            nbbo: 6_000,
            seed: 11,
            wide: 0.3,
        },
    );
    let run = Running::start(&market_spread::app(), cores, Records::Frames);
    let (orders_source, nbbo_source) = (0, 1);
    // Two connections may land on two cores: order between them only by waiting.
    send_framed(&run, nbbo_source, INITIAL_NBBO);
    wait_applied(&run.engine, 350, DEADLINE).unwrap();
    send_framed(&run, nbbo_source, &nbbo);
    wait_applied(&run.engine, 350 + 6_000, DEADLINE).unwrap();

    let expected = reference_results(&[INITIAL_NBBO, &nbbo], &orders);
    assert!(
        expected.len() > 3_000 && expected.len() < 27_000,
        "{} results: the data exercises both rules",
        expected.len()
    );
    std::thread::scope(|s| {
        s.spawn(|| send_framed(&run, orders_source, &orders));
        during(&run.engine);
    });
    run.sink.wait_for(expected.len() as u64);
    let (summary, sink) = run.stop();
    assert_eq!(summary.misrouted(), 0);
    assert_eq!(results(sink.records()), expected);
}

#[test]
fn market_spread_one_core() {
    market_spread_case(1, |_| {});
}

#[test]
fn market_spread_two_cores() {
    market_spread_case(2, |_| {});
}

/// Quotes move between cores while orders are checked against them.
#[test]
fn market_spread_across_grow_and_shrink() {
    market_spread_case(1, |engine| {
        engine.grow(2).unwrap();
        engine.shrink(1).unwrap();
        engine.grow(1).unwrap();
        engine.shrink(2).unwrap();
    });
}

/// A record of the wrong type on a source closes that connection with an error; others go on.
#[test]
fn market_spread_rejects_a_wrong_record_type() {
    let run = Running::start(&market_spread::app(), 2, Records::Frames);
    send_framed(&run, 0, INITIAL_NBBO); // NBBO records on the orders source
    let symbols = read_symbols(SYMBOLS).unwrap();
    let (orders, _) = generate(
        &symbols[..10],
        GenSpec {
            orders: 100,
            nbbo: 0,
            seed: 3,
            wide: 0.0,
        },
    );
    send_framed(&run, 0, &orders);
    // No quotes at all: every order is rejected and comes out.
    run.sink.wait_for(100);
    let (summary, sink) = run.stop();
    assert_eq!(summary.connection_errors(), 1);
    assert_eq!(results(sink.records()), reference_results(&[], &orders));
}
