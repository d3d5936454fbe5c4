//! The key space: a `hashbrown` map split into shards, each behind its own lock, as the
//! CheckSync thesis's server had bucket locks. Generic over the allocator so that the very same
//! code runs with its table in the checkpoint heap (Hot Spare) or in ordinary memory (`--plain`).
//!
//! A checkpoint takes every shard lock ([`Store::lock_all`]), so it sees no command half done;
//! a command touching several keys takes their shards in ascending order, as `lock_all` does, so
//! neither can deadlock the other.

use allocator_api2::alloc::Allocator;
use hotspare::{Mutex, MutexGuard, StableHasher};
use std::hash::BuildHasher;
use std::sync::atomic::AtomicU64;

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;

/// Bytes owned by the store's allocator.
pub type Bytes<A> = allocator_api2::vec::Vec<u8, A>;

/// A value and its expiry, in wall-clock milliseconds since the epoch (0: none). Wall-clock,
/// not a monotonic clock: it must mean the same after a failover to another process.
#[derive(Debug)]
pub struct Value<A: Allocator> {
    /// The string.
    pub data: Bytes<A>,
    /// Expiry time, ms since the epoch; 0 when the key does not expire.
    pub expire_at_ms: u64,
}

/// A key. A newtype only so that the map can be searched with a plain `&[u8]` (allocator-api2's
/// `Vec` does not implement `Borrow<[u8]>`); hashes exactly as the slice does.
#[derive(Debug)]
pub struct Key<A: Allocator>(pub Bytes<A>);

// Written out: derives would demand `A: Eq + Hash` of the allocator.
impl<A: Allocator> PartialEq for Key<A> {
    fn eq(&self, other: &Self) -> bool {
        self.0[..] == other.0[..]
    }
}
impl<A: Allocator> Eq for Key<A> {}
impl<A: Allocator> std::hash::Hash for Key<A> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0[..].hash(state);
    }
}

impl<A: Allocator> std::borrow::Borrow<[u8]> for Key<A> {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// One shard's map.
pub type Map<A> = hashbrown::HashMap<Key<A>, Value<A>, StableHasher, A>;

/// The whole key space plus the settings that must survive a failover.
#[derive(Debug)]
pub struct Store<A: Allocator + Clone> {
    shards: [Mutex<Map<A>>; SHARDS],
    alloc: A,
    /// Checkpoint interval in ms (0: none); `CONFIG SET hotspare-cpt-ms` changes it and a
    /// resumed server keeps it.
    pub cpt_ms: AtomicU64,
}

/// Shard choice uses a hasher seeded differently from the maps': with the same hash, every key
/// of a shard would share the bits hashbrown uses to pick buckets and tags.
fn shard_hasher() -> StableHasher {
    StableHasher::with_seed(0x6b76_5f73_6861_7264)
}

/// The shard that holds `key`.
pub fn shard_of(key: &[u8]) -> usize {
    (shard_hasher().hash_one(key) as usize) & (SHARDS - 1)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<A: Allocator + Clone> Store<A> {
    /// An empty store whose memory comes from `alloc`.
    pub fn new_in(alloc: A, cpt_ms: u64) -> Store<A> {
        Store {
            shards: std::array::from_fn(|_| {
                Mutex::new(Map::with_hasher_in(StableHasher::default(), alloc.clone()))
            }),
            alloc,
            cpt_ms: AtomicU64::new(cpt_ms),
        }
    }

    /// Copies `b` into the store's memory.
    pub fn bytes(&self, b: &[u8]) -> Bytes<A> {
        let mut v = Bytes::with_capacity_in(b.len(), self.alloc.clone());
        v.extend_from_slice(b);
        v
    }

    /// Copies `k` into the store's memory as a key.
    pub fn key(&self, k: &[u8]) -> Key<A> {
        Key(self.bytes(k))
    }

    /// Locks the shard holding `key`.
    pub fn shard(&self, key: &[u8]) -> MutexGuard<'_, Map<A>> {
        self.shards[shard_of(key)].lock()
    }

    /// Locks the shards of all `keys` (each once, in ascending order); returns the guards
    /// indexed by shard number.
    pub fn lock_keys<'a>(
        &self,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<Option<MutexGuard<'_, Map<A>>>> {
        let mut want = [false; SHARDS];
        for k in keys {
            want[shard_of(k)] = true;
        }
        let mut guards: Vec<_> = (0..SHARDS).map(|_| None).collect();
        for (i, w) in want.iter().enumerate() {
            if *w {
                guards[i] = Some(self.shards[i].lock());
            }
        }
        guards
    }

    /// Locks every shard, in ascending order: the store is then consistent and still.
    pub fn lock_all(&self) -> Vec<MutexGuard<'_, Map<A>>> {
        self.shards.iter().map(|s| s.lock()).collect()
    }

    /// Locks shard `i` alone (for scans).
    pub fn lock_shard(&self, i: usize) -> MutexGuard<'_, Map<A>> {
        self.shards[i].lock()
    }

    /// An empty map for shard replacement (FLUSHALL frees the old table's memory).
    pub fn empty_map(&self) -> Map<A> {
        Map::with_hasher_in(StableHasher::default(), self.alloc.clone())
    }
}

/// Looks `key` up in a locked shard, deleting it first if it has expired (Redis's lazy expiry).
pub fn live<'m, A: Allocator + Clone>(
    map: &'m mut Map<A>,
    key: &[u8],
    now: u64,
) -> Option<&'m mut Value<A>> {
    if map
        .get(key)
        .is_some_and(|v| v.expire_at_ms != 0 && v.expire_at_ms <= now)
    {
        map.remove(key);
        return None;
    }
    map.get_mut(key)
}

/// Whether a value is still alive at `now`.
pub fn alive<A: Allocator>(v: &Value<A>, now: u64) -> bool {
    v.expire_at_ms == 0 || v.expire_at_ms > now
}
