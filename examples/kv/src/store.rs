//! The key space: std `HashMap`s split into shards, each behind its own lock, as the CheckSync
//! thesis's server had bucket locks. Plain Rust: with `hotspare::GlobalHeap` as the global
//! allocator (`main.rs`) every map, key and value lives in the checkpoint heap; with `--plain`
//! the same code runs in ordinary memory.
//!
//! A checkpoint takes every shard lock ([`Store::lock_all`]), so it sees no command half done;
//! a command touching several keys takes their shards in ascending order, as `lock_all` does, so
//! neither can deadlock the other ([`Store::lock`]).

use hotspare::{Mutex, MutexGuard};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};

/// Number of shards (a power of two).
pub const SHARDS: usize = 64;

/// Bytes (keys, fields, members).
pub type Bytes = Box<[u8]>;

/// A hash.
pub type Hash = HashMap<Bytes, Vec<u8>>;
/// A list.
pub type List = VecDeque<Vec<u8>>;
/// A set.
pub type Set = HashSet<Bytes>;

/// A score ordered as Redis orders them (`-0` equals `0`; NaN is never stored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score(pub f64);
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .partial_cmp(&other.0)
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

/// A sorted set: members by (score, member) for ranges, and member → score for lookups.
#[derive(Debug, Default, Clone)]
pub struct ZSet {
    /// (score, member), in Redis's order.
    pub by_score: BTreeSet<(Score, Bytes)>,
    /// member → score.
    pub scores: HashMap<Bytes, f64>,
}

impl ZSet {
    /// Sets `member`'s score; whether it is new.
    pub fn insert(&mut self, member: &[u8], score: f64) -> bool {
        match self.scores.get_mut(member) {
            Some(s) => {
                if *s != score || s.is_sign_negative() != score.is_sign_negative() {
                    let key = (Score(*s), Bytes::from(member));
                    self.by_score.remove(&key);
                    *s = score;
                    self.by_score.insert((Score(score), key.1));
                }
                false
            }
            None => {
                let m = Bytes::from(member);
                self.by_score.insert((Score(score), m.clone()));
                self.scores.insert(m, score);
                true
            }
        }
    }

    /// Removes `member`; whether it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(s) => {
                self.by_score.remove(&(Score(s), Bytes::from(member)));
                true
            }
            None => false,
        }
    }

    /// Members.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// 0-based rank of `member` in ascending order (linear in the rank: a `BTreeSet` does not
    /// count).
    pub fn rank(&self, member: &[u8]) -> Option<usize> {
        let s = *self.scores.get(member)?;
        let key = (Score(s), Bytes::from(member));
        Some(self.by_score.range(..key).count())
    }
}

/// A value with its expiry.
#[derive(Debug, Clone)]
pub struct Obj<T> {
    /// Wall-clock ms since the epoch; 0: none.
    expire_at_ms: u64,
    /// The value.
    pub v: T,
}

/// A value, of any type, and its expiry in wall-clock milliseconds since the epoch (0: none).
/// Wall-clock, not a monotonic clock: it must mean the same after a failover to another process.
///
/// A string and its expiry live in one allocation, expiry first: overwriting a string with one of
/// the same length (the common SET) and its expiry writes only that allocation — not the map's
/// bucket, which holds the vector's length. Every page written is a page the next incremental
/// checkpoint copies and a write-protection fault after it, so this halves both for such SETs.
/// The other types are one boxed [`Obj`] each: their bucket holds a pointer that changes only
/// when the key is replaced.
#[derive(Debug, Clone)]
pub enum Value {
    /// A string: `[expiry, 8 bytes LE][bytes]`.
    Str(Vec<u8>),
    /// A hash.
    Hash(Box<Obj<Hash>>),
    /// A list.
    List(Box<Obj<List>>),
    /// A set.
    Set(Box<Obj<Set>>),
    /// A sorted set.
    ZSet(Box<Obj<ZSet>>),
}

const EXPIRY: usize = 8;

