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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;

/// Bytes owned by the store's allocator.
pub type Bytes<A> = allocator_api2::vec::Vec<u8, A>;

/// A value and its expiry, in wall-clock milliseconds since the epoch (0: none). Wall-clock,
/// not a monotonic clock: it must mean the same after a failover to another process.
///
/// Both live in one allocation, expiry first: overwriting a value with one of the same length
/// (the common SET) and its expiry writes only that allocation — not the map's bucket, which
/// holds the vector's length. Every page written is a page the next incremental checkpoint
/// copies and a write-protection fault after it, so this halves both for such SETs.
#[derive(Debug)]
pub struct Value<A: Allocator> {
    buf: Bytes<A>,
}

const EXPIRY: usize = 8;

impl<A: Allocator> Value<A> {
    /// A value in `alloc`'s memory.
    pub fn new_in(data: &[u8], expire_at_ms: u64, alloc: A) -> Value<A> {
        let mut buf = Bytes::with_capacity_in(EXPIRY + data.len(), alloc);
        buf.extend_from_slice(&expire_at_ms.to_le_bytes());
        buf.extend_from_slice(data);
        Value { buf }
    }

    /// The string.
    pub fn data(&self) -> &[u8] {
        &self.buf[EXPIRY..]
    }

    /// Expiry time, ms since the epoch; 0 when the key does not expire.
    pub fn expire_at_ms(&self) -> u64 {
        u64::from_le_bytes(self.buf[..EXPIRY].try_into().expect("8 bytes"))
    }

    /// Sets the expiry (0: none); writes nothing when it is unchanged.
    pub fn set_expire_at_ms(&mut self, at: u64) {
        if self.expire_at_ms() != at {
            self.buf[..EXPIRY].copy_from_slice(&at.to_le_bytes());
        }
    }

    /// Replaces the string, in place when the length is the same.
    pub fn set_data(&mut self, data: &[u8]) {
        if self.buf.len() == EXPIRY + data.len() {
            self.buf[EXPIRY..].copy_from_slice(data);
        } else {
            self.buf.truncate(EXPIRY);
            self.buf.extend_from_slice(data);
        }
    }

    /// Appends to the string.
    pub fn append(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
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
    /// Set once any key was given an expiry: until then the expiry sweep has nothing to do.
    ttl_used: AtomicBool,
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
                Mutex::new(Map::with_capacity_and_hasher_in(
                    1,
                    StableHasher::default(),
                    alloc.clone(),
                ))
            }),
            alloc,
            cpt_ms: AtomicU64::new(cpt_ms),
            ttl_used: AtomicBool::new(false),
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

    /// A value in the store's memory.
    pub fn value(&self, data: &[u8], expire_at_ms: u64) -> Value<A> {
        Value::new_in(data, expire_at_ms, self.alloc.clone())
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

    /// Notes that some key has an expiry (the sweep then runs).
    pub fn note_ttl(&self) {
        self.ttl_used.store(true, Ordering::Relaxed);
    }

    /// Deletes the expired keys of shard `i`; how many. Lazy expiry alone would keep a key that
    /// expires and is never touched again forever: a cache would grow without bound. One shard
    /// at a time, so the lock is held for 1/64 of the key space (~1 ms at 10 M keys).
    pub fn sweep_shard(&self, i: usize, now: u64) -> usize {
        if !self.ttl_used.load(Ordering::Relaxed) {
            return 0;
        }
        let mut m = self.shards[i].lock();
        let before = m.len();
        m.retain(|_, v| alive(v, now));
        before - m.len()
    }

    /// Keys stored, including expired ones not yet deleted (as Redis's DBSIZE counts them);
    /// constant time.
    pub fn key_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Locks shard `i` alone (for scans).
    pub fn lock_shard(&self, i: usize) -> MutexGuard<'_, Map<A>> {
        self.shards[i].lock()
    }

    /// An empty map for shard replacement (FLUSHALL frees the old table's memory).
    pub fn empty_map(&self) -> Map<A> {
        // Never an empty map: hashbrown's empty map points into the executable (a static
        // control group), which is elsewhere after a resume (docs/library.md).
        Map::with_capacity_and_hasher_in(1, StableHasher::default(), self.alloc.clone())
    }
}

/// Looks `key` up in a locked shard, deleting it first if it has expired (Redis's lazy expiry).
pub fn live<'m, A: Allocator + Clone>(
    map: &'m mut Map<A>,
    key: &[u8],
    now: u64,
) -> Option<&'m mut Value<A>> {
    if map.get(key).is_some_and(|v| !alive(v, now)) {
        map.remove(key);
        return None;
    }
    map.get_mut(key)
}

/// Whether a value is still alive at `now`.
pub fn alive<A: Allocator>(v: &Value<A>, now: u64) -> bool {
    let at = v.expire_at_ms();
    at == 0 || at > now
}

#[cfg(test)]
mod tests {
    use super::*;
    use allocator_api2::alloc::Global;

    #[test]
    fn value_keeps_data_and_expiry_in_one_allocation() {
        let store = Store::new_in(Global, 0);
        let mut v = store.value(b"hello", 0);
        let addr = v.data().as_ptr();
        v.set_data(b"world");
        v.set_expire_at_ms(42);
        assert_eq!((v.data(), v.expire_at_ms()), (&b"world"[..], 42));
        assert_eq!(
            v.data().as_ptr(),
            addr,
            "a same-length SET is written in place"
        );
        v.set_data(b"longer value");
        v.append(b"!");
        assert_eq!((v.data(), v.expire_at_ms()), (&b"longer value!"[..], 42));
        v.set_data(b"");
        assert_eq!((v.data(), v.expire_at_ms()), (&b""[..], 42));
    }

    #[test]
    fn sweep_deletes_only_expired_keys() {
        let store = Store::new_in(Global, 0);
        for (k, at) in [(&b"old"[..], 5), (b"new", 500), (b"never", 0)] {
            store.shard(k).insert(store.key(k), store.value(b"v", at));
        }
        // Nothing is swept until some expiry was set through the store.
        assert_eq!(
            (0..SHARDS)
                .map(|i| store.sweep_shard(i, 100))
                .sum::<usize>(),
            0
        );
        store.note_ttl();
        assert_eq!(
            (0..SHARDS)
                .map(|i| store.sweep_shard(i, 100))
                .sum::<usize>(),
            1
        );
        assert_eq!(store.key_count(), 2);
        assert!(store.shard(b"old").get(&b"old"[..]).is_none());
        assert!(store.shard(b"never").get(&b"never"[..]).is_some());
    }
}
