//! The link wire format: round trips, slot frames, and every malformed frame an error.

use super::*;
use crate::archive::SlotArchive;
use crate::migration::ChangePlan;
use crate::routing::Move;

fn samples() -> Vec<Wire> {
    let archive = SlotArchive {
        slot: 4095,
        entities: 2,
        checksum: 99,
        bytes: Payload::from(&[0; 100][..]).0,
        parts: vec![40, 100],
    };
    let plan = ChangePlan::new(
        1,
        &RoutingTable::uniform(3, 2),
        vec![vec![Move {
            slot: 1,
            from: 1,
            to: 2,
        }]],
        vec![0, 1, 2],
    );
    let core = |to, msg| Wire::Core { to, msg };
    vec![
        Wire::Hello {
            node: "w1".into(),
            lane: Lane::Control,
            token: "token".into(),
            secret: LinkSecret([7; 16]),
        },
        Wire::Admitted,
        Wire::Joined { node: "w3".into() },
        Wire::Bye,
        Wire::Batch {
            to: 3,
            from: 2,
            stage: 1,
            bytes: Payload::from(&[1, 2, 3][..]),
        },
        core(1, PeerMsg::Marker { from: 2, epoch: 7 }),
        core(1, PeerMsg::Handoff { from: 0, archive }),
        core(0, PeerMsg::HandoffAck { slots: vec![1, 2] }),
        core(2, PeerMsg::Prepare(plan)),
        core(
            0,
            PeerMsg::Hold {
                change: 3,
                at: vec![None, Some(1_767_225_600_000)],
            },
        ),
        core(1, PeerMsg::ChangeDone { from: 2, change: 3 }),
        core(
            0,
            PeerMsg::Recover {
                checkpoint: 12,
                lost: vec![("w3".into(), vec![5, 6])],
                streams: vec![(0, "b".into())],
            },
        ),
        core(
            2,
            PeerMsg::Stop {
                producers: vec![0, 1],
            },
        ),
        Wire::AddPeers {
            to: 0,
            peers: vec![(4, "w3".into())],
        },
        Wire::Event(CoreEvent::Failed {
            core: 1,
            error: "x".into(),
        }),
        Wire::Ask {
            id: 5,
            question: Question::Quiesce,
        },
        Wire::Ask {
            id: 6,
            question: Question::Expect(Member {
                name: "w3".into(),
                data_addr: "127.0.0.1:6001".into(),
                http: String::new(),
                cores: vec![4, 5],
                secret: LinkSecret([9; 16]),
            }),
        },
        Wire::Answer {
            id: 5,
            answer: Answer::Quiesced { open_sources: 2 },
        },
        Wire::Depart,
    ]
}

/// One frame as a link carries it.
fn frame(m: &Wire) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, m).unwrap();
    out
}

/// A frame around an arbitrary payload.
fn framed(payload: &[u8]) -> Vec<u8> {
    [&(payload.len() as u32).to_be_bytes()[..], payload].concat()
}

fn read_one(bytes: &[u8]) -> Result<Wire, WireError> {
    read(&mut &bytes[..], &mut AlignedVec::new(), MAX_LINK_FRAME)
}

#[test]
fn messages_round_trip() {
    let mut stream = Vec::new();
    for m in samples() {
        assert_eq!(read_one(&frame(&m)).unwrap(), m);
        write(&mut stream, &m).unwrap();
    }
    // Back to back on one stream, through one reused buffer.
    let (mut input, mut buf) = (&stream[..], AlignedVec::new());
    for m in samples() {
        assert_eq!(read(&mut input, &mut buf, MAX_LINK_FRAME).unwrap(), m);
    }
    assert!(matches!(
        read(&mut input, &mut buf, MAX_LINK_FRAME),
        Err(WireError::Closed)
    ));
    let j = JoinRequest {
        version: VERSION,
        node: "w2".into(),
        app: "word_count".into(),
        n_slots: 4096,
        cores: 1,
        data_addr: "127.0.0.1:6001".into(),
        http: String::new(),
        state_dir: false,
        state_path: String::new(),
    };
    assert_eq!(decode_join(&encode_join(&j)).unwrap(), j);
}

