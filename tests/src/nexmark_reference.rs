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
use std::path::Path;

/// A row of `person.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    pub date_time: u64,
    pub extra: String,
}

/// A row of `auction.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: u64,
    pub expires: u64,
    pub seller: u64,
    pub category: u64,
    pub extra: String,
}

/// A row of `bid.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    pub date_time: u64,
    pub extra: String,
}

/// The three tables, each in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub persons: Vec<Person>,
    pub auctions: Vec<Auction>,
    pub bids: Vec<Bid>,
}

const PERSON_HEADER: &str = "id,name,emailAddress,creditCard,city,state,dateTime,extra";
const AUCTION_HEADER: &str =
    "id,itemName,description,initialBid,reserve,dateTime,expires,seller,category,extra";
const BID_HEADER: &str = "auction,bidder,price,channel,url,dateTime,extra";

/// Reads `dir/person.csv`, `dir/auction.csv` and `dir/bid.csv`.
///
/// # Panics
/// If a file is missing or malformed (a test's input is wrong: better to stop loudly).
pub fn read(dir: &Path) -> Tables {
    let persons = read_table(&dir.join("person.csv"), PERSON_HEADER, |f| Person {
        id: f.num(0),
        name: f.text(1),
        email_address: f.text(2),
        credit_card: f.text(3),
        city: f.text(4),
        state: f.text(5),
        date_time: f.num(6),
        extra: f.text(7),
    });
    let auctions = read_table(&dir.join("auction.csv"), AUCTION_HEADER, |f| Auction {
        id: f.num(0),
        item_name: f.text(1),
        description: f.text(2),
        initial_bid: f.num(3),
        reserve: f.num(4),
        date_time: f.num(5),
        expires: f.num(6),
        seller: f.num(7),
        category: f.num(8),
        extra: f.text(9),
    });
    let bids = read_table(&dir.join("bid.csv"), BID_HEADER, |f| Bid {
        auction: f.num(0),
        bidder: f.num(1),
        price: f.num(2),
        channel: f.text(3),
        url: f.text(4),
        date_time: f.num(5),
        extra: f.text(6),
    });
    Tables {
        persons,
        auctions,
        bids,
    }
}

/// One parsed record, with where it came from for error messages.
struct Fields<'a> {
    file: &'a Path,
    record: usize,
    fields: Vec<String>,
}

impl Fields<'_> {
    fn text(&self, i: usize) -> String {
        self.fields[i].clone()
    }

    fn num(&self, i: usize) -> u64 {
        self.fields[i].parse().unwrap_or_else(|_| {
            panic!(
                "{}: record {}: field {} is {:?}, not a number",
                self.file.display(),
                self.record,
                i + 1,
                self.fields[i]
            )
        })
    }
}

fn read_table<T>(file: &Path, header: &str, row: impl Fn(&Fields) -> T) -> Vec<T> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let mut records = parse_csv(&text).into_iter();
    let columns = header.split(',').count();
    let first = records
        .next()
        .unwrap_or_else(|| panic!("{} is empty: no header", file.display()));
    assert_eq!(
        first.join(","),
        header,
        "{} has the wrong header",
        file.display()
    );
    records
        .enumerate()
        .map(|(i, fields)| {
            // Record 1 is the header, so data records count from 2.
            let record = i + 2;
            assert_eq!(
                fields.len(),
                columns,
                "{}: record {record} has {} fields, not {columns}: {fields:?}",
                file.display(),
                fields.len()
            );
            row(&Fields {
                file,
                record,
                fields,
            })
        })
        .collect()
}

/// Parses RFC 4180 CSV: records end with LF or CRLF; a field in double quotes may hold commas,
/// quotes (doubled) and line ends. A final record without a line end counts; a final empty line
/// does not.
///
/// # Panics
/// On a quote left open at the end of the text.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            ',' => record.push(std::mem::take(&mut field)),
            // The CR of a CRLF: the LF ends the record.
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            _ => field.push(c),
        }
    }
    assert!(!in_quotes, "CSV ends inside a quoted field");
    if !record.is_empty() || !field.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// A text field as the output writes it: in double quotes (inner quotes doubled) only when it
