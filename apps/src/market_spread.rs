//! Market Spread (Wallaroo's benchmark app): two sources, orders and NBBO market data, merged
//! and keyed by the 4-byte symbol. NBBO updates a symbol's quote and decides whether its trades
//! are rejected; an order for a rejected symbol outputs an order result. Plus the deterministic
//! generator behind `quokka-gen market-spread`.
//!
//! Records are big-endian and framed with a `u32` big-endian length:
//! - order (53 bytes): type u8 = 1, side u8, account u32, order id 6 bytes, symbol 4 bytes,
//!   qty f64, price f64, transact time 21 bytes;
//! - NBBO (42 bytes): type u8 = 2, symbol 4 bytes, transact time 21 bytes, bid f64, offer f64;
//! - order result (55 bytes): side u8, account u32, order id 6 bytes, symbol 4 bytes, qty f64,
//!   price f64, last bid f64, last offer f64, timestamp u64.

use quokka_engine::{App, DecodeError, Emit};

use crate::corpus::SplitMix64;

pub const ORDER_LEN: usize = 53;
pub const NBBO_LEN: usize = 42;
pub const RESULT_LEN: usize = 55;

#[derive(Debug, Clone, Copy, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Order {
    pub side: u8,
    pub account: u32,
    pub order_id: [u8; 6],
    pub symbol: [u8; 4],
    pub qty: f64,
    pub price: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Nbbo {
    pub symbol: [u8; 4],
    pub bid: f64,
    pub offer: f64,
}

/// What both sources decode to.
#[derive(Debug, Clone, Copy, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Market {
    Order(Order),
    Nbbo(Nbbo),
}

impl Market {
    fn symbol(&self) -> &[u8] {
        match self {
            Market::Order(o) => &o.symbol,
            Market::Nbbo(n) => &n.symbol,
        }
    }
}

/// A symbol's state: its last quote and whether its trades are rejected.
///
/// Without padding (`repr(C)` and the explicit `_pad`), so rkyv archives it by copying its
/// bytes and a quote received from another node is used in place (see `State`).
#[derive(Debug, Clone, Copy, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[repr(C)]
pub struct Quote {
    pub bid: f64,
    pub offer: f64,
    pub reject: bool,
    _pad: [u8; 7],
}

impl Quote {
    pub fn new(bid: f64, offer: f64) -> Self {
        Self {
            bid,
            offer,
            reject: rejects(bid, offer),
            _pad: [0; 7],
        }
    }
}

impl Default for Quote {
    /// No quote yet: trades are rejected.
    fn default() -> Self {
        Self {
            reject: true,
            ..Self::new(0.0, 0.0)
        }
    }
}

/// Wallaroo's rule: reject trades when the spread is 0.05 or more, absolute or relative to the mid.
pub fn rejects(bid: f64, offer: f64) -> bool {
    let spread = offer - bid;
    let mid = (bid + offer) / 2.0;
    spread >= 0.05 || spread / mid >= 0.05
}

/// An order that met a rejecting quote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderResult {
    pub order: Order,
    pub bid: f64,
    pub offer: f64,
}