/// A handoff of slot 3 holding the key "k" with the count 7.
fn handoff_of_k() -> Wire {
    let mut entities = crate::store::SlotMemory::<u64>::of([(&b"k"[..], 7)]).into_slot();
    let archive = SlotArchive::write(3, &mut entities).unwrap();
    Wire::Core {
        to: 1,
        msg: PeerMsg::Handoff { from: 0, archive },
    }
}

#[test]
fn a_handoff_frame_becomes_the_slot_storage_as_it_was_read() {
    let sent = handoff_of_k();
    let mut buf = AlignedVec::new();
    let got = read(&mut &frame(&sent)[..], &mut buf, MAX_LINK_FRAME).unwrap();
    assert_eq!(got, sent);
    // The frame's buffer left with the archive (the link reads the next frame into a new
    // one): nothing was copied out of it.
    assert_eq!(buf.capacity(), 0);
    let Wire::Core {
        msg: PeerMsg::Handoff { archive, .. },
        ..
    } = got
    else {
        unreachable!()
    };
    let mut slot = archive.read::<u64>().unwrap();
    assert_eq!(slot.pairs(), [(b"k".to_vec(), 7)]);
}

#[test]
fn a_handoff_read_into_a_buffer_grown_by_a_larger_frame_is_copied_out_of_it() {
    let big = Wire::Batch {
        to: 0,
        from: 1,
        stage: 0,
        bytes: Payload::from(&[7; 300_000][..]),
    };
    let slot = handoff_of_k();
    let stream = [frame(&big), frame(&slot)].concat();
    let (mut input, mut buf) = (&stream[..], AlignedVec::new());
    assert_eq!(read(&mut input, &mut buf, MAX_LINK_FRAME).unwrap(), big);
    let grown = buf.capacity();
    assert_eq!(read(&mut input, &mut buf, MAX_LINK_FRAME).unwrap(), slot);
    // The slot did not keep 300 KB for its few bytes: the reader keeps its buffer.
    assert_eq!(buf.capacity(), grown);
}

#[test]
fn a_slot_header_that_does_not_match_its_frame_is_an_error() {
    let slot_frame = |len_says: u64, archive: &[u8]| {
        let header = archive_of(&Wire::Slot(SlotHeader {
            to: 1,
            from: 0,
            slot: 2,
            entities: 0,
            checksum: 0,
            len: len_says,
            parts: Vec::new(),
        }));
        let pad = archive.len().next_multiple_of(SLOT_PAD) - archive.len();
        let payload = [
            &MAGIC[..],
            &[VERSION],
            archive,
            &[0; SLOT_PAD][..pad],
            &header,
        ]
        .concat();
        framed(&payload)
    };
    assert!(read_one(&slot_frame(32, &[0; 32])).is_ok());
    for (len, archive) in [
        (33, &[0; 32][..]),
        (16, &[0; 32]),
        (u64::MAX, &[0; 32]),
        (1 << 40, &[]),
    ] {
        assert!(
            matches!(
                read_one(&slot_frame(len, archive)),
                Err(WireError::SlotLength { .. })
            ),
            "a header saying {len} bytes over {} bytes of archive",
            archive.len()
        );
    }
}

