//! A plain, single-threaded reference implementation of NEXMark queries q0 to q8, over the CSV
//! files `quokka-gen nexmark` writes, for tests to compare the engine's output with.
//!
//! It is written from the queries' definitions, not from the engine's apps, on purpose: a
//! reference that shared code (or a misreading) with the code under test would agree with its
//! bugs. It favours obviously-correct over fast: whole tables in memory, maps and sorts.
//!
//! Every query's result is its output lines (CSV, without the trailing newline), sorted, so the
//! engine's output can be compared whatever order its cores emitted it in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

mod tables;
#[cfg(test)]
mod tests;

pub use tables::{csv_text, parse_csv, read, Auction, Bid, Person, Tables};

/// Every output line of query `query` (0 to 8) over `t`, without line ends, sorted.
///
/// # Panics
/// If `query` is over 8.
pub fn expected(query: usize, t: &Tables) -> Vec<String> {
    let mut lines = match query {
        0 => q0(t),
        1 => q1(t),
        2 => q2(t),
        3 => q3(t),
        4 => q4(t),
        5 => q5(t),
        6 => q6(t),
        7 => q7(t),
        8 => q8(t),
        _ => panic!("NEXMark has queries 0 to 8, not {query}"),
    };
    lines.sort();
    lines
}

/// q0, pass-through: every bid.
fn q0(t: &Tables) -> Vec<String> {
    t.bids
        .iter()
        .map(|b| {
            format!(
                "{},{},{},{},{}",
                b.auction,
                b.bidder,
                b.price,
                b.date_time,
                csv_text(&b.extra)
            )
        })
        .collect()
}

/// The price in euros, `price * 0.908`, exactly, with three decimals (integer arithmetic, so no
/// float rounding can differ between reference and engine).
pub fn price_eur(price: u64) -> String {
    let x = u128::from(price) * 908;
    format!("{}.{:03}", x / 1000, x % 1000)
}

/// q1, currency conversion: every bid with its price in euros.
fn q1(t: &Tables) -> Vec<String> {
    t.bids
        .iter()
        .map(|b| {
            format!(
                "{},{},{},{},{}",
                b.auction,
                b.bidder,
                price_eur(b.price),
                b.date_time,
                csv_text(&b.extra)
            )
        })
        .collect()
}

/// q2, selection: the bids on auctions whose id is a multiple of 123.
fn q2(t: &Tables) -> Vec<String> {
    t.bids
        .iter()
        .filter(|b| b.auction % 123 == 0)
        .map(|b| format!("{},{}", b.auction, b.price))
        .collect()
}

/// q3, local item suggestion: sellers in OR, ID or CA of auctions in category 10, one line per
/// (person, auction) pair that joins.
fn q3(t: &Tables) -> Vec<String> {
    let mut sellers: HashMap<u64, Vec<&Person>> = HashMap::new();
    for p in &t.persons {
        if ["OR", "ID", "CA"].contains(&p.state.as_str()) {
            sellers.entry(p.id).or_default().push(p);
        }
    }
    let mut lines = Vec::new();
    for a in t.auctions.iter().filter(|a| a.category == 10) {
        for p in sellers.get(&a.seller).into_iter().flatten() {
            lines.push(format!(
                "{},{},{},{}",
                csv_text(&p.name),
                csv_text(&p.city),
                csv_text(&p.state),
                a.id
            ));
        }
    }
    lines
}

/// A closed auction (one with a bid inside its lifetime) and its final price.
struct Closed<'a> {
    auction: &'a Auction,
    /// The highest price of the auction's bids with `dateTime` in `[A.dateTime, A.expires]`.
    final_price: u64,
}

/// q4's and q6's closed auctions, in the order q4 and q6 fold them: by `(expires, id)`.
fn closed_auctions(t: &Tables) -> Vec<Closed<'_>> {
    let mut bids_of: HashMap<u64, Vec<&Bid>> = HashMap::new();
    for b in &t.bids {
        bids_of.entry(b.auction).or_default().push(b);
    }
    let mut closed: Vec<Closed> = t
        .auctions
        .iter()
        .filter_map(|a| {
            let final_price = bids_of
                .get(&a.id)?
                .iter()
                // Inclusive at both ends, as the SQL's BETWEEN.
                .filter(|b| a.date_time <= b.date_time && b.date_time <= a.expires)
                .map(|b| b.price)
                .max()?;
            Some(Closed {
                auction: a,
                final_price,
            })
        })
        .collect();
    closed.sort_by_key(|c| (c.auction.expires, c.auction.id));
    closed
}

