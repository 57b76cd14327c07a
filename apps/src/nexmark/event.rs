//! NEXMark's three kinds of event, as frames (what the source `events` reads) and as CSV rows
//! (the Flink NEXMark schema's columns, in its order; times in epoch milliseconds).
//!
//! A frame is one event: a kind byte (`P`, `A` or `B`), then its fields in the CSV's column
//! order, each number a little-endian `u64` and each text a little-endian `u32` length and that
//! many bytes of UTF-8.

use quokka_engine::DecodeError;

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    pub date_time: u64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// Its event time: `dateTime`.
    pub fn date_time(&self) -> u64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// Appends the event as one frame's payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            Event::Person(_) => b'P',
            Event::Auction(_) => b'A',
            Event::Bid(_) => b'B',
        });
        self.fields(&mut Writer(out));
    }

    /// Appends the event as a CSV row of its kind's file.
    pub fn csv(&self, out: &mut Vec<u8>) {
        let mut row = Row::new(out);
        self.fields(&mut row);
        row.end();
    }

    /// Hands its fields to `to` in the CSV's column order (which the frame keeps too).
    fn fields(&self, to: &mut impl Fields) {
        match self {
            Event::Person(p) => {
                to.num(p.id);
                to.text(&p.name);
                to.text(&p.email_address);
                to.text(&p.credit_card);
                to.text(&p.city);
                to.text(&p.state);
                to.num(p.date_time);
                to.text(&p.extra);
            }
            Event::Auction(a) => {
                to.num(a.id);
                to.text(&a.item_name);
                to.text(&a.description);
                to.num(a.initial_bid);
                to.num(a.reserve);
                to.num(a.date_time);
                to.num(a.expires);
                to.num(a.seller);
                to.num(a.category);
                to.text(&a.extra);
            }
            Event::Bid(b) => {
                to.num(b.auction);
                to.num(b.bidder);
                to.num(b.price);
                to.text(&b.channel);
                to.text(&b.url);
                to.num(b.date_time);
                to.text(&b.extra);
            }
        }
    }
}

/// Where an event's fields go: a frame or a CSV row.
trait Fields {
    fn num(&mut self, n: u64);
    fn text(&mut self, s: &str);
}

impl Fields for Row<'_> {
    fn num(&mut self, n: u64) {
        Row::num(self, n);
    }

    fn text(&mut self, s: &str) {
        Row::text(self, s);
    }
}

/// The header line of each kind's CSV file.
pub const PERSON_HEADER: &str = "id,name,emailAddress,creditCard,city,state,dateTime,extra";
pub const AUCTION_HEADER: &str =
    "id,itemName,description,initialBid,reserve,dateTime,expires,seller,category,extra";
pub const BID_HEADER: &str = "auction,bidder,price,channel,url,dateTime,extra";

