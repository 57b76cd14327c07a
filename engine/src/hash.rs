//! The stable key hash that places keys in slots. Fixed forever: every node, process and build
//! must agree, so it is never `std`'s randomly seeded hasher.
//!
//! `stable_hash` is XXH3-64 with seed 0 (xxHash's `XXH3_64bits`); the test vectors below were
//! checked against the reference implementation (Python's `xxhash.xxh3_64_intdigest`).

/// XXH3-64 (seed 0) of the key bytes.
pub fn stable_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The slot of a key with hash `hash`, for a cluster of `n_slots` slots: `hash % n_slots`.
#[inline]
pub fn slot_of(hash: u64, n_slots: u32) -> u32 {
    // A 64-bit division costs tens of cycles on every message; for the usual power-of-two slot
    // count the remainder is a mask.
    if n_slots.is_power_of_two() {
        (hash & u64::from(n_slots - 1)) as u32
    } else {
        (hash % u64::from(n_slots)) as u32
    }
}

/// Re-mixes a stable hash for an in-memory table: all keys of one slot share `hash % n_slots`,
/// so the table must not index by the low bits directly (SplitMix64's finaliser).
pub fn table_hash(hash: u64) -> u64 {
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_test_vectors() {
        assert_eq!(stable_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(stable_hash(b"a"), 0xe6c6_32b6_1e96_4e1f);
        assert_eq!(stable_hash(b"the"), 0xcb12_8363_1cf3_3d7d);
        assert_eq!(stable_hash(b"quokka"), 0xe511_3e9e_041e_0115);
        assert_eq!(stable_hash(b"word => count"), 0x51b5_994e_8d7e_8518);
        let bytes: Vec<u8> = (0..64).collect();
        assert_eq!(stable_hash(&bytes), 0x6187_eb90_89b0_ed55);
    }

    #[test]
    fn slots_are_in_range_and_spread() {
        let n = 4096;
        let mut counts = vec![0u32; n as usize];
        for i in 0..409_600u32 {
            let s = slot_of(stable_hash(&i.to_le_bytes()), n);
            counts[s as usize] += 1;
        }
        // 100 keys per slot on average; a uniform hash keeps every slot well within 2x.
        assert!(
            counts.iter().all(|&c| (40..=170).contains(&c)),
            "{:?}",
            counts.iter().max()
        );
        assert_eq!(slot_of(u64::MAX, 7), (u64::MAX % 7) as u32);
        for n in [1, 2, 4096, 4095, 1 << 31, u32::MAX] {
            for h in [0, 1, 4095, 4096, 0xdead_beef_f00d_cafe, u64::MAX] {
                assert_eq!(slot_of(h, n), (h % u64::from(n)) as u32, "{h} % {n}");
            }
        }
    }

    #[test]
    fn table_hash_separates_keys_of_one_slot() {
        // Keys in one slot share low bits of their stable hash; the table hash must not.
        let hashes: Vec<u64> = (0..1000u64).map(|i| i << 12).collect();
        let mut low: Vec<u64> = hashes.iter().map(|&h| table_hash(h) & 1023).collect();
        low.sort_unstable();
        low.dedup();
        assert!(
            low.len() > 550,
            "only {} distinct buckets of 1024",
            low.len()
        );
    }
}
