//! The generated tables, read from their CSV files (RFC 4180 quoting).

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

pub(super) const PERSON_HEADER: &str = "id,name,emailAddress,creditCard,city,state,dateTime,extra";
pub(super) const AUCTION_HEADER: &str =
    "id,itemName,description,initialBid,reserve,dateTime,expires,seller,category,extra";
pub(super) const BID_HEADER: &str = "auction,bidder,price,channel,url,dateTime,extra";

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