/// Decodes one frame of the source `events`.
pub fn decode(frame: &[u8]) -> Result<Event, DecodeError> {
    let (&kind, rest) = frame
        .split_first()
        .ok_or_else(|| DecodeError::new("an empty frame is no NEXMark event"))?;
    let mut r = Reader(rest);
    let event = match kind {
        b'P' => Event::Person(Person {
            id: r.num()?,
            name: r.text()?,
            email_address: r.text()?,
            credit_card: r.text()?,
            city: r.text()?,
            state: r.text()?,
            date_time: r.num()?,
            extra: r.text()?,
        }),
        b'A' => Event::Auction(Auction {
            id: r.num()?,
            item_name: r.text()?,
            description: r.text()?,
            initial_bid: r.num()?,
            reserve: r.num()?,
            date_time: r.num()?,
            expires: r.num()?,
            seller: r.num()?,
            category: r.num()?,
            extra: r.text()?,
        }),
        b'B' => Event::Bid(Bid {
            auction: r.num()?,
            bidder: r.num()?,
            price: r.num()?,
            channel: r.text()?,
            url: r.text()?,
            date_time: r.num()?,
            extra: r.text()?,
        }),
        other => {
            return Err(DecodeError::new(format!(
                "a NEXMark event starts with P, A or B, not byte {other}"
            )))
        }
    };
    if !r.0.is_empty() {
        return Err(DecodeError::new(format!(
            "{} bytes after the last field of a NEXMark event",
            r.0.len()
        )));
    }
    Ok(event)
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Fields for Writer<'_> {
    fn num(&mut self, n: u64) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn text(&mut self, s: &str) {
        let len = u32::try_from(s.len()).expect("a NEXMark field over 4 GiB");
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::new(
                "a NEXMark event frame ends inside a field",
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn num(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::new("a NEXMark text field is not UTF-8"))
    }
}

/// Builds one CSV line: fields quoted (RFC 4180) only when they hold a comma, quote or line end.
pub struct Row<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Row<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Row { out, first: true }
    }

    fn sep(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    pub fn num(&mut self, n: u64) -> &mut Self {
        self.sep();
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.sep();
        // Without short-circuit the scan vectorizes: the fields are mostly long and clean.
        let special = (s.bytes()).fold(false, |any, b| {
            any | (b == b',') | (b == b'"') | (b == b'\n') | (b == b'\r')
        });
        if special {
            self.out.push(b'"');
            for part in s.split_inclusive('"') {
                self.out.extend_from_slice(part.as_bytes());
                if part.ends_with('"') {
                    self.out.push(b'"');
                }
            }
            self.out.push(b'"');
        } else {
            self.out.extend_from_slice(s.as_bytes());
        }
        self
    }

    /// A field `write` writes as it is (a formatted number).
    pub fn raw(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.sep();
        write(self.out);
        self
    }

    pub fn end(&mut self) {
        self.out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid() -> Event {
        Event::Bid(Bid {
            auction: 1007,
            bidder: 2001,
            price: 1234,
            channel: "Google".into(),
            url: "https://x/y?a=1".into(),
            date_time: 1_700_000_000_123,
            extra: String::new(),
        })
    }

    #[test]
    fn frames_decode_to_the_event_they_encode() {
        let person = Event::Person(Person {
            id: 1000,
            name: "vicky noris".into(),
            email_address: "a@b.com".into(),
            credit_card: "1 2 3 4".into(),
            city: "bend".into(),
            state: "OR".into(),
            date_time: 5,
            extra: "xyz".into(),
        });
        let auction = Event::Auction(Auction {
            id: 1001,
            item_name: "item".into(),
            description: "d".into(),
            initial_bid: 10,
            reserve: 20,
            date_time: 6,
            expires: 99,
            seller: 1000,
            category: 10,
            extra: String::new(),
        });
        for e in [person, auction, bid()] {
            let mut frame = Vec::new();
            e.encode(&mut frame);
            assert_eq!(decode(&frame).unwrap(), e);
        }
    }

    #[test]
    fn bad_frames_say_why() {
        let mut frame = Vec::new();
        bid().encode(&mut frame);
        let why = |f: &[u8]| decode(f).unwrap_err().to_string();
        assert!(why(&[]).contains("empty"));
        assert!(why(b"X").contains("P, A or B"));
        assert!(why(&frame[..frame.len() - 1]).contains("ends inside"));
        let mut longer = frame.clone();
        longer.push(0);
        assert!(why(&longer).contains("after the last field"));
        // A text length far past the frame's end.
        let mut huge = vec![b'B'];
        huge.extend_from_slice(&[0; 24]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(why(&huge).contains("ends inside"));
    }

    #[test]
    fn csv_rows_quote_only_what_needs_it() {
        let mut out = Vec::new();
        bid().csv(&mut out);
        assert_eq!(
            out,
            b"1007,2001,1234,Google,https://x/y?a=1,1700000000123,\n"
        );
        let mut out = Vec::new();
        Row::new(&mut out)
            .text("a,b")
            .text("say \"hi\"")
            .num(3)
            .end();
        assert_eq!(out, b"\"a,b\",\"say \"\"hi\"\"\",3\n");
    }
}
