//! The NEXMark generator (the `nexmark` crate, a port of the Beam/Flink one: its distributions,
//! its 1:3:46 proportions of persons, auctions and bids) with a fixed start time, so the same
//! seed gives the same events.

use std::io::{self, Write};
use std::path::Path;

use super::event::{Auction, Bid, Event, Person, AUCTION_HEADER, BID_HEADER, PERSON_HEADER};

/// Event time of the first event: 2026-01-01T00:00:00Z, in epoch milliseconds.
pub const BASE_TIME: u64 = 1_767_225_600_000;
/// Event ids of two seeds are this far apart (the generator draws each event from its id).
const SEED_STRIDE: u64 = 10_000_000_000;
/// The largest seed (its ids still fit in 64 bits with room for any `--events`).
pub const MAX_SEED: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy)]
pub struct GenSpec {
    pub events: u64,
    /// Events per second of event time (NEXMark's default is 10 000).
    pub rate: u64,
    pub seed: u64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            events: 200_000,
            rate: 10_000,
            seed: 0,
        }
    }
}

/// The events of `spec`, in generation order (event time never goes back).
///
/// # Panics
/// If `spec.seed` is over [`MAX_SEED`] or `spec.rate` is 0 (the CLI checks both).
pub fn events(spec: GenSpec) -> impl Iterator<Item = Event> {
    assert!(spec.seed <= MAX_SEED && spec.rate > 0);
    let config = nexmark::config::NexmarkConfig {
        base_time: BASE_TIME,
        first_event_id: (spec.seed * SEED_STRIDE) as usize,
        first_rate: spec.rate as usize,
        next_rate: spec.rate as usize,
        // As Flink's NEXMark generator spells them (q3 selects 'OR', 'ID' and 'CA').
        us_states: ["AZ", "CA", "ID", "OR", "WA", "WY"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    nexmark::EventGenerator::new(config)
        .take(spec.events as usize)
        .map(from_generator)
}

fn from_generator(e: nexmark::event::Event) -> Event {
    use nexmark::event::Event as N;
    match e {
        N::Person(p) => Event::Person(Person {
            id: p.id as u64,
            name: p.name,
            email_address: p.email_address,
            credit_card: p.credit_card,
            city: p.city,
            state: p.state,
            date_time: p.date_time,
            extra: p.extra,
        }),
        N::Auction(a) => Event::Auction(Auction {
            id: a.id as u64,
            item_name: a.item_name,
            description: a.description,
            initial_bid: a.initial_bid as u64,
            reserve: a.reserve as u64,
            date_time: a.date_time,
            expires: a.expires,
            seller: a.seller as u64,
            category: a.category as u64,
            extra: a.extra,
        }),
        N::Bid(b) => Event::Bid(Bid {
            auction: b.auction as u64,
            bidder: b.bidder as u64,
            price: b.price as u64,
            channel: b.channel,
            url: b.url,
            date_time: b.date_time,
            extra: b.extra,
        }),
    }
}

/// How many of each kind [`write_files`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub persons: u64,
    pub auctions: u64,
    pub bids: u64,
}

/// Writes `dir/events.frames` (every event, framed, in generation order) and `person.csv`,
/// `auction.csv` and `bid.csv` (a header line, then one row per event of that kind).
pub fn write_files(spec: GenSpec, dir: &Path) -> io::Result<Written> {
    std::fs::create_dir_all(dir)?;
    let create = |name: &str| -> io::Result<io::BufWriter<std::fs::File>> {
        let file = std::fs::File::create(dir.join(name))?;
        Ok(io::BufWriter::with_capacity(1 << 20, file))
    };
    let mut frames = create("events.frames")?;
    let mut csv = [
        create("person.csv")?,
        create("auction.csv")?,
        create("bid.csv")?,
    ];
    for (file, header) in csv
        .iter_mut()
        .zip([PERSON_HEADER, AUCTION_HEADER, BID_HEADER])
    {
        writeln!(file, "{header}")?;
    }
    let mut written = Written::default();
    let mut buf = Vec::with_capacity(1024);
    for event in events(spec) {
        buf.clear();
        event.encode(&mut buf);
        let len = u32::try_from(buf.len()).expect("an event under 4 GiB");
        frames.write_all(&len.to_be_bytes())?;
        frames.write_all(&buf)?;
        buf.clear();
        event.csv(&mut buf);
        let kind = match event {
            Event::Person(_) => {
                written.persons += 1;
                0
            }
            Event::Auction(_) => {
                written.auctions += 1;
                1
            }
            Event::Bid(_) => {
                written.bids += 1;
                2
            }
        };
        csv[kind].write_all(&buf)?;
    }
    frames.flush()?;
    for mut file in csv {
        file.flush()?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_are_nexmarks_and_time_never_goes_back() {
        let spec = GenSpec {
            events: 5_000,
            ..GenSpec::default()
        };
        let all: Vec<Event> = events(spec).collect();
        let count = |f: fn(&Event) -> bool| all.iter().filter(|e| f(e)).count();
        assert_eq!(count(|e| matches!(e, Event::Person(_))), 100);
        assert_eq!(count(|e| matches!(e, Event::Auction(_))), 300);
        assert_eq!(count(|e| matches!(e, Event::Bid(_))), 4_600);
        assert!(all.windows(2).all(|w| w[0].date_time() <= w[1].date_time()));
        assert_eq!(all[0].date_time(), BASE_TIME);
        // 10 000 events per second of event time.
        assert_eq!(all[4_999].date_time() - BASE_TIME, 500);
        // q3 finds its states.
        assert!(all
            .iter()
            .any(|e| matches!(e, Event::Person(p) if p.state == "OR")));
    }

    #[test]
    fn the_same_seed_gives_the_same_events_and_another_seed_others() {
        let spec = |seed| GenSpec {
            events: 1_000,
            rate: 10_000,
            seed,
        };
        let a: Vec<Event> = events(spec(3)).collect();
        assert_eq!(a, events(spec(3)).collect::<Vec<_>>());
        assert_ne!(a, events(spec(4)).collect::<Vec<_>>());
    }
}
