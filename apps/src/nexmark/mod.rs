//! NEXMark q0-q8 (the Flink NEXMark suite's SQL, as keyed stages), over the one source
//! `events` ([`event`]'s frames, as `quokka-gen nexmark` writes them), event time from
//! `dateTime`. Each writes CSV lines without a header to a sink named after it (`q0` ...
//! `q8`), the columns of its SELECT in order; the README lists them and every deviation.

pub mod event;
pub mod generate;

use quokka_engine::app::{Outputs, Stream};
use quokka_engine::{App, Context, Emit, Time, Windowed, Windows};

use crate::AppInfo;

pub use event::{decode, Auction, Bid, Event, Person, Row};

/// How far behind the latest `dateTime` on a connection an event may come and still count.
/// The generator's events are in order; this leaves room for inputs that are not quite.
pub const LATENESS: u64 = 1_000;
/// q5's window (10 s, every 2 s), q7's and q8's (10 s tumbling), in milliseconds.
pub const Q5_SIZE: u64 = 10_000;
pub const Q5_SLIDE: u64 = 2_000;
pub const TUMBLE: u64 = 10_000;

/// A message keyed by a NEXMark id (its little-endian bytes).
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ById<T> {
    key: [u8; 8],
    value: T,
}

fn by<T>(id: u64, value: T) -> ById<T> {
    ById {
        key: id.to_le_bytes(),
        value,
    }
}

fn key<T>(m: &ById<T>) -> &[u8] {
    &m.key
}

fn id_of(key: &[u8]) -> u64 {
    key.try_into().map_or(0, u64::from_le_bytes)
}

fn events() -> Stream<Event, Event> {
    App::source("events", decode).event_time(Event::date_time, LATENESS)
}

fn bids(e: Event, out: &mut Emit<ById<Bid>>) {
    if let Event::Bid(b) = e {
        out.emit(by(b.auction, b))
    }
}

/// q0-q2 have no state; the engine's pipelines end at a keyed stage, so theirs only passes
/// each bid on (keyed by auction, spreading the work over the cores).
fn pass<T>(_: &mut (), m: ById<T>, out: &mut Emit<T>) {
    out.emit(m.value)
}

/// q0, pass-through: `SELECT auction, bidder, price, dateTime, extra FROM bid`.
pub fn q0() -> App {
    events()
        .flat_map(bids)
        .key_by(key)
        .stateful(pass)
        .sink("q0", |b: &Bid, out: &mut Vec<u8>| {
            Row::new(out)
                .num(b.auction)
                .num(b.bidder)
                .num(b.price)
                .num(b.date_time)
                .text(&b.extra)
                .end()
        })
        .named("nexmark_q0")
}

/// `0.908 * price`, as the exact decimal the SQL gives (three places).
pub fn dollars_to_euros(price: u64, out: &mut Vec<u8>) {
    let milli = price as u128 * 908;
    let fraction = (milli % 1000) as u16;
    out.extend_from_slice(itoa::Buffer::new().format(milli / 1000).as_bytes());
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// q1, currency conversion: `SELECT auction, bidder, 0.908 * price, dateTime, extra FROM bid`.
pub fn q1() -> App {
    events()
        .flat_map(bids)
        .key_by(key)
        .stateful(pass)
        .sink("q1", |b: &Bid, out: &mut Vec<u8>| {
            Row::new(out)
                .num(b.auction)
                .num(b.bidder)
                .raw(|out| dollars_to_euros(b.price, out))
                .num(b.date_time)
                .text(&b.extra)
                .end()
        })
        .named("nexmark_q1")
}

/// q2, selection: `SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0`.
pub fn q2() -> App {
    events()
        .flat_map(|e, out: &mut Emit<ById<(u64, u64)>>| {
            if let Event::Bid(b) = e {
                if b.auction % 123 == 0 {
                    out.emit(by(b.auction, (b.auction, b.price)))
                }
            }
        })
        .key_by(key)
        .stateful(pass)
        .sink("q2", |&(auction, price): &(u64, u64), out: &mut Vec<u8>| {
            Row::new(out).num(auction).num(price).end()
        })
        .named("nexmark_q2")
}

/// q3's side of a seller: a person of OR, ID or CA, or an auction of category 10.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Q3In {
    Person {
        name: String,
        city: String,
        state: String,
    },
    Auction(u64),
}