impl Value {
    /// A string value.
    pub fn str(data: &[u8], expire_at_ms: u64) -> Value {
        let mut buf = Vec::with_capacity(EXPIRY + data.len());
        buf.extend_from_slice(&expire_at_ms.to_le_bytes());
        buf.extend_from_slice(data);
        Value::Str(buf)
    }

    /// An empty value of the type `like` (a hash for `Value::Hash`, …), without expiry.
    pub fn hash() -> Value {
        Value::Hash(Box::new(Obj::new(Hash::new())))
    }
    /// An empty list.
    pub fn list() -> Value {
        Value::List(Box::new(Obj::new(List::new())))
    }
    /// An empty set.
    pub fn set() -> Value {
        Value::Set(Box::new(Obj::new(Set::new())))
    }
    /// An empty sorted set.
    pub fn zset() -> Value {
        Value::ZSet(Box::new(Obj::new(ZSet::default())))
    }

    /// `TYPE`'s name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
        }
    }

    /// Expiry time, ms since the epoch; 0 when the key does not expire.
    pub fn expire_at_ms(&self) -> u64 {
        match self {
            Value::Str(b) => u64::from_le_bytes(b[..EXPIRY].try_into().expect("8 bytes")),
            Value::Hash(o) => o.expire_at_ms,
            Value::List(o) => o.expire_at_ms,
            Value::Set(o) => o.expire_at_ms,
            Value::ZSet(o) => o.expire_at_ms,
        }
    }

    /// Sets the expiry (0: none); writes nothing when it is unchanged.
    pub fn set_expire_at_ms(&mut self, at: u64) {
        if self.expire_at_ms() == at {
            return;
        }
        match self {
            Value::Str(b) => b[..EXPIRY].copy_from_slice(&at.to_le_bytes()),
            Value::Hash(o) => o.expire_at_ms = at,
            Value::List(o) => o.expire_at_ms = at,
            Value::Set(o) => o.expire_at_ms = at,
            Value::ZSet(o) => o.expire_at_ms = at,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&[u8]> {
        match self {
            Value::Str(b) => Some(&b[EXPIRY..]),
            _ => None,
        }
    }

    /// Replaces the string, in place when the length is the same (a string only).
    pub fn set_data(&mut self, data: &[u8]) {
        let Value::Str(buf) = self else {
            *self = Value::str(data, self.expire_at_ms());
            return;
        };
        if buf.len() == EXPIRY + data.len() {
            buf[EXPIRY..].copy_from_slice(data);
        } else {
            buf.truncate(EXPIRY);
            buf.extend_from_slice(data);
        }
    }

    /// The string's bytes after the expiry, to change in place (a string only).
    pub fn str_mut(&mut self) -> Option<StrMut<'_>> {
        match self {
            Value::Str(buf) => Some(StrMut(buf)),
            _ => None,
        }
    }

    /// Whether a collection is empty (Redis deletes a key whose collection becomes empty).
    pub fn is_empty_collection(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::Hash(o) => o.v.is_empty(),
            Value::List(o) => o.v.is_empty(),
            Value::Set(o) => o.v.is_empty(),
            Value::ZSet(o) => o.v.len() == 0,
        }
    }

    /// Whether the value is still alive at `now`.
    pub fn alive(&self, now: u64) -> bool {
        let at = self.expire_at_ms();
        at == 0 || at > now
    }
}

impl<T> Obj<T> {
    fn new(v: T) -> Obj<T> {
        Obj { expire_at_ms: 0, v }
    }
}

/// A string's bytes, growable, the expiry kept in front.
pub struct StrMut<'a>(&'a mut Vec<u8>);

impl StrMut<'_> {
    /// Appends.
    pub fn append(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
    }
    /// The bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.0[EXPIRY..]
    }
    /// Grows (zero-filled) to `len` bytes if shorter.
    pub fn grow(&mut self, len: usize) {
        if self.0.len() < EXPIRY + len {
            self.0.resize(EXPIRY + len, 0);
        }
    }
}