#[test]
fn malformed_frames_are_errors() {
    assert!(matches!(read_one(b""), Err(WireError::Closed)));
    assert!(matches!(
        read_one(b"\x00\x00"),
        Err(WireError::Frame(FrameError::Truncated { .. }))
    ));
    assert!(matches!(read_one(&framed(b"")), Err(WireError::Short(0))));
    assert!(matches!(
        read_one(&framed(b"QK\x01")),
        Err(WireError::BadMagic)
    ));
    assert!(matches!(read_one(&framed(b"QN")), Err(WireError::Short(2))));
    assert!(matches!(
        read_one(&framed(b"QN\x00abc")),
        Err(WireError::Version(0))
    ));
    assert!(matches!(
        read_one(&framed(b"QN\x01abc")),
        Err(WireError::Version(1))
    ));
    assert!(matches!(
        read_one(&framed(&[b'Q', b'N', VERSION])),
        Err(WireError::Invalid(_))
    ));
    assert!(matches!(
        read_one(&(MAX_LINK_FRAME as u32 + 1).to_be_bytes()),
        Err(WireError::Frame(FrameError::Oversized { len, .. })) if len == MAX_LINK_FRAME + 1
    ));
    assert!(matches!(decode_join(b"QK\x01"), Err(WireError::BadMagic)));
    assert!(matches!(
        decode_join(&[&b"QN"[..], &[VERSION], b"garbage!"].concat()),
        Err(WireError::Invalid(_))
    ));
    // Every truncation of every sample is refused, never a panic; so is every shortened
    // payload inside a whole frame.
    for m in samples() {
        let bytes = frame(&m);
        for cut in 0..bytes.len() {
            assert!(read_one(&bytes[..cut]).is_err());
        }
        let payload = &bytes[4..];
        for cut in 0..payload.len() {
            assert_ne!(read_one(&framed(&payload[..cut])).ok(), Some(m.clone()));
        }
    }
}

/// A frame that announces the maximum and then stops holds no more memory than it sent
/// (found by the probe of issue 14: 256 MiB per connection on the data port).
#[test]
fn an_announced_length_is_not_allocated_before_its_bytes_arrive() {
    let mut header = (MAX_LINK_FRAME as u32).to_be_bytes().to_vec();
    header.extend_from_slice(&[b'Q', b'N', VERSION]);
    header.extend_from_slice(&[0; 100]);
    let mut buf = AlignedVec::new();
    let read = read(&mut &header[..], &mut buf, MAX_LINK_FRAME);
    assert!(matches!(
        read,
        Err(WireError::Frame(FrameError::Truncated { .. }))
    ));
    assert!(
        buf.capacity() <= 2 * READ_CHUNK,
        "{} bytes held",
        buf.capacity()
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut x: u64 = 0x9e37_79b9;
    for len in 0..300 {
        let mut bytes = vec![b'Q', b'N', VERSION];
        bytes.extend((0..len).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        let _ = read_one(&framed(&bytes));
        let _ = read_one(&bytes);
        let _ = decode_join(&bytes);
        let _ = decode_welcome(&bytes);
    }
}

#[test]
fn link_secrets_are_random_unprinted_and_equal_only_whole() {
    let (a, b) = (LinkSecret::random().unwrap(), LinkSecret::random().unwrap());
    assert!(a != b);
    for at in 0..16 {
        let mut bytes = a.0;
        bytes[at] ^= 1;
        assert!(LinkSecret(bytes) != a);
    }
    let welcome = Welcome {
        cores: vec![2],
        members: vec![Member {
            name: "w1".into(),
            data_addr: "127.0.0.1:6001".into(),
            http: String::new(),
            cores: vec![0, 1],
            secret: a,
        }],
        table: TableWire::from(&RoutingTable::uniform(8, 2)),
        outputs: vec!["127.0.0.1:7002".into(), "127.0.0.1:7003".into()],
        run: 7,
        cluster: 0xc1,
        exactly_once: true,
        restore: 0,
        lost_streams: vec![(0, "b".into())],
    };
    let printed = format!("{welcome:?}");
    assert!(printed.contains("LinkSecret(..)"), "{printed}");
    assert!(!printed.contains(&format!("{:?}", a.0)), "{printed}");
    let back = decode_welcome(&encode_welcome(&welcome)).unwrap();
    assert!(back == welcome && back.members[0].secret == a);
}

#[test]
fn a_table_of_another_slot_count_is_refused() {
    let table = TableWire::from(&RoutingTable::uniform(8, 2));
    assert_eq!(table.to_table(8).unwrap(), RoutingTable::uniform(8, 2));
    assert!(matches!(
        table.to_table(4096),
        Err(WireError::SlotCount {
            got: 8,
            expected: 4096
        })
    ));
    let empty = TableWire {
        epoch: 0,
        owners: Vec::new(),
    };
    assert!(empty.to_table(0).is_err());
}