/// One seller's persons and auctions so far (an inner join keeps both sides).
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Q3Seller {
    persons: Vec<(String, String, String)>,
    auctions: Vec<u64>,
}

/// One q3 row: name, city, state, auction id.
pub type Q3Row = (String, String, String, u64);

fn q3_join(seller: &mut Q3Seller, m: ById<Q3In>, out: &mut Emit<Q3Row>) {
    match m.value {
        Q3In::Person { name, city, state } => {
            for &a in &seller.auctions {
                out.emit((name.clone(), city.clone(), state.clone(), a));
            }
            seller.persons.push((name, city, state));
        }
        Q3In::Auction(a) => {
            for (name, city, state) in &seller.persons {
                out.emit((name.clone(), city.clone(), state.clone(), a));
            }
            seller.auctions.push(a);
        }
    }
}

/// q3, local item suggestion: `SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person
/// P ON A.seller = P.id WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')`.
pub fn q3() -> App {
    events()
        .flat_map(|e, out: &mut Emit<ById<Q3In>>| match e {
            Event::Person(p) if matches!(p.state.as_str(), "OR" | "ID" | "CA") => {
                let (name, city, state) = (p.name, p.city, p.state);
                out.emit(by(p.id, Q3In::Person { name, city, state }))
            }
            Event::Auction(a) if a.category == 10 => out.emit(by(a.seller, Q3In::Auction(a.id))),
            _ => {}
        })
        .key_by(key)
        .stateful(q3_join)
        .sink(
            "q3",
            |(name, city, state, id): &Q3Row, out: &mut Vec<u8>| {
                Row::new(out)
                    .text(name)
                    .text(city)
                    .text(state)
                    .num(*id)
                    .end()
            },
        )
        .named("nexmark_q3")
}

/// What q4 and q6 need of an auction and its bids.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum AuctionOrBid {
    Auction {
        seller: u64,
        category: u64,
        date_time: u64,
        expires: u64,
    },
    Bid {
        price: u64,
        date_time: u64,
    },
}

fn auctions_and_bids(e: Event, out: &mut Emit<ById<AuctionOrBid>>) {
    match e {
        Event::Auction(a) => out.emit(by(
            a.id,
            AuctionOrBid::Auction {
                seller: a.seller,
                category: a.category,
                date_time: a.date_time,
                expires: a.expires,
            },
        )),
        Event::Bid(b) => out.emit(by(
            b.auction,
            AuctionOrBid::Bid {
                price: b.price,
                date_time: b.date_time,
            },
        )),
        Event::Person(_) => {}
    }
}

/// An auction, its highest bid between its `dateTime` and `expires` so far, and bids that came
/// before it did.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Bidding {
    /// seller, category, dateTime, expires.
    auction: Option<(u64, u64, u64, u64)>,
    highest: Option<u64>,
    /// (dateTime, price) of bids before their auction.
    early: Vec<(u64, u64)>,
    closed: bool,
}

/// An auction closed with at least one bid: `MAX(B.price) AS final` with its group.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Closed {
    pub auction: u64,
    pub seller: u64,
    pub category: u64,
    pub price: u64,
    pub expires: u64,
}

fn bidding(b: &mut Bidding, m: ById<AuctionOrBid>, ctx: &mut Context<Closed>) {
    if b.closed {
        return;
    }
    match m.value {
        AuctionOrBid::Auction {
            seller,
            category,
            date_time,
            expires,
        } => {
            if b.auction.is_some() {
                return; // the same id again: the first one counts
            }
            b.auction = Some((seller, category, date_time, expires));
            for (t, price) in std::mem::take(&mut b.early) {
                if (date_time..=expires).contains(&t) {
                    b.highest = b.highest.max(Some(price));
                }
            }
            // BETWEEN is inclusive: a bid at `expires` counts, so close just after it.
            ctx.timer_at(Time::Event(expires.saturating_add(1)));
        }
        AuctionOrBid::Bid { price, date_time } => match b.auction {
            Some((_, _, from, to)) if (from..=to).contains(&date_time) => {
                b.highest = b.highest.max(Some(price))
            }
            Some(_) => {}
            None => b.early.push((date_time, price)),
        },
    }
}

