//! Window counts: event time, windows and two sinks. Each frame is a line `MILLIS KEY` (an event
//! time in milliseconds, a space, a key). Events are counted per key in tumbling windows of one
//! second of event time; once the watermark (the largest time read minus [`LATENESS`]) passes a
//! window's end, it is emitted to sink `counts` as `key [start, end) => count\n`. A line later
//! than that, whose window may already be out, goes to sink `late` as it came.

use quokka_engine::{App, DecodeError, Windowed, Windows};

/// Window length, in milliseconds of event time.
pub const WINDOW_MS: u64 = 1000;
/// How far behind the latest event time a line may come and still be counted.
pub const LATENESS: u64 = 200;

/// One input line.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Event {
    pub at: u64,
    pub key: String,
}

pub fn decode(frame: &[u8]) -> Result<Event, DecodeError> {
    let line = std::str::from_utf8(frame).map_err(|_| DecodeError::new("line is not UTF-8"))?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (at, key) = line
        .split_once(' ')
        .ok_or_else(|| DecodeError::new(format!("`{line}` is not `MILLIS KEY`")))?;
    let at = at
        .parse()
        .map_err(|_| DecodeError::new(format!("`{at}` is not a time in milliseconds")))?;
    Ok(Event {
        at,
        key: key.to_owned(),
    })
}

/// One closed window.
pub fn encode(w: &Windowed<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(&w.key);
    let line = format!(" [{}, {}) => {}\n", w.start, w.end, w.value);
    out.extend_from_slice(line.as_bytes());
}

pub fn app() -> App {
    App::source("events", decode)
        .event_time(|e: &Event| e.at, LATENESS)
        .key_by(|e: &Event| e.key.as_bytes())
        .late_to("late", |e: &Event, out: &mut Vec<u8>| {
            out.extend_from_slice(format!("{} {}\n", e.at, e.key).as_bytes())
        })
        .window(
            Windows::tumbling(WINDOW_MS),
            |n: &mut u64, _: &Event| *n += 1,
            |n, m| *n += m,
        )
        .sink("counts", encode)
        .named("window_counts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_decode_or_say_why_not() {
        let e = decode(b"1500 apple\n").unwrap();
        assert_eq!((e.at, e.key.as_str()), (1500, "apple"));
        assert_eq!(decode(b"7 two words").unwrap().key, "two words");
        assert!(decode(b"apple")
            .unwrap_err()
            .to_string()
            .contains("MILLIS KEY"));
        assert!(decode(b"x apple")
            .unwrap_err()
            .to_string()
            .contains("milliseconds"));
        assert!(decode(&[0xff, b' ', b'a']).is_err());
    }

    #[test]
    fn windows_encode_as_lines() {
        let mut out = Vec::new();
        let w = Windowed {
            key: b"apple".to_vec(),
            start: 1000,
            end: 2000,
            value: 3,
        };
        encode(&w, &mut out);
        assert_eq!(out, b"apple [1000, 2000) => 3\n");
    }

    #[test]
    fn the_app_has_two_sinks() {
        assert_eq!(app().sinks(), ["late", "counts"]);
    }
}
