//! Shared by the test programs in `src/bin/` and the integration tests in `tests/`: the
//! deterministic operation stream of `kvmodel` and the digest both sides compare.

/// The model of `kvmodel`'s operation stream.
pub mod model {
    /// splitmix64: the i-th random number of a seed.
    pub fn rand(seed: u64, i: u64) -> u64 {
        let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Anything that behaves like a map from u64 to u64.
    pub trait KvMap {
        /// Inserts or replaces.
        fn put(&mut self, k: u64, v: u64);
        /// Removes.
        fn del(&mut self, k: u64);
    }

    impl<S: std::hash::BuildHasher, A: allocator_api2::alloc::Allocator + Clone> KvMap
        for hashbrown::HashMap<u64, u64, S, A>
    {
        fn put(&mut self, k: u64, v: u64) {
            self.insert(k, v);
        }
        fn del(&mut self, k: u64) {
            self.remove(&k);
        }
    }

    impl KvMap for std::collections::BTreeMap<u64, u64> {
        fn put(&mut self, k: u64, v: u64) {
            self.insert(k, v);
        }
        fn del(&mut self, k: u64) {
            self.remove(&k);
        }
    }

    /// Operation `i` of stream `seed`: 3 in 4 insert, 1 in 4 remove, over 5000 keys (so the map
    /// grows, rehashes and shrinks through the run).
    pub fn apply(m: &mut impl KvMap, seed: u64, i: u64) {
        let r = rand(seed, i);
        let key = (r >> 8) % 5000;
        if r & 3 == 0 {
            m.del(key);
        } else {
            m.put(key, r);
        }
    }

    /// Order-independent digest of a map's contents.
    pub fn digest(entries: impl Iterator<Item = (u64, u64)>) -> u32 {
        let mut v: Vec<(u64, u64)> = entries.collect();
        v.sort_unstable();
        let mut c = 0;
        for (k, val) in v {
            c = crc32c::crc32c_append(c, &k.to_le_bytes());
            c = crc32c::crc32c_append(c, &val.to_le_bytes());
        }
        c
    }

    /// The model's digest after `n` operations.
    pub fn digest_after(seed: u64, n: u64) -> u32 {
        let mut m = std::collections::BTreeMap::new();
        for i in 0..n {
            apply(&mut m, seed, i);
        }
        digest(m.into_iter())
    }
}