fn close_auction(b: &mut Bidding, _: Time, ctx: &mut Context<Closed>) {
    if let (Some((seller, category, _, expires)), Some(price)) = (b.auction, b.highest) {
        let auction = id_of(ctx.key());
        ctx.emit(Closed {
            auction,
            seller,
            category,
            price,
            expires,
        });
    }
    *b = Bidding {
        closed: true,
        ..Bidding::default()
    };
}

/// Closed auctions waiting for the watermark, so that each group takes them in event-time
/// order (then by auction id) however they raced from the cores that closed them.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct InOrder<S> {
    /// (event time, auction, price).
    waiting: Vec<(u64, u64, u64)>,
    state: S,
}

impl<S> InOrder<S> {
    fn add<R>(&mut self, c: &Closed, ctx: &mut Context<R>) {
        // A closed auction carries its closing time (just after `expires`).
        let at = ctx.event_time().unwrap_or(c.expires.saturating_add(1));
        self.waiting.push((at, c.auction, c.price));
        // Every closed auction at `at` has come once the watermark passes it.
        ctx.timer_at(Time::Event(at.saturating_add(1)));
    }

    /// The prices of the closed auctions before `at`, in order.
    fn take_before(&mut self, at: Time) -> Vec<u64> {
        let Time::Event(at) = at else {
            return Vec::new();
        };
        self.waiting.sort_unstable();
        let n = self.waiting.partition_point(|w| w.0 < at);
        self.waiting.drain(..n).map(|w| w.2).collect()
    }
}

/// Running `AVG` of a BIGINT column, as Flink's: a BIGINT, the quotient truncated.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Average {
    sum: u128,
    count: u64,
}

fn closed_auctions() -> Outputs<ById<AuctionOrBid>, Bidding, Closed, Closed> {
    events()
        .flat_map(auctions_and_bids)
        .key_by(key)
        .process(bidding, close_auction)
}

/// q4, average price per category: `SELECT Q.category, AVG(Q.final) FROM (SELECT MAX(B.price)
/// AS final, A.category FROM auction A, bid B WHERE A.id = B.auction AND B.dateTime BETWEEN
/// A.dateTime AND A.expires GROUP BY A.id, A.category) Q GROUP BY Q.category`.
pub fn q4() -> App {
    closed_auctions()
        .map(|c: Closed| by(c.category, c))
        .key_by(key)
        .process(
            |s: &mut InOrder<Average>, m: ById<Closed>, ctx: &mut Context<(u64, u64)>| {
                s.add(&m.value, ctx)
            },
            |s, at, ctx| {
                let category = id_of(ctx.key());
                for price in s.take_before(at) {
                    s.state.sum += price as u128;
                    s.state.count += 1;
                    let avg = s.state.sum / s.state.count as u128;
                    ctx.emit((category, avg as u64));
                }
            },
        )
        .sink("q4", |&(category, avg): &(u64, u64), out: &mut Vec<u8>| {
            Row::new(out).num(category).num(avg).end()
        })
        .named("nexmark_q4")
}

/// q6's window: the current row and the 10 before it.
pub const Q6_ROWS: usize = 11;

/// q6, average selling price by seller: `SELECT Q.seller, AVG(Q.final) OVER (PARTITION BY
/// Q.seller ORDER BY Q.dateTime ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) FROM (.. q4's ..)`.
pub fn q6() -> App {
    closed_auctions()
        .map(|c: Closed| by(c.seller, c))
        .key_by(key)
        .process(
            |s: &mut InOrder<Vec<u64>>, m: ById<Closed>, ctx: &mut Context<(u64, u64)>| {
                s.add(&m.value, ctx)
            },
            |s, at, ctx| {
                let seller = id_of(ctx.key());
                for price in s.take_before(at) {
                    if s.state.len() == Q6_ROWS {
                        s.state.remove(0);
                    }
                    s.state.push(price);
                    let sum: u128 = s.state.iter().map(|&p| p as u128).sum();
                    ctx.emit((seller, (sum / s.state.len() as u128) as u64));
                }
            },
        )
        .sink("q6", |&(seller, avg): &(u64, u64), out: &mut Vec<u8>| {
            Row::new(out).num(seller).num(avg).end()
        })
        .named("nexmark_q6")
}

