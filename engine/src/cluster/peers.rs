//! Who may open a link to this node, and whose broken link counts as a lost node: the secret
//! this node shares with each peer it knows (a member, or a joiner the coordinator announced)
//! and which of each peer's lanes has a live incoming connection. Pure bookkeeping; the link
//! readers ask it and carry out its answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::wire::{Lane, LinkSecret};

/// Why a hello was refused. None of them changes anything.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum Refusal {
    #[error("no node named `{0}` is a member or expected")]
    Unknown(String),
    #[error("wrong link secret for node `{0}`")]
    WrongSecret(String),
    #[error("node `{node}` already has a live {lane:?} link here")]
    LaneTaken { node: String, lane: Lane },
}

/// An incoming connection that proved who it is: the peer, its lane, and the secret it proved
/// itself with (a later secret for the same name makes it a stale one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub node: String,
    pub lane: Lane,
    secret: LinkSecret,
}

/// How an admitted connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// With a goodbye: the peer closed it on purpose.
    Goodbye,
    /// Without one: the peer died, or the network failed.
    Broken,
}

/// What a connection's end means to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// Nothing: a goodbye, or a connection the node no longer counts on (its peer was
    /// forgotten or expected again with a new secret).
    Quiet,
    /// The peer's live link broke: the peer is lost.
    Lost,
}

#[derive(Debug)]
struct Known {
    secret: LinkSecret,
    /// A live incoming connection per lane (`Lane::Data`, `Lane::Control`).
    live: [bool; 2],
}

/// The peers this node accepts links from.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    known: BTreeMap<String, Known>,
}

fn index(lane: Lane) -> usize {
    match lane {
        Lane::Data => 0,
        Lane::Control => 1,
    }
}

impl Peers {
    /// Accepts links from `node` that prove themselves with `secret` from now on. The same
    /// secret again changes nothing; a new one makes the node's earlier connections stale.
    pub fn expect(&mut self, node: &str, secret: LinkSecret) {
        match self.known.get_mut(node) {
            Some(known) if known.secret == secret => {}
            _ => {
                self.known.insert(
                    node.to_string(),
                    Known {
                        secret,
                        live: [false; 2],
                    },
                );
            }
        }
    }

    /// Accepts no more links from `node`; its open connections become stale.
    pub fn forget(&mut self, node: &str) {
        self.known.remove(node);
    }

    /// Checks a hello: `node` must be known, say its secret, and have no live connection on
    /// `lane` (a second one neither replaces nor condemns the first).
    pub fn admit(
        &mut self,
        node: &str,
        lane: Lane,
        secret: LinkSecret,
    ) -> Result<Admitted, Refusal> {
        let Some(known) = self.known.get_mut(node) else {
            return Err(Refusal::Unknown(node.to_string()));
        };
        if known.secret != secret {
            return Err(Refusal::WrongSecret(node.to_string()));
        }
        let live = &mut known.live[index(lane)];
        if *live {
            return Err(Refusal::LaneTaken {
                node: node.to_string(),
                lane,
            });
        }
        *live = true;
        Ok(Admitted {
            node: node.to_string(),
            lane,
            secret,
        })
    }

    /// An admitted connection ended: its lane is free again, and if it was the peer's live
    /// connection and broke, the peer is lost.
    pub fn closed(&mut self, conn: &Admitted, end: LinkEnd) -> Closed {
        let Some(known) = self.known.get_mut(&conn.node) else {
            return Closed::Quiet;
        };
        if known.secret != conn.secret {
            return Closed::Quiet;
        }
        known.live[index(conn.lane)] = false;
        match end {
            LinkEnd::Goodbye => Closed::Quiet,
            LinkEnd::Broken => Closed::Lost,
        }
    }
}

/// How many refused connections the log tells of: a flood of them (thousands of connections
/// that never say hello, or say it wrong) must not flood the log. The first [`Self::PER_WINDOW`]
/// of each minute are logged; the rest are counted, and the next one logged says how many.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    window_start: Instant,
    logged: u32,
    left_out: u64,
}

impl RefusalLog {
    const PER_WINDOW: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(60);

    pub fn new(now: Instant) -> Self {
        RefusalLog {
            window_start: now,
            logged: 0,
            left_out: 0,
        }
    }