/// One shard: its keys, and which of them clients WATCH. 56 bytes, so that the 64 shards with
/// their locks fill one page: a checkpoint takes (writes) every lock.
#[derive(Debug, Default)]
pub struct Shard {
    /// The keys.
    pub map: HashMap<Bytes, Value>,
    /// Watched keys: (watchers, version), or `None` while nobody watches a key of this shard. A
    /// modification of a watched key bumps its version; EXEC of a client that saw another
    /// version is aborted (Redis's `touchWatchedKey`). Boxed: 8 bytes in the shard instead of
    /// a `HashMap`'s 48 keeps the locks in one page.
    #[allow(clippy::box_collection)]
    watched: Option<Box<HashMap<Bytes, (u32, u64)>>>,
}

impl Shard {
    /// Notes that `key` was modified (for WATCH).
    pub fn touch(&mut self, key: &[u8]) {
        if let Some(w) = self.watched.as_mut().and_then(|w| w.get_mut(key)) {
            w.1 += 1;
        }
    }

    /// Starts watching `key`; its current version.
    pub fn watch(&mut self, key: &[u8]) -> u64 {
        let watched = self.watched.get_or_insert_with(Box::default);
        let w = watched.entry(Bytes::from(key)).or_insert((0, 0));
        w.0 += 1;
        w.1
    }

    /// The version of a watched key.
    pub fn version(&self, key: &[u8]) -> Option<u64> {
        self.watched.as_ref()?.get(key).map(|w| w.1)
    }

    /// Stops one watch of `key`.
    pub fn unwatch(&mut self, key: &[u8]) {
        let Some(watched) = self.watched.as_mut() else {
            return;
        };
        if let Some(w) = watched.get_mut(key) {
            w.0 -= 1;
            if w.0 == 0 {
                watched.remove(key);
            }
        }
        if watched.is_empty() {
            self.watched = None;
        }
    }

    /// Empties the shard (FLUSHALL), touching the watched keys that existed.
    pub fn flush(&mut self) {
        let Shard { map, watched } = self;
        for (k, w) in watched.iter_mut().flat_map(|w| w.iter_mut()) {
            if map.contains_key(k) {
                w.1 += 1;
            }
        }
        *map = HashMap::new();
    }

    /// Deletes the expired keys; how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let before = self.map.len();
        let Shard { map, watched } = self;
        map.retain(|k, v| {
            let keep = v.alive(now);
            if !keep {
                if let Some(w) = watched.as_mut().and_then(|w| w.get_mut(k)) {
                    w.1 += 1;
                }
            }
            keep
        });
        before - self.map.len()
    }
}

/// The shards, page-aligned: their locks, which every checkpoint takes, are one page.
#[derive(Debug)]
#[repr(C, align(4096))]
struct Shards([Mutex<Shard>; SHARDS]);

impl std::ops::Deref for Shards {
    type Target = [Mutex<Shard>; SHARDS];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// The whole key space plus the settings that must survive a failover.
#[derive(Debug)]
pub struct Store {
    shards: Shards,
    /// Picks a key's shard. Seeded apart from the maps' own `RandomState`s (with the same hash,
    /// every key of a shard would share the bits a map uses to pick buckets), and kept in the
    /// store so that a resumed server picks the same shards.
    shard_hash: RandomState,
    /// Set once any key was given an expiry: until then the expiry sweep has nothing to do.
    ttl_used: AtomicBool,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Locked shards, ascending: what one command (or one EXEC) may touch, and whether it wrote.
pub struct Locked<'a> {
    store: &'a Store,
    /// The one shard of a single-key command (no allocation, no hashing to find it again).
    one: Option<(usize, MutexGuard<'a, Shard>)>,
    /// Otherwise (shard number, guard), ascending by shard.
    guards: Vec<(usize, MutexGuard<'a, Shard>)>,
    /// The time the command runs at (ms since the epoch).
    pub now: u64,
    /// A key was modified ([`Locked::touch`]): with `--cpt-every-write` the reply waits.
    pub wrote: bool,
}

/// A key holds a value of another type than the command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongType;

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store {
            shards: Shards(std::array::from_fn(|_| Mutex::new(Shard::default()))),
            shard_hash: RandomState::new(),
            ttl_used: AtomicBool::new(false),
        }
    }