/// The auctions with the most bids in one window so far.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hottest {
    count: u64,
    auctions: Vec<u64>,
}

/// q5, hot items: per sliding window (10 s, every 2 s), the auctions with the most bids:
/// `SELECT AuctionBids.auction, AuctionBids.num FROM (.. count(*) per auction and HOP window
/// ..) AuctionBids JOIN (.. max(num) per window ..) MaxBids ON .. AND AuctionBids.num >=
/// MaxBids.maxn`.
pub fn q5() -> App {
    events()
        .flat_map(bids)
        .key_by(key)
        .window(
            Windows::sliding(Q5_SIZE, Q5_SLIDE),
            |n: &mut u64, _| *n += 1,
            |n, m| *n += m,
        )
        .map(|w: Windowed<u64>| by(w.end, (id_of(&w.key), w.value)))
        .key_by(key)
        .process(
            |h: &mut Hottest, m: ById<(u64, u64)>, ctx: &mut Context<(u64, u64)>| {
                let (auction, count) = m.value;
                if count > h.count {
                    h.count = count;
                    h.auctions.clear();
                }
                if count == h.count {
                    h.auctions.push(auction);
                }
                // A window's counts carry its end as their time: all are in once it passes.
                if let Some(at) = ctx.event_time() {
                    ctx.timer_at(Time::Event(at.saturating_add(1)));
                }
            },
            |h, _, ctx| {
                let mut hottest = std::mem::take(h);
                hottest.auctions.sort_unstable();
                for a in hottest.auctions {
                    ctx.emit((a, hottest.count));
                }
            },
        )
        .sink("q5", |&(auction, num): &(u64, u64), out: &mut Vec<u8>| {
            Row::new(out).num(auction).num(num).end()
        })
        .named("nexmark_q5")
}

/// What q7 outputs of a bid.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Q7Bid {
    pub auction: u64,
    pub price: u64,
    pub bidder: u64,
    pub date_time: u64,
    pub extra: String,
}

/// One window's highest bids: those in it (`dateTime` in `[end - 10 s, end)`) with the highest
/// price, and those exactly at `end` (the SQL's `BETWEEN` takes them too) that may match it.
#[derive(Debug, Clone, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Highest {
    pub end: u64,
    pub price: Option<u64>,
    pub inside: Vec<Q7Bid>,
    pub at_end: Vec<Q7Bid>,
}

impl Highest {
    fn offer(&mut self, bid: Q7Bid) {
        if self.price < Some(bid.price) {
            self.price = Some(bid.price);
            self.inside.clear();
        }
        if self.price == Some(bid.price) {
            self.inside.push(bid);
        }
    }

    fn merge(&mut self, other: Highest) {
        for b in other.inside {
            self.offer(b);
        }
        self.at_end.extend(other.at_end);
        self.end = other.end;
    }

    /// The window's result: its bids at the highest price.
    fn winners(self) -> Vec<Q7Bid> {
        let Some(price) = self.price else {
            return Vec::new();
        };
        let mut all: Vec<Q7Bid> = (self.inside.into_iter())
            .chain(self.at_end.into_iter().filter(|b| b.price == price))
            .collect();
        all.sort_unstable_by_key(|b| (b.date_time, b.auction, b.bidder));
        all
    }
}

/// An entity's open q7 windows, by end.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Q7Open(Vec<Highest>);

