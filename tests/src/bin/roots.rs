//! A program whose state's type is chosen at run time, for `Error::NoRoot`: one executable
//! (resume requires the same file, at the same addresses) serving one of three root types, as
//! a new version of a program whose state type changed would. `ROOTS_STATE`:
//!
//! * `v1` (default): `Mutex<v1::State>` through `HotSpare::serve`;
//! * `v2`: `Mutex<v2::State>` — the same fields, the same size and alignment, the same short
//!   name, only another module: what the type tag must still tell apart;
//! * `wide`: `Mutex<Wide>` (one more field) through `Builder::serve`.
//!
//! All three register the same worker, `main`, so that the root's type is the only thing a
//! resume with another one gets wrong. The worker appends `entry-<i>` to the state's list, one
//! durable commit each, and prints `CPT <len>` once it is durable; on a resume it first checks
//! the list (`RESUMED <len>`, or `CORRUPT <i>` and exit status 3) and with
//! `ROOTS_EXIT_ON_RESUME=1` exits there. `main` returns the library's error as it is (the
//! adoption of docs/library.md, `fn main() -> Result<(), hotspare::Error>`).

use hotspare::{HotSpare, Mutex};
use std::time::Duration;

#[global_allocator]
static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();

mod v1 {
    /// The first version's state.
    #[derive(Default)]
    pub struct State {
        pub entries: Vec<String>,
    }
}

mod v2 {
    /// The "next version's" state: identical layout, another type.
    #[derive(Default)]
    pub struct State {
        pub entries: Vec<String>,
    }
}

/// A state of another layout.
#[derive(Default)]
struct Wide {
    entries: Vec<String>,
    generation: u64,
}

trait Entries: Send + Sync + 'static {
    fn entries(&mut self) -> &mut Vec<String>;
}

impl Entries for v1::State {
    fn entries(&mut self) -> &mut Vec<String> {
        &mut self.entries
    }
}

impl Entries for v2::State {
    fn entries(&mut self) -> &mut Vec<String> {
        &mut self.entries
    }
}

impl Entries for Wide {
    fn entries(&mut self) -> &mut Vec<String> {
        self.generation += 1;
        &mut self.entries
    }
}

fn worker<S: Entries>(hs: &HotSpare, state: &Mutex<S>) {
    if hs.resumed().is_some() {
        let mut s = state.lock();
        let e = s.entries();
        if let Some(i) = e
            .iter()
            .enumerate()
            .position(|(i, v)| *v != format!("entry-{i}"))
        {
            println!("CORRUPT {i}");
            std::process::exit(3);
        }
        println!("RESUMED {}", e.len());
        if std::env::var_os("ROOTS_EXIT_ON_RESUME").is_some() {
            std::process::exit(0);
        }
    }
    loop {
        let (ticket, len) = {
            let mut s = state.lock();
            let e = s.entries();
            e.push(format!("entry-{}", e.len()));
            let len = e.len();
            (hs.commit().unwrap(), len)
        };
        hs.wait(ticket).unwrap();
        println!("CPT {len}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() -> Result<(), hotspare::Error> {
    match std::env::var("ROOTS_STATE").as_deref().unwrap_or("v1") {
        "v1" => HotSpare::serve("main", || Mutex::new(v1::State::default()), worker),
        "v2" => HotSpare::serve("main", || Mutex::new(v2::State::default()), worker),
        "wide" => HotSpare::builder()?
            .worker("main", |hs| {
                worker(
                    hs,
                    hs.heap().root::<Mutex<Wide>>().expect("checked by serve"),
                )
            })
            .serve(|| Mutex::new(Wide::default())),
        other => panic!("ROOTS_STATE={other}: v1, v2 or wide"),
    }
}