/// Integer average, truncated; the sum in u128 so that no sum of u64 prices overflows.
fn average(finals: &[u64]) -> u128 {
    finals.iter().map(|&f| u128::from(f)).sum::<u128>() / finals.len() as u128
}

/// q4, average price per category: after each closed auction of a category, the average final
/// price of that category's closed auctions so far.
fn q4(t: &Tables) -> Vec<String> {
    let mut finals: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut lines = Vec::new();
    for c in closed_auctions(t) {
        let so_far = finals.entry(c.auction.category).or_default();
        so_far.push(c.final_price);
        lines.push(format!("{},{}", c.auction.category, average(so_far)));
    }
    lines
}

/// q6, average selling price per seller: after each closed auction of a seller, the average
/// final price of that seller's last (up to) 11 closed auctions, this one included.
fn q6(t: &Tables) -> Vec<String> {
    let mut finals: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut lines = Vec::new();
    for c in closed_auctions(t) {
        let so_far = finals.entry(c.auction.seller).or_default();
        so_far.push(c.final_price);
        let last = &so_far[so_far.len().saturating_sub(11)..];
        lines.push(format!("{},{}", c.auction.seller, average(last)));
    }
    lines
}

/// q5's hop windows: 10 s long, one starting every 2 s.
const HOP_SIZE: i128 = 10_000;
const HOP_SLIDE: i128 = 2_000;

/// q5, hot items: in each hop window, the auctions with the most bids (all of them on a tie).
fn q5(t: &Tables) -> Vec<String> {
    // Window start -> auction -> bids. Starts are signed: a bid in the first 10 s after the epoch
    // is in windows that start before it (never the case for real timestamps).
    let mut counts: BTreeMap<i128, HashMap<u64, u64>> = BTreeMap::new();
    for b in &t.bids {
        let t = i128::from(b.date_time);
        // The latest window holding t starts at t rounded down to the slide; the earlier ones
        // every slide before it, while they still reach past t.
        let mut start = t - t.rem_euclid(HOP_SLIDE);
        while start + HOP_SIZE > t {
            *counts
                .entry(start)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
            start -= HOP_SLIDE;
        }
    }
    let mut lines = Vec::new();
    for per_auction in counts.values() {
        let max = per_auction.values().copied().max().unwrap_or(0);
        for (auction, &n) in per_auction {
            if n == max {
                lines.push(format!("{auction},{n}"));
            }
        }
    }
    lines
}

/// q7's and q8's tumbling windows: 10 s.
const TUMBLE: u64 = 10_000;

/// q7, highest bid: per tumbling window, the bids at the window's highest price. A bid matches
/// a window `[s, s + 10 s)`'s maximum if its time is in `[s, s + 10 s]`: the SQL compares with
/// BETWEEN, inclusive, so a bid exactly at a window's end can match the window before too.
fn q7(t: &Tables) -> Vec<String> {
    let mut max_price: HashMap<u64, u64> = HashMap::new();
    for b in &t.bids {
        let start = b.date_time - b.date_time % TUMBLE;
        let max = max_price.entry(start).or_insert(b.price);
        *max = (*max).max(b.price);
    }
    let mut lines = Vec::new();
    for b in &t.bids {
        let own = b.date_time - b.date_time % TUMBLE;
        let mut windows = vec![own];
        if b.date_time % TUMBLE == 0 && b.date_time >= TUMBLE {
            windows.push(own - TUMBLE);
        }
        for w in windows {
            if max_price.get(&w) == Some(&b.price) {
                lines.push(format!(
                    "{},{},{},{},{}",
                    b.auction,
                    b.price,
                    b.bidder,
                    b.date_time,
                    csv_text(&b.extra)
                ));
            }
        }
    }
    lines
}

/// q8, monitor new users: persons who opened an auction in the same tumbling window as they
/// registered, once per (id, name, window start).
fn q8(t: &Tables) -> Vec<String> {
    let selling: HashSet<(u64, u64)> = t
        .auctions
        .iter()
        .map(|a| (a.seller, a.date_time - a.date_time % TUMBLE))
        .collect();
    let mut distinct: BTreeSet<(u64, &str, u64)> = BTreeSet::new();
    for p in &t.persons {
        let start = p.date_time - p.date_time % TUMBLE;
        if selling.contains(&(p.id, start)) {
            distinct.insert((p.id, &p.name, start));
        }
    }
    distinct
        .into_iter()
        .map(|(id, name, start)| format!("{id},{},{start}", csv_text(name)))
        .collect()
}
