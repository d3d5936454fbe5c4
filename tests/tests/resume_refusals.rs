//! Resume refuses what it cannot honour, with one clear line, and leaves the image as it was:
//! an image for another executable, a range whose address is already taken, a missing image,
//! a root object of another type than the program serves.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kvmodel(exe: &Path, dir: &Path, extra: &[(&str, &str)]) -> Output {
    Command::new(exe)
        .args(["5", "300", "10"])
        .env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .envs(extra.iter().copied())
        .output()
        .unwrap()
}

fn image_with_300_ops() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let out = kvmodel(Path::new(env!("CARGO_BIN_EXE_kvmodel")), t.path(), &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DONE 300"),
        "{out:?}"
    );
    t
}

fn resume_ok(dir: &Path) {
    let out = kvmodel(
        Path::new(env!("CARGO_BIN_EXE_kvmodel")),
        dir,
        &[
            ("HOTSPARE_RESUME", dir.to_str().unwrap()),
            ("KVMODEL_EXIT_ON_RESUME", "1"),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("RESUMED 300 "),
        "{out:?}"
    );
}

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn image_of_another_executable_is_refused() {
    let t = image_with_300_ops();
    // A copy of the same program with one byte appended: it runs the same, but is another file.
    let other = t.path().join("kvmodel-other");
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_kvmodel")).unwrap();
    bytes.push(0);
    std::fs::write(&other, bytes).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = kvmodel(
        &other,
        t.path(),
        &[("HOTSPARE_RESUME", t.path().to_str().unwrap())],
    );
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("image is for executable"),
        "{}",
        last_line(&out)
    );
    resume_ok(t.path());
}

#[test]
fn range_whose_address_is_taken_is_refused() {
    let t = image_with_300_ops();
    let out = kvmodel(
        Path::new(env!("CARGO_BIN_EXE_kvmodel")),
        t.path(),
        &[
            ("HOTSPARE_RESUME", t.path().to_str().unwrap()),
            ("KVMODEL_OCCUPY", "0x600000800000"),
        ],
    );
    assert!(!out.status.success());
    let line = last_line(&out);
    assert!(
        line.contains("range 0x600000000000+0x1000000 cannot be mapped back")
            && line.contains("already in use"),
        "{line}"
    );
    resume_ok(t.path());
}

#[test]
fn fresh_start_over_an_image_and_resume_without_one_are_refused() {
    let t = image_with_300_ops();
    let out = kvmodel(Path::new(env!("CARGO_BIN_EXE_kvmodel")), t.path(), &[]);
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("holds a checkpoint image (sequence 30)"),
        "{}",
        last_line(&out)
    );
    resume_ok(t.path());
    let empty = tempfile::tempdir().unwrap();
    let out = kvmodel(
        Path::new(env!("CARGO_BIN_EXE_kvmodel")),
        empty.path(),
        &[("HOTSPARE_RESUME", empty.path().to_str().unwrap())],
    );
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("no checkpoint image here"),
        "{}",
        last_line(&out)
    );
}

#[test]
fn heap_address_taken_at_fresh_start_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let out = kvmodel(
        Path::new(env!("CARGO_BIN_EXE_kvmodel")),
        t.path(),
        &[("KVMODEL_OCCUPY", "0x600000800000")],
    );
    assert!(!out.status.success());
    assert!(
        last_line(&out).contains("checkpoint heap 0x600000000000+0x1000000 cannot be reserved"),
        "{}",
        last_line(&out)
    );
}

/// `roots` (tests/src/bin/roots.rs) serving the root type `state`, with `extra` environment.
fn roots(dir: &Path, state: &str, extra: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roots"));
    c.env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("ROOTS_STATE", state)
        .envs(extra.iter().copied());
    c
}

/// Every file of the image directory but its lock (which holds the pid of its last user): its
/// path, length and CRC-32C.
fn image_files(dir: &Path) -> BTreeMap<PathBuf, (usize, u32)> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, (usize, u32)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                let bytes = std::fs::read(&p).unwrap();
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, (bytes.len(), crc32c::crc32c(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `Error::NoRoot`: an image whose root is a `Mutex<v1::State>`, taken by `HotSpare::serve` and
/// SIGKILLed mid-run, resumed by the same executable serving another root type — one of the
/// same layout and short name in another module (`v2::State`, through `HotSpare::serve`), and
/// one of another layout (`Wide`, through `Builder::serve`) — is refused: exit status 1, one
/// line on stderr naming the type and the refusal, no worker run (nothing on stdout), every
/// file of the image unchanged. The same executable has the same identity, code addresses,
/// worker names and metadata each time: only the root's type tag differs, so it is that check
/// which refuses. Then the right type resumes the image, every entry intact.
#[test]
fn a_root_of_another_type_is_refused_and_the_image_kept() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("image");
    let (mut child, rx) = util::spawn_lines(roots(&dir, "v1", &[]).stderr(Stdio::null()));
    // Killed in the middle of its commits, some 50 durable.
    let t0 = Instant::now();
    let mut durable = 0u64;
    while durable < 50 {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("roots: no CPT line within 20 s");
        if let Some(n) = l.strip_prefix("CPT ") {
            durable = n.parse().unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "roots: too slow");
    }
    child.signal(libc::SIGKILL);
    let _ = child.0.wait();
    // Recovery (a complete checkpoint not yet applied at the kill) is any resume's first step,
    // refused or not: run it here, so that the comparison below sees only what a refusal does.
    drop(hotspare_image::ImageDir::open(&dir).unwrap());
    let before = image_files(&dir);
    let resume = [("HOTSPARE_RESUME", dir.to_str().unwrap())];
    for (state, ty) in [
        ("v2", "hotspare::sync::Mutex<roots::v2::State>"),
        ("wide", "hotspare::sync::Mutex<roots::Wide>"),
    ] {
        let out = roots(&dir, state, &resume).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{state}: {out:?}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "Error: resume refused: the image has no root object of type {ty} (an image \
                 of another program, or of a version whose state type differs)"
            ),
            "{state}: not the one line expected"
        );
        assert!(out.stdout.is_empty(), "{state}: a worker ran: {out:?}");
        assert_eq!(
            image_files(&dir),
            before,
            "{state}: the refused resume changed the image"
        );
    }
    // The right type: the image as it was, every durable entry there and intact.
    let out = roots(&dir, "v1", &[resume[0], ("ROOTS_EXIT_ON_RESUME", "1")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let resumed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESUMED "))
        .unwrap_or_else(|| panic!("no RESUMED line: {out:?}"))
        .parse()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        resumed >= durable,
        "resumed {resumed} entries, {durable} were durable"
    );
}