    /// Whether a refusal at `now` is logged; if so, with how many were left out before it.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.window_start) >= Self::WINDOW {
            (self.window_start, self.logged) = (now, 0);
        }
        if self.logged == Self::PER_WINDOW {
            self.left_out += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: LinkSecret = LinkSecret([1; 16]);
    const S2: LinkSecret = LinkSecret([2; 16]);

    fn one_byte_off(s: LinkSecret, at: usize) -> LinkSecret {
        let mut bytes = s.0;
        bytes[at] ^= 0x80;
        LinkSecret(bytes)
    }

    #[test]
    fn only_a_known_node_with_its_secret_is_admitted() {
        let mut peers = Peers::default();
        assert_eq!(
            peers.admit("w2", Lane::Data, S1),
            Err(Refusal::Unknown("w2".into()))
        );
        peers.expect("w2", S1);
        assert_eq!(
            peers.admit("w3", Lane::Data, S1),
            Err(Refusal::Unknown("w3".into()))
        );
        for at in [0, 7, 15] {
            assert_eq!(
                peers.admit("w2", Lane::Data, one_byte_off(S1, at)),
                Err(Refusal::WrongSecret("w2".into()))
            );
        }
        assert_eq!(
            peers.admit("w2", Lane::Data, S2),
            Err(Refusal::WrongSecret("w2".into()))
        );
        let data = peers.admit("w2", Lane::Data, S1).unwrap();
        let control = peers.admit("w2", Lane::Control, S1).unwrap();
        assert_eq!((data.node.as_str(), data.lane), ("w2", Lane::Data));
        assert_eq!(control.lane, Lane::Control);
    }

    #[test]
    fn refusals_change_nothing() {
        let mut peers = Peers::default();
        peers.expect("w2", S1);
        let live = peers.admit("w2", Lane::Control, S1).unwrap();
        for _ in 0..3 {
            assert!(peers.admit("w2", Lane::Control, S2).is_err());
            assert!(peers.admit("w9", Lane::Control, S1).is_err());
        }
        // The data lane is still free, the control lane still taken by the live connection,
        // whose break is still the peer's loss.
        assert!(peers.admit("w2", Lane::Data, S1).is_ok());
        assert!(peers.admit("w2", Lane::Control, S1).is_err());
        assert_eq!(peers.closed(&live, LinkEnd::Broken), Closed::Lost);
    }

    #[test]
    fn a_second_connection_on_a_live_lane_neither_replaces_nor_condemns() {
        let mut peers = Peers::default();
        peers.expect("w2", S1);
        let first = peers.admit("w2", Lane::Data, S1).unwrap();
        assert_eq!(
            peers.admit("w2", Lane::Data, S1),
            Err(Refusal::LaneTaken {
                node: "w2".into(),
                lane: Lane::Data
            })
        );
        // The refused one was never admitted, so it has nothing to close; the first still
        // holds the lane, and its clean end frees it.
        assert_eq!(peers.closed(&first, LinkEnd::Goodbye), Closed::Quiet);
        let again = peers.admit("w2", Lane::Data, S1).unwrap();
        assert_eq!(peers.closed(&again, LinkEnd::Broken), Closed::Lost);
    }

    #[test]
    fn expecting_the_same_secret_again_keeps_live_lanes() {
        let mut peers = Peers::default();
        peers.expect("w2", S1);
        let live = peers.admit("w2", Lane::Data, S1).unwrap();
        peers.expect("w2", S1);
        assert!(peers.admit("w2", Lane::Data, S1).is_err());
        assert_eq!(peers.closed(&live, LinkEnd::Broken), Closed::Lost);
    }

    #[test]
    fn connections_of_a_forgotten_or_replaced_peer_are_stale() {
        let mut peers = Peers::default();
        peers.expect("w2", S1);
        let old = peers.admit("w2", Lane::Data, S1).unwrap();
        peers.forget("w2");
        assert_eq!(peers.closed(&old, LinkEnd::Broken), Closed::Quiet);
        assert!(peers.admit("w2", Lane::Data, S1).is_err());

        // A node that left and joins again under its name gets a new secret: the old
        // connection's break does not condemn the new node, nor does it free the new lane.
        peers.expect("w2", S1);
        let old = peers.admit("w2", Lane::Data, S1).unwrap();
        peers.expect("w2", S2);
        assert!(peers.admit("w2", Lane::Data, S1).is_err());
        let new = peers.admit("w2", Lane::Data, S2).unwrap();
        assert_eq!(peers.closed(&old, LinkEnd::Broken), Closed::Quiet);
        assert!(peers.admit("w2", Lane::Data, S2).is_err());
        assert_eq!(peers.closed(&new, LinkEnd::Broken), Closed::Lost);
    }

    #[test]
    fn a_goodbye_is_never_a_loss() {
        let mut peers = Peers::default();
        peers.expect("w2", S1);
        let conn = peers.admit("w2", Lane::Control, S1).unwrap();
        assert_eq!(peers.closed(&conn, LinkEnd::Goodbye), Closed::Quiet);
    }

    #[test]
    fn a_flood_of_refusals_is_logged_twenty_a_minute_then_counted() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(t0);
        let logged: Vec<Option<u64>> = (0..1000).map(|_| log.admit(t0)).collect();
        assert_eq!(logged.iter().filter(|l| l.is_some()).count(), 20);
        assert!(logged[..20].iter().all(|l| *l == Some(0)));
        // A minute later the next one is logged, saying how many were not.
        assert_eq!(log.admit(t0 + Duration::from_secs(59)), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(60)), Some(981));
        assert_eq!(log.admit(t0 + Duration::from_secs(61)), Some(0));
    }
}