/// holds a comma, a quote, CR or LF.
pub fn csv_text(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z: a multiple of every window size and slide here.
    const T0: u64 = 1_767_225_600_000;

    fn person(id: u64, name: &str, state: &str, date_time: u64) -> Person {
        Person {
            id,
            name: name.into(),
            email_address: "e@x.com".into(),
            credit_card: "1234".into(),
            city: "bend".into(),
            state: state.into(),
            date_time,
            extra: String::new(),
        }
    }

    fn auction(id: u64, seller: u64, category: u64, date_time: u64, expires: u64) -> Auction {
        Auction {
            id,
            item_name: "item".into(),
            description: "desc".into(),
            initial_bid: 1,
            reserve: 2,
            date_time,
            expires,
            seller,
            category,
            extra: String::new(),
        }
    }

    fn bid(auction: u64, price: u64, date_time: u64) -> Bid {
        Bid {
            auction,
            bidder: 9,
            price,
            channel: "Google".into(),
            url: "https://x/y".into(),
            date_time,
            extra: String::new(),
        }
    }

    fn bids(bids: Vec<Bid>) -> Tables {
        Tables {
            bids,
            ..Tables::default()
        }
    }

    fn sorted(lines: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    /// A directory of its own under the temp dir, removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "quokka-nexmark-ref-{tag}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn csv_quoting_round_trips() {
        let fields = [
            "plain",
            "",
            "a,b",
            "say \"hi\"",
            "\"",
            "line\nbreak",
            "cr\rand crlf\r\n",
            "ünïcode",
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_text(f)).collect();
        let line = line.join(",");
        assert_eq!(
            line,
            "plain,,\"a,b\",\"say \"\"hi\"\"\",\"\"\"\",\"line\nbreak\",\"cr\rand crlf\r\n\",ünïcode"
        );
        // Records end with LF or CRLF; the last may have no line end.
        for (sep, end) in [("\n", "\n"), ("\r\n", "\r\n"), ("\n", ""), ("\r\n", "")] {
            let text = format!("{line}{sep}x,y{end}");
            assert_eq!(
                parse_csv(&text),
                vec![
                    fields.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                    vec!["x".to_string(), "y".to_string()]
                ]
            );
        }
        assert_eq!(parse_csv(""), Vec::<Vec<String>>::new());
        assert_eq!(parse_csv("\n"), vec![vec![String::new()]]);
    }

    #[test]
    #[should_panic(expected = "inside a quoted field")]
    fn an_open_quote_is_an_error() {
        parse_csv("a,\"b\n");
    }

    #[test]
    fn read_parses_quoted_fields_and_outputs_requote_them() {
        let dir = TempDir::new("quoted");
        std::fs::write(
            dir.0.join("person.csv"),
            format!(
                "{PERSON_HEADER}\n\
                 7,\"Smith, \"\"Jo\"\"\",j@x.com,1 2,\"two\nlines\",OR,{T0},\r\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.0.join("auction.csv"),
            format!(
                "{AUCTION_HEADER}\n8,thing,\"a, b\",10,20,{T0},{},7,10,x\n",
                T0 + 5
            ),
        )
        .unwrap();
        std::fs::write(
            dir.0.join("bid.csv"),
            format!("{BID_HEADER}\n8,3,15,Apple,u,{},\"e,\"", T0 + 1),
        )
        .unwrap();
        let t = read(&dir.0);
        assert_eq!(
            t.persons,
            vec![Person {
                id: 7,
                name: "Smith, \"Jo\"".into(),
                email_address: "j@x.com".into(),
                credit_card: "1 2".into(),
                city: "two\nlines".into(),
                state: "OR".into(),
                date_time: T0,
                extra: String::new(),
            }]
        );
        assert_eq!(t.auctions[0].description, "a, b");
        assert_eq!(t.auctions[0].expires, T0 + 5);
        assert_eq!(t.bids[0].extra, "e,");
        assert_eq!(
            expected(3, &t),
            vec!["\"Smith, \"\"Jo\"\"\",\"two\nlines\",OR,8"]
        );
        assert_eq!(expected(0, &t), vec![format!("8,3,15,{},\"e,\"", T0 + 1)]);
    }

    #[test]
    #[should_panic(expected = "not a number")]
    fn read_rejects_bad_numbers() {
        let dir = TempDir::new("bad");
        std::fs::write(dir.0.join("person.csv"), format!("{PERSON_HEADER}\n")).unwrap();
        std::fs::write(dir.0.join("auction.csv"), format!("{AUCTION_HEADER}\n")).unwrap();
        std::fs::write(
            dir.0.join("bid.csv"),
            format!("{BID_HEADER}\n1,2,-3,c,u,4,\n"),
        )
        .unwrap();
        read(&dir.0);
    }

    #[test]
    fn q0_and_q2_select_bids() {
        let mut b = bid(246, 5, T0);
        b.extra = "a\"b".into();
        let t = bids(vec![bid(0, 1, T0), bid(123, 2, T0), bid(124, 3, T0), b]);
        assert_eq!(
            expected(0, &t),
            sorted(&[
                &format!("0,9,1,{T0},"),
                &format!("123,9,2,{T0},"),
                &format!("124,9,3,{T0},"),
                &format!("246,9,5,{T0},\"a\"\"b\""),
            ])
        );
        assert_eq!(expected(2, &t), sorted(&["0,1", "123,2", "246,5"]));
    }

    #[test]
    fn q1_converts_prices_exactly() {
        assert_eq!(price_eur(1234), "1120.472");
        assert_eq!(price_eur(1), "0.908");
        assert_eq!(price_eur(0), "0.000");
        assert_eq!(price_eur(999), "907.092");
        assert_eq!(price_eur(1000), "908.000");
        assert_eq!(price_eur(u64::MAX), "16749643618928272866.420");
        let t = bids(vec![bid(1, 1234, T0)]);
        assert_eq!(expected(1, &t), vec![format!("1,9,1120.472,{T0},")]);
    }

    #[test]
    fn q3_joins_every_matching_pair() {
        let t = Tables {
            persons: vec![
                person(1, "ann", "OR", T0),
                person(2, "bob", "or", T0),
                person(3, "cy", "WA", T0),
                person(4, "di", "CA", T0),
                person(5, "ed", "ID", T0),
            ],
            auctions: vec![
                auction(10, 1, 10, T0, T0 + 1),
                auction(11, 1, 10, T0, T0 + 1),
                auction(12, 1, 11, T0, T0 + 1),
                auction(13, 2, 10, T0, T0 + 1),
                auction(14, 3, 10, T0, T0 + 1),
                auction(15, 4, 10, T0, T0 + 1),
                auction(16, 5, 10, T0, T0 + 1),
                auction(17, 99, 10, T0, T0 + 1),
            ],
            bids: vec![],
        };
        assert_eq!(
            expected(3, &t),
            sorted(&[
                "ann,bend,OR,10",
                "ann,bend,OR,11",
                "di,bend,CA,15",
                "ed,bend,ID,16"
            ])
        );
    }

    #[test]
    fn q4_averages_finals_per_category_in_expiry_order() {
        let t = Tables {
            persons: vec![],
            auctions: vec![
                // Listed out of order: the fold goes by (expires, id).
                auction(1, 50, 10, T0 + 100, T0 + 200),
                auction(2, 50, 10, T0 + 100, T0 + 150),
                // No bid in its lifetime: not closed.
                auction(3, 50, 10, T0 + 100, T0 + 200),
                // Same expiry: id 4 before id 5.
                auction(5, 50, 11, T0, T0 + 300),
                auction(4, 50, 11, T0, T0 + 300),
            ],
            bids: vec![
                bid(1, 1000, T0 + 99),
                bid(1, 10, T0 + 100),
                bid(1, 20, T0 + 200),
                bid(1, 5000, T0 + 201),
                bid(2, 40, T0 + 150),
                bid(3, 7000, T0 + 99),
                bid(3, 7000, T0 + 201),
                bid(5, 7, T0 + 1),
                bid(4, 2, T0 + 1),
                // A bid on no auction.
                bid(6, 9999, T0 + 1),
            ],
        };
        // Category 10: finals 40 (auction 2) then 20 (auction 1): averages 40, 30.
        // Category 11: finals 2 (auction 4) then 7 (auction 5): averages 2, 9/2 = 4.
        assert_eq!(expected(4, &t), sorted(&["10,40", "10,30", "11,2", "11,4"]));
    }

    #[test]
    fn q6_averages_each_sellers_last_eleven() {
        let mut auctions = Vec::new();
        let mut bid_rows = Vec::new();
        // Seller 5's twelve auctions, final i expiring at T0 + 1000 + i, listed in reverse.
        for i in (1..=12u64).rev() {
            auctions.push(auction(100 + i, 5, 10, T0, T0 + 1000 + i));
            bid_rows.push(bid(100 + i, i, T0 + 1000 + i));
        }
        // Seller 6: same expiry, so id 1 (final 9) before id 2 (final 1).
        auctions.push(auction(2, 6, 10, T0, T0 + 500));
        auctions.push(auction(1, 6, 10, T0, T0 + 500));
        bid_rows.push(bid(2, 1, T0 + 500));
        bid_rows.push(bid(1, 9, T0));
        // Lifetime bounds are inclusive, as in q4: these are outside them.
        bid_rows.push(bid(1, 1000, T0 - 1));
        bid_rows.push(bid(2, 1000, T0 + 501));
        let t = Tables {
            persons: vec![],
            auctions,
            bids: bid_rows,
        };
        // Finals 1..=i average (i + 1) / 2, truncated, for i up to 11; the twelfth averages 2..=12: 77 / 11.
        let mut want: Vec<String> = (1..=11u64)
            .map(|i| format!("5,{}", i.div_ceil(2)))
            .collect();
        want.push("5,7".into());
        want.push("6,9".into());
        want.push("6,5".into());
        want.sort();
        assert_eq!(expected(6, &t), want);
    }

    #[test]
    fn q5_windows_are_aligned_to_the_slide() {
        // Each bid is in exactly five windows.
        assert_eq!(
            expected(5, &bids(vec![bid(7, 1, T0 + 1999)])),
            vec!["7,1"; 5]
        );
        // T0 + 1999 and T0 + 11999 share no window: [T0 + 2000, T0 + 12000) misses the first.
        assert_eq!(
            expected(5, &bids(vec![bid(7, 1, T0 + 1999), bid(7, 1, T0 + 11999)])),
            vec!["7,1"; 10]
        );
        // T0 + 2000 and T0 + 11999 share exactly [T0 + 2000, T0 + 12000).
        let mut want = vec!["7,1"; 8];
        want.push("7,2");
        assert_eq!(
            expected(5, &bids(vec![bid(7, 1, T0 + 2000), bid(7, 1, T0 + 11999)])),
            sorted(&want)
        );
    }

    #[test]
    fn q5_outputs_every_auction_tied_at_the_maximum() {
        let t = bids(vec![
            bid(1, 1, T0 + 5000),
            bid(1, 1, T0 + 5000),
            bid(2, 1, T0 + 5000),
            bid(2, 1, T0 + 5000),
            bid(3, 1, T0 + 5000),
            // In none of the windows above (T0 - 4000 .. T0 + 4000): alone in its five.
            bid(3, 1, T0 + 14000),
        ]);
        let mut want = vec!["1,2"; 5];
        want.extend(["2,2"; 5]);
        want.extend(["3,1"; 5]);
        assert_eq!(expected(5, &t), sorted(&want));
    }

    #[test]
    fn q7_matches_a_bid_at_a_windows_end_to_that_window() {
        let t = bids(vec![
            // Window T0: max 30, reached twice.
            bid(1, 10, T0 + 1),
            bid(1, 30, T0 + 5000),
            bid(2, 30, T0 + 9999),
            // Window T0 + 10000: max 50. This bid at its start (window T0's end) has window
            // T0's max.
            bid(3, 30, T0 + 10000),
            bid(4, 50, T0 + 10001),
            // Window T0 + 20000's only bid, and at window T0 + 10000's end with its max: twice.
            bid(5, 50, T0 + 20000),
        ]);
        assert_eq!(
            expected(7, &t),
            sorted(&[
                &format!("1,30,9,{},", T0 + 5000),
                &format!("2,30,9,{},", T0 + 9999),
                &format!("3,30,9,{},", T0 + 10000),
                &format!("4,50,9,{},", T0 + 10001),
                &format!("5,50,9,{},", T0 + 20000),
                &format!("5,50,9,{},", T0 + 20000),
            ])
        );
    }

    #[test]
    fn q8_needs_the_same_window_and_outputs_once() {
        let t = Tables {
            persons: vec![
                person(1, "ann", "OR", T0 + 9999),
                // Auction in the next window.
                person(2, "bob", "OR", T0 + 9999),
                // Two auctions, and the person twice: one line.
                person(3, "cy", "OR", T0 + 10000),
                person(3, "cy", "OR", T0 + 12000),
                // The auction came first, in the same window: still a match.
                person(4, "di", "OR", T0 + 9000),
                // No auction of theirs at all.
                person(5, "ed", "OR", T0),
            ],
            auctions: vec![
                auction(10, 1, 10, T0 + 9999, T0 + 99_999),
                auction(11, 2, 10, T0 + 10000, T0 + 99_999),
                auction(12, 3, 10, T0 + 10001, T0 + 99_999),
                auction(13, 3, 10, T0 + 19999, T0 + 99_999),
                auction(14, 4, 10, T0 + 1000, T0 + 99_999),
                auction(15, 1, 10, T0 + 20000, T0 + 99_999),
            ],
            bids: vec![],
        };
        assert_eq!(
            expected(8, &t),
            sorted(&[
                &format!("1,ann,{T0}"),
                &format!("3,cy,{}", T0 + 10000),
                &format!("4,di,{T0}"),
            ])
        );
    }

    #[test]
    fn generated_data_gives_every_query_output() {
        use quokka_apps::nexmark::generate::{write_files, GenSpec};
        let dir = TempDir::new("generated");
        let written = write_files(
            GenSpec {
                events: 20_000,
                rate: 2_000,
                seed: 0,
            },
            &dir.0,
        )
        .unwrap();
        let t = read(&dir.0);
        assert_eq!(t.persons.len() as u64, written.persons);
        assert_eq!(t.auctions.len() as u64, written.auctions);
        assert_eq!(t.bids.len() as u64, written.bids);
        assert_eq!(expected(0, &t).len(), t.bids.len());
        assert_eq!(expected(1, &t).len(), t.bids.len());
        for q in [3, 4, 5, 6, 7, 8] {
            assert!(!expected(q, &t).is_empty(), "q{q} has no output");
        }
        // Every line is sorted as promised.
        let q5 = expected(5, &t);
        assert!(q5.windows(2).all(|w| w[0] <= w[1]));
    }
}
