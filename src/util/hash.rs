//! FNV-1a 64, the one small stable hash behind cache keys, model fingerprints, shard
//! assignment, `--organize` name suffixes and long folder names.
//!
//! Written out here rather than taken from a crate because its output is part of cliplabel's
//! file formats (shard assignment, cache keys, folder names): it must never change with a
//! dependency's version. It is not for security.

/// The FNV-1a offset basis: the state to start hashing from.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues FNV-1a 64 from state `h` over `bytes` (start with [`FNV_START`]).
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // Test vectors of the FNV reference (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a(b"", FNV_START), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", FNV_START), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar", FNV_START), 0x85944171f73967e8);
        // Hashing in pieces continues the same state.
        assert_eq!(
            fnv1a(b"bar", fnv1a(b"foo", FNV_START)),
            fnv1a(b"foobar", FNV_START)
        );
    }
}
