//! Resume refuses what it cannot honour, with one clear line, and leaves the image as it was:
//! an image for another executable, a range whose address is already taken, a missing image.

use std::path::Path;
use std::process::{Command, Output};

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