    /// The shard that holds `key`.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        (self.shard_hash.hash_one(key) as usize) & (SHARDS - 1)
    }

    /// Locks `want` (shard numbers, each once, ascending — `lock_all`'s order).
    pub fn lock(&self, want: &[bool; SHARDS]) -> Locked<'_> {
        let n = want.iter().filter(|w| **w).count();
        let mut guards = Vec::with_capacity(n);
        for (i, w) in want.iter().enumerate() {
            if *w {
                guards.push((i, self.shards[i].lock()));
            }
        }
        Locked {
            store: self,
            one: None,
            guards,
            now: now_ms(),
            wrote: false,
        }
    }

    /// Locks nothing (a command without keys).
    pub fn lock_none(&self) -> Locked<'_> {
        Locked {
            store: self,
            one: None,
            guards: Vec::new(),
            now: now_ms(),
            wrote: false,
        }
    }

    /// Locks the one shard of `key` (the common single-key command: no table of shards).
    pub fn lock_key(&self, key: &[u8]) -> Locked<'_> {
        let i = self.shard_of(key);
        Locked {
            store: self,
            one: Some((i, self.shards[i].lock())),
            guards: Vec::new(),
            now: now_ms(),
            wrote: false,
        }
    }

    /// Locks every shard, in ascending order: the store is then consistent and still.
    pub fn lock_all(&self) -> Vec<MutexGuard<'_, Shard>> {
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
        self.shards[i].lock().sweep(now)
    }

    /// Stores a preloaded string.
    pub fn preload(&self, key: &[u8], value: &[u8]) {
        let mut s = self.shards[self.shard_of(key)].lock();
        s.map.insert(Bytes::from(key), Value::str(value, 0));
    }
}

impl<'a> Locked<'a> {
    /// The store.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// The locked shard holding `key` (panics if it is not locked: a command table error).
    pub fn shard(&mut self, key: &[u8]) -> &mut Shard {
        if let Some((i, g)) = &mut self.one {
            debug_assert_eq!(
                *i,
                self.store.shard_of(key),
                "a key the command table does not name"
            );
            return g;
        }
        let i = self.store.shard_of(key);
        let at = self
            .guards
            .binary_search_by_key(&i, |g| g.0)
            .expect("the command table names this key");
        &mut self.guards[at].1
    }

    /// Every locked shard, ascending.
    pub fn shards(&mut self) -> impl Iterator<Item = (usize, &mut Shard)> + use<'_, 'a> {
        self.one
            .iter_mut()
            .chain(self.guards.iter_mut())
            .map(|(i, g)| (*i, &mut **g))
    }

    /// `key`'s value, deleting it first if it has expired (Redis's lazy expiry).
    pub fn get(&mut self, key: &[u8]) -> Option<&mut Value> {
        let now = self.now;
        let s = self.shard(key);
        if s.map.get(key).is_some_and(|v| !v.alive(now)) {
            s.map.remove(key);
            s.touch(key);
            return None;
        }
        s.map.get_mut(key)
    }

