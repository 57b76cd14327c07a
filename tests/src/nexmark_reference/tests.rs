//! The NEXMark reference checked on small hand-made inputs, query by query.

use super::tables::{AUCTION_HEADER, BID_HEADER, PERSON_HEADER};
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