impl Q7Open {
    fn window(&mut self, end: u64, ctx: &mut Context<Highest>) -> &mut Highest {
        let i = match self.0.iter().position(|h| h.end == end) {
            Some(i) => i,
            None => {
                self.0.push(Highest {
                    end,
                    ..Highest::default()
                });
                // Bids at `end` count too: close just after it.
                ctx.timer_at(Time::Event(end.saturating_add(1)));
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }
}

fn q7_offer(open: &mut Q7Open, m: ById<Q7Bid>, ctx: &mut Context<Highest>) {
    let bid = m.value;
    let t = bid.date_time;
    let end = (t - t % TUMBLE).saturating_add(TUMBLE);
    if t.is_multiple_of(TUMBLE) && t > 0 {
        open.window(t, ctx).at_end.push(bid.clone());
    }
    open.window(end, ctx).offer(bid);
}

fn q7_close(open: &mut Q7Open, at: Time, ctx: &mut Context<Highest>) {
    let Time::Event(at) = at else { return };
    let (done, open_still): (Vec<Highest>, Vec<Highest>) = std::mem::take(&mut open.0)
        .into_iter()
        .partition(|h| h.end < at);
    open.0 = open_still;
    for mut h in done {
        // What cannot match this entity's own highest price cannot match the window's.
        if let Some(p) = h.price {
            h.at_end.retain(|b| b.price >= p);
        }
        ctx.emit(h);
    }
}

/// q7, highest bid per 10 s tumbling window: `SELECT B.auction, B.price, B.bidder, B.dateTime,
/// B.extra FROM bid B JOIN (SELECT MAX(price) AS maxprice, window_end AS dateTime FROM
/// TUMBLE(bid, 10 s) GROUP BY window_start, window_end) B1 ON B.price = B1.maxprice WHERE
/// B.dateTime BETWEEN B1.dateTime - INTERVAL '10' SECOND AND B1.dateTime`. Each auction's
/// highest bids per window first (in parallel), then the window's.
pub fn q7() -> App {
    events()
        .flat_map(|e, out: &mut Emit<ById<Q7Bid>>| {
            if let Event::Bid(b) = e {
                let bid = Q7Bid {
                    auction: b.auction,
                    price: b.price,
                    bidder: b.bidder,
                    date_time: b.date_time,
                    extra: b.extra,
                };
                out.emit(by(b.auction, bid))
            }
        })
        .key_by(key)
        .process(q7_offer, q7_close)
        .map(|h: Highest| by(h.end, h))
        .key_by(key)
        .process(
            |all: &mut Highest, m: ById<Highest>, ctx: &mut Context<Q7Bid>| {
                all.merge(m.value);
                // The per-auction results carry their closing time: all are in once it passes.
                if let Some(at) = ctx.event_time() {
                    ctx.timer_at(Time::Event(at.saturating_add(1)));
                }
            },
            |all, _, ctx| {
                for b in std::mem::take(all).winners() {
                    ctx.emit(b)
                }
            },
        )
        .sink("q7", |b: &Q7Bid, out: &mut Vec<u8>| {
            Row::new(out)
                .num(b.auction)
                .num(b.price)
                .num(b.bidder)
                .num(b.date_time)
                .text(&b.extra)
                .end()
        })
        .named("nexmark_q7")
}

/// q8's view of one person in one window: its names (one, from the generator) and whether it
/// opened an auction.
#[derive(Debug, Clone, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NewUser {
    names: Vec<String>,
    sold: bool,
}

/// q8, new users: persons who opened an auction in the 10 s tumbling window they registered
/// in: `SELECT P.id, P.name, P.starttime FROM (person per TUMBLE window, GROUP BY id, name)
/// P JOIN (auction per TUMBLE window, GROUP BY seller) A ON P.id = A.seller AND the same
/// window`.
pub fn q8() -> App {
    events()
        .flat_map(|e, out: &mut Emit<ById<Option<String>>>| match e {
            Event::Person(p) => out.emit(by(p.id, Some(p.name))),
            Event::Auction(a) => out.emit(by(a.seller, None)),
            Event::Bid(_) => {}
        })
        .key_by(key)
        .window(
            Windows::tumbling(TUMBLE),
            |u: &mut NewUser, m: &ById<Option<String>>| match &m.value {
                Some(name) if !u.names.contains(name) => u.names.push(name.clone()),
                Some(_) => {}
                None => u.sold = true,
            },
            |u, v| {
                u.sold |= v.sold;
                for n in v.names {
                    if !u.names.contains(&n) {
                        u.names.push(n);
                    }
                }
            },
        )
        .flat_map(|w: Windowed<NewUser>, out: &mut Emit<(u64, String, u64)>| {
            if w.value.sold {
                for name in w.value.names {
                    out.emit((id_of(&w.key), name, w.start));
                }
            }
        })
        .sink(
            "q8",
            |(id, name, start): &(u64, String, u64), out: &mut Vec<u8>| {
                Row::new(out).num(*id).text(name).num(*start).end()
            },
        )
        .named("nexmark_q8")
}

/// Every query, in order.
pub const QUERIES: [AppInfo; 9] = [
    AppInfo {
        name: "nexmark_q0",
        about: "NEXMark q0, pass-through: bids as `auction,bidder,price,dateTime,extra`",
        build: q0,
    },
    AppInfo {
        name: "nexmark_q1",
        about: "NEXMark q1, currency conversion: `auction,bidder,price*0.908,dateTime,extra`",
        build: q1,
    },
    AppInfo {
        name: "nexmark_q2",
        about: "NEXMark q2, selection: `auction,price` of bids whose auction is a multiple of 123",
        build: q2,
    },
    AppInfo {
        name: "nexmark_q3",
        about: "NEXMark q3, local item suggestion: `name,city,state,id` of OR/ID/CA sellers' category-10 auctions",
        build: q3,
    },
    AppInfo {
        name: "nexmark_q4",
        about: "NEXMark q4, average price per category: `category,avg` as each auction closes",
        build: q4,
    },
    AppInfo {
        name: "nexmark_q5",
        about: "NEXMark q5, hot items: `auction,num` per 10 s window sliding by 2 s",
        build: q5,
    },
    AppInfo {
        name: "nexmark_q6",
        about: "NEXMark q6, average selling price by seller: `seller,avg` of its last 11 closed auctions",
        build: q6,
    },
    AppInfo {
        name: "nexmark_q7",
        about: "NEXMark q7, highest bid per 10 s window: `auction,price,bidder,dateTime,extra`",
        build: q7,
    },
    AppInfo {
        name: "nexmark_q8",
        about: "NEXMark q8, new users: `id,name,starttime` of persons who opened an auction in their first 10 s window",
        build: q8,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_convert_to_exact_euros() {
        let euros = |price| {
            let mut out = Vec::new();
            dollars_to_euros(price, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(euros(0), "0.000");
        assert_eq!(euros(1), "0.908");
        assert_eq!(euros(12), "10.896");
        assert_eq!(euros(1234), "1120.472");
        assert_eq!(euros(u64::MAX), "16749643618928272866.420");
    }

    #[test]
    fn every_query_reads_events_and_writes_its_own_sink() {
        for (i, query) in QUERIES.iter().enumerate() {
            let app = (query.build)();
            assert_eq!(app.name(), query.name);
            assert_eq!(app.sources(), ["events"]);
            assert_eq!(app.sinks(), [format!("q{i}")]);
        }
    }

    fn q7_bid(price: u64, date_time: u64) -> Q7Bid {
        Q7Bid {
            auction: 1,
            price,
            bidder: 2,
            date_time,
            extra: String::new(),
        }
    }

    #[test]
    fn q7_windows_take_ties_and_bids_exactly_at_their_end() {
        let mut h = Highest {
            end: 10_000,
            ..Highest::default()
        };
        h.offer(q7_bid(5, 1));
        h.offer(q7_bid(9, 2));
        h.offer(q7_bid(9, 3));
        h.offer(q7_bid(7, 4));
        let other = Highest {
            at_end: vec![q7_bid(9, 10_000), q7_bid(8, 10_000)],
            ..Highest::default()
        };
        h.merge(other);
        let times: Vec<u64> = h.winners().iter().map(|b| b.date_time).collect();
        assert_eq!(times, [2, 3, 10_000]);
        assert!(Highest::default().winners().is_empty());
    }
}