    /// `key`'s value as the type `f` picks, `Err` if it holds another type.
    pub fn get_as<T>(
        &mut self,
        key: &[u8],
        f: fn(&mut Value) -> Option<&mut T>,
    ) -> Result<Option<&mut T>, WrongType> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or(WrongType),
        }
    }

    /// `key`'s value as the type `f` picks, created empty (`make`) if missing.
    pub fn get_or_make<T>(
        &mut self,
        key: &[u8],
        make: fn() -> Value,
        f: fn(&mut Value) -> Option<&mut T>,
    ) -> Result<&mut T, WrongType> {
        if self.get(key).is_none() {
            self.shard(key).map.insert(Bytes::from(key), make());
        }
        let v = self.shard(key).map.get_mut(key).expect("just inserted");
        f(v).ok_or(WrongType)
    }

    /// Notes that `key` was modified: for WATCH, and for the reply's durability.
    pub fn touch(&mut self, key: &[u8]) {
        self.wrote = true;
        self.shard(key).touch(key);
    }

    /// Stores `v` at `key` (replacing any value).
    pub fn insert(&mut self, key: &[u8], v: Value) {
        if v.expire_at_ms() != 0 {
            self.store.note_ttl();
        }
        self.touch(key);
        let s = self.shard(key);
        match s.map.get_mut(key) {
            Some(old) => *old = v,
            None => {
                s.map.insert(Bytes::from(key), v);
            }
        }
    }

    /// Deletes `key`; its live value, if it had one.
    pub fn remove(&mut self, key: &[u8]) -> Option<Value> {
        self.get(key)?;
        self.touch(key);
        self.shard(key).map.remove(key)
    }

    /// Deletes `key` if its collection became empty (Redis keeps no empty collections).
    pub fn drop_if_empty(&mut self, key: &[u8]) {
        let s = self.shard(key);
        if s.map.get(key).is_some_and(Value::is_empty_collection) {
            s.map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_keeps_data_and_expiry_in_one_allocation() {
        let mut v = Value::str(b"hello", 0);
        let addr = v.as_str().unwrap().as_ptr();
        v.set_data(b"world");
        v.set_expire_at_ms(42);
        assert_eq!((v.as_str().unwrap(), v.expire_at_ms()), (&b"world"[..], 42));
        assert_eq!(
            v.as_str().unwrap().as_ptr(),
            addr,
            "a same-length SET is written in place"
        );
        v.set_data(b"longer value");
        v.str_mut().unwrap().append(b"!");
        assert_eq!(
            (v.as_str().unwrap(), v.expire_at_ms()),
            (&b"longer value!"[..], 42)
        );
        v.set_data(b"");
        assert_eq!((v.as_str().unwrap(), v.expire_at_ms()), (&b""[..], 42));
    }

    #[test]
    fn sixty_four_locked_shards_fill_one_page() {
        assert_eq!(std::mem::size_of::<Mutex<Shard>>() * SHARDS, 4096);
    }

    #[test]
    fn every_type_keeps_its_expiry() {
        for mut v in [Value::hash(), Value::list(), Value::set(), Value::zset()] {
            assert_eq!(v.expire_at_ms(), 0);
            v.set_expire_at_ms(7);
            assert_eq!(v.expire_at_ms(), 7);
            assert!(!v.alive(7) && v.alive(6));
        }
    }

    #[test]
    fn sweep_deletes_only_expired_keys_and_touches_watched_ones() {
        let store = Store::new();
        for (k, at) in [(&b"old"[..], 5), (b"new", 500), (b"never", 0)] {
            store
                .lock_key(k)
                .shard(k)
                .map
                .insert(k.into(), Value::str(b"v", at));
        }
        let v0 = store.lock_key(b"old").shard(b"old").watch(b"old");
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
        let mut l = store.lock_key(b"old");
        assert!(!l.shard(b"old").map.contains_key(&b"old"[..]));
        assert_ne!(l.shard(b"old").version(b"old"), Some(v0));
    }

    #[test]
    fn zset_orders_by_score_then_member() {
        let mut z = ZSet::default();
        assert!(z.insert(b"b", 1.0));
        assert!(z.insert(b"a", 1.0));
        assert!(z.insert(b"c", 0.5));
        assert!(!z.insert(b"c", 2.0));
        let order: Vec<&[u8]> = z.by_score.iter().map(|(_, m)| &m[..]).collect();
        assert_eq!(order, [&b"a"[..], b"b", b"c"]);
        assert_eq!(z.rank(b"c"), Some(2));
        assert!(z.remove(b"a") && !z.remove(b"a"));
        assert_eq!(z.len(), 2);
    }
}