fn f64_at(b: &[u8], at: usize) -> f64 {
    f64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn record_type(frame: &[u8], want: u8, len: usize, what: &str) -> Result<(), DecodeError> {
    match frame.first() {
        Some(&t) if t != want => Err(DecodeError::new(format!(
            "{what} source got a record of type {t}, expected {want}"
        ))),
        _ if frame.len() != len => Err(DecodeError::new(format!(
            "{what} record of {} bytes, expected {len}",
            frame.len()
        ))),
        _ => Ok(()),
    }
}

pub fn decode_order(b: &[u8]) -> Result<Market, DecodeError> {
    record_type(b, 1, ORDER_LEN, "order")?;
    Ok(Market::Order(Order {
        side: b[1],
        account: u32::from_be_bytes(b[2..6].try_into().expect("4 bytes")),
        order_id: b[6..12].try_into().expect("6 bytes"),
        symbol: b[12..16].try_into().expect("4 bytes"),
        qty: f64_at(b, 16),
        price: f64_at(b, 24),
    }))
}

pub fn decode_nbbo(b: &[u8]) -> Result<Market, DecodeError> {
    record_type(b, 2, NBBO_LEN, "NBBO")?;
    Ok(Market::Nbbo(Nbbo {
        symbol: b[1..5].try_into().expect("4 bytes"),
        bid: f64_at(b, 26),
        offer: f64_at(b, 34),
    }))
}

pub fn encode_order(o: &Order, out: &mut Vec<u8>) {
    out.extend_from_slice(&(ORDER_LEN as u32).to_be_bytes());
    out.extend_from_slice(&[1, o.side]);
    out.extend_from_slice(&o.account.to_be_bytes());
    out.extend_from_slice(&o.order_id);
    out.extend_from_slice(&o.symbol);
    out.extend_from_slice(&o.qty.to_be_bytes());
    out.extend_from_slice(&o.price.to_be_bytes());
    out.extend_from_slice(b"20261126-09:30:00.000");
}

pub fn encode_nbbo(n: &Nbbo, out: &mut Vec<u8>) {
    out.extend_from_slice(&(NBBO_LEN as u32).to_be_bytes());
    out.push(2);
    out.extend_from_slice(&n.symbol);
    out.extend_from_slice(b"20261126-09:30:00.000");
    out.extend_from_slice(&n.bid.to_be_bytes());
    out.extend_from_slice(&n.offer.to_be_bytes());
}

/// Appends a framed order result with `timestamp`.
pub fn encode_result(r: &OrderResult, timestamp: u64, out: &mut Vec<u8>) {
    let o = &r.order;
    out.extend_from_slice(&(RESULT_LEN as u32).to_be_bytes());
    out.push(o.side);
    out.extend_from_slice(&o.account.to_be_bytes());
    out.extend_from_slice(&o.order_id);
    out.extend_from_slice(&o.symbol);
    for x in [o.qty, o.price, r.bid, r.offer] {
        out.extend_from_slice(&x.to_be_bytes());
    }
    out.extend_from_slice(&timestamp.to_be_bytes());
}

/// Reads an order result's payload (without its length), ignoring the timestamp.
pub fn decode_result(b: &[u8]) -> Option<OrderResult> {
    if b.len() != RESULT_LEN {
        return None;
    }
    let order = Order {
        side: b[0],
        account: u32::from_be_bytes(b[1..5].try_into().ok()?),
        order_id: b[5..11].try_into().ok()?,
        symbol: b[11..15].try_into().ok()?,
        qty: f64_at(b, 15),
        price: f64_at(b, 23),
    };
    Some(OrderResult {
        order,
        bid: f64_at(b, 31),
        offer: f64_at(b, 39),
    })
}

fn check(quote: &mut Quote, msg: Market, out: &mut Emit<OrderResult>) {
    match msg {
        Market::Nbbo(n) => *quote = Quote::new(n.bid, n.offer),
        Market::Order(order) if quote.reject => out.emit(OrderResult {
            order,
            bid: quote.bid,
            offer: quote.offer,
        }),
        Market::Order(_) => {}
    }
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn app() -> App {
    App::source("orders", decode_order)
        .source("nbbo", decode_nbbo)
        .key_by(Market::symbol)
        .stateful(check)
        .sink("results", |r: &OrderResult, out: &mut Vec<u8>| {
            encode_result(r, now_unix_ns(), out)
        })
        .named("market_spread")
}

/// Reads a symbols file: one 4-byte symbol per line (space padded, as Wallaroo's files are).
pub fn read_symbols(text: &[u8]) -> Result<Vec<[u8; 4]>, String> {
    let mut out = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let padded: [u8; 4] = match line.len() {
            1..=4 => {
                let mut s = [b' '; 4];
                s[4 - line.len()..].copy_from_slice(line);
                s
            }
            n => {
                return Err(format!(
                    "line {}: a symbol has at most 4 bytes, this one {n}",
                    i + 1
                ))
            }
        };
        out.push(padded);
    }
    if out.is_empty() {
        return Err("no symbols".into());
    }
    Ok(out)
}

/// What `quokka-gen market-spread` makes.
#[derive(Debug, Clone, Copy)]
pub struct GenSpec {
    pub orders: usize,
    pub nbbo: usize,
    pub seed: u64,
    /// Share of NBBO updates with a spread wide enough to reject trades.
    pub wide: f64,
}

/// Deterministic framed orders and NBBO updates for `symbols`: prices near a per-symbol mid.
pub fn generate(symbols: &[[u8; 4]], spec: GenSpec) -> (Vec<u8>, Vec<u8>) {
    let mut rng = SplitMix64::new(spec.seed);
    let mids: Vec<f64> = symbols
        .iter()
        .map(|_| 5.0 + (rng.next_u64() % 50_000) as f64 / 100.0)
        .collect();
    let mut nbbo = Vec::with_capacity(spec.nbbo * (NBBO_LEN + 4));
    for i in 0..spec.nbbo {
        let s = i % symbols.len();
        let mid = mids[s] * (1.0 + (rng.next_f64() - 0.5) * 0.01);
        // A wide spread is 10% of the mid; a narrow one stays under both thresholds.
        let spread = if rng.next_f64() < spec.wide {
            mid * 0.10
        } else {
            0.01
        };
        encode_nbbo(
            &Nbbo {
                symbol: symbols[s],
                bid: mid - spread / 2.0,
                offer: mid + spread / 2.0,
            },
            &mut nbbo,
        );
    }
    let mut orders = Vec::with_capacity(spec.orders * (ORDER_LEN + 4));
    for i in 0..spec.orders {
        let s = (rng.next_u64() % symbols.len() as u64) as usize;
        let id = (i as u64).to_be_bytes();
        let order = Order {
            side: 1 + (rng.next_u64() % 2) as u8,
            account: (rng.next_u64() % 100_000) as u32,
            order_id: id[2..].try_into().expect("6 bytes"),
            symbol: symbols[s],
            qty: (1 + rng.next_u64() % 1000) as f64,
            price: mids[s] * (1.0 + (rng.next_f64() - 0.5) * 0.02),
        };
        encode_order(&order, &mut orders);
    }
    (orders, nbbo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(framed: &[u8]) -> &[u8] {
        &framed[4..]
    }

    #[test]
    fn orders_and_nbbo_round_trip_through_their_wire_layouts() {
        let o = Order {
            side: 2,
            account: 77,
            order_id: *b"abcdef",
            symbol: *b" IBM",
            qty: 10.0,
            price: 101.25,
        };
        let mut buf = Vec::new();
        encode_order(&o, &mut buf);
        assert_eq!(buf.len(), 4 + ORDER_LEN);
        assert_eq!(decode_order(payload(&buf)).unwrap(), Market::Order(o));
        let n = Nbbo {
            symbol: *b"GOOG",
            bid: 10.0,
            offer: 10.02,
        };
        buf.clear();
        encode_nbbo(&n, &mut buf);
        assert_eq!(buf.len(), 4 + NBBO_LEN);
        assert_eq!(decode_nbbo(payload(&buf)).unwrap(), Market::Nbbo(n));
        let r = OrderResult {
            order: o,
            bid: 1.0,
            offer: 2.0,
        };
        buf.clear();
        encode_result(&r, 99, &mut buf);
        assert_eq!(buf.len(), 4 + RESULT_LEN);
        assert_eq!(
            u64::from_be_bytes(buf[buf.len() - 8..].try_into().unwrap()),
            99
        );
        assert_eq!(decode_result(payload(&buf)), Some(r));
    }

    #[test]
    fn wrong_type_or_length_is_a_decode_error() {
        let mut nbbo = Vec::new();
        encode_nbbo(
            &Nbbo {
                symbol: *b"AAPL",
                bid: 1.0,
                offer: 1.01,
            },
            &mut nbbo,
        );
        let err = decode_order(payload(&nbbo)).unwrap_err().to_string();
        assert!(err.contains("type 2"), "{err}");
        assert!(decode_nbbo(&payload(&nbbo)[..41])
            .unwrap_err()
            .to_string()
            .contains("41 bytes"));
        assert!(decode_order(&[]).is_err());
        assert!(decode_nbbo(&[2]).is_err());
    }

    #[test]
    fn the_spread_rule() {
        assert!(!rejects(10.00, 10.04));
        assert!(rejects(10.00, 10.05), "absolute spread 0.05");
        assert!(rejects(0.50, 0.54), "relative spread over 5%");
        assert!(Quote::default().reject, "no quote yet rejects");
    }

    #[test]
    fn a_received_quote_is_used_in_place() {
        assert!(quokka_engine::store::used_in_place::<Quote>());
    }

    #[test]
    fn the_stateful_step() {
        let mut q = Quote::default();
        let order = Order {
            side: 1,
            account: 1,
            order_id: [0; 6],
            symbol: *b"  GE",
            qty: 1.0,
            price: 9.0,
        };
        let mut got = Vec::new();
        check(
            &mut q,
            Market::Order(order),
            &mut Emit::new(&mut |r| got.push(r)),
        );
        assert_eq!(got.len(), 1, "rejected before any quote");
        check(
            &mut q,
            Market::Nbbo(Nbbo {
                symbol: *b"  GE",
                bid: 9.0,
                offer: 9.01,
            }),
            &mut Emit::new(&mut |r| got.push(r)),
        );
        check(
            &mut q,
            Market::Order(order),
            &mut Emit::new(&mut |r| got.push(r)),
        );
        assert_eq!(got.len(), 1, "a narrow spread accepts");
        check(
            &mut q,
            Market::Nbbo(Nbbo {
                symbol: *b"  GE",
                bid: 9.0,
                offer: 9.9,
            }),
            &mut Emit::new(&mut |r| got.push(r)),
        );
        check(
            &mut q,
            Market::Order(order),
            &mut Emit::new(&mut |r| got.push(r)),
        );
        assert_eq!(
            got.last(),
            Some(&OrderResult {
                order,
                bid: 9.0,
                offer: 9.9
            })
        );
    }

    #[test]
    fn symbols_files_and_the_generator() {
        let syms = read_symbols(b"IBM\n GE\nAAPL\n\n").unwrap();
        assert_eq!(syms, vec![*b" IBM", *b"  GE", *b"AAPL"]);
        assert!(read_symbols(b"TOOLONG\n").is_err());
        assert!(read_symbols(b"\n").is_err());
        let spec = GenSpec {
            orders: 100,
            nbbo: 30,
            seed: 5,
            wide: 0.5,
        };
        let (o, n) = generate(&syms, spec);
        assert_eq!(o.len(), 100 * (ORDER_LEN + 4));
        assert_eq!(n.len(), 30 * (NBBO_LEN + 4));
        assert_eq!(
            generate(&syms, spec),
            (o.clone(), n.clone()),
            "deterministic"
        );
        let wide = n
            .chunks(NBBO_LEN + 4)
            .filter(|f| match decode_nbbo(&f[4..]).unwrap() {
                Market::Nbbo(q) => rejects(q.bid, q.offer),
                _ => false,
            });
        assert!((5..=25).contains(&wide.count()));
    }

    #[test]
    fn bundled_fixtures_decode() {
        let nbbo = include_bytes!("../data/350-symbols_initial-nbbo-fixish.msg");
        let frames: Vec<&[u8]> = nbbo.chunks(NBBO_LEN + 4).collect();
        assert_eq!(frames.len(), 350);
        assert!(frames.iter().all(|f| decode_nbbo(&f[4..]).is_ok()));
        let syms = read_symbols(include_bytes!("../data/r3k-legal-symbols.msg")).unwrap();
        assert!(syms.len() > 2900);
    }
}
