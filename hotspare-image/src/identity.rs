//! The identity of the executable a checkpoint belongs to: BLAKE3 of `/proc/self/exe`; and,
//! for programs whose state points into code ([`crate::GlobalHeap`]), where the executable and
//! its libraries are loaded ([`loaded_objects`]) and the re-execution that keeps them there
//! (`fix_addresses`).
//!
//! Pointers in checkpoint memory (to functions, vtables, statics) are only meaningful to the
//! same binary, so an image records whose it is and resume refuses any other. A content hash,
//! not a path or inode, because the spare runs its own copy of the file.

use std::fmt;
use std::sync::OnceLock;

/// 32-byte BLAKE3 digest of an executable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExeId(pub [u8; 32]);

/// The environment variable through which a spare daemon hands the program it `exec`s the
/// identity it computed of that file beforehand ([`ExeId::of_file`]).
pub const EXE_ID_ENV: &str = "HOTSPARE_EXE_ID";

/// A file's version as `stat` tells it: device, inode, size, and the modification and change
/// times to the nanosecond. Any write to the file or replacement of it changes one of them (the
/// change time is set by the kernel and cannot be set back from user space).
fn file_version(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

static HANDED_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn hash_file(path: &std::path::Path) -> std::io::Result<ExeId> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(path)?;
    Ok(ExeId(*h.finalize().as_bytes()))
}

impl ExeId {
    /// This process's executable, hashed once per process — unless the spare daemon that
    /// `exec`ed it passed the hash of this very file version in [`EXE_ID_ENV`]. Hashing a
    /// 50 MB executable (a release build with debug information) took 20 ms of a 60 ms
    /// switchover, between `exec` and serving; the daemon hashes it long before.
    pub fn current() -> std::io::Result<ExeId> {
        static ID: OnceLock<Result<ExeId, String>> = OnceLock::new();
        ID.get_or_init(|| {
            if let Some(id) = Self::handed_down() {
                HANDED_DOWN.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(id);
            }
            hash_file(std::path::Path::new("/proc/self/exe")).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| std::io::Error::other(format!("hashing /proc/self/exe: {e}")))
    }

    /// Whether [`ExeId::current`] took the identity its spare daemon handed down instead of
    /// hashing the executable (for the resume's log line).
    pub fn was_handed_down() -> bool {
        HANDED_DOWN.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The identity in [`EXE_ID_ENV`], if it names the version of the file this process runs
    /// (`/proc/self/exe` is the inode `exec` loaded, whatever its path now names).
    fn handed_down() -> Option<ExeId> {
        let v = std::env::var(EXE_ID_ENV).ok()?;
        let me = std::fs::metadata("/proc/self/exe").ok()?;
        Self::for_version(&v, &me)
    }

    /// The identity in `value` (an [`ExeId::of_file`] answer) if it was taken of the file
    /// version `m`.
    fn for_version(value: &str, m: &std::fs::Metadata) -> Option<ExeId> {
        let (hex, version) = value.split_once(':')?;
        if file_version(m) != version || hex.len() != 64 {
            return None;
        }
        let mut id = [0u8; 32];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ExeId(id))
    }

    /// Whether `value` (an [`ExeId::of_file`] answer) was taken of the file now at `path`.
    pub fn names_file(value: &str, path: &std::path::Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| Self::for_version(value, &m).is_some())
    }

    fn token(&self, m: &std::fs::Metadata) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}:{}", file_version(m))
    }

    /// The identity of the executable at `path`, with its file version, as the value of
    /// [`EXE_ID_ENV`] for a program started from that file; `None` if the file changed while
    /// it was hashed, or had changed within the last second or two (its change time's clock is
    /// coarse, so a later write in the same tick could leave the version as it was).
    pub fn of_file(path: &std::path::Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let started = SystemTime::now();
        let before = std::fs::metadata(path).ok()?;
        let id = hash_file(path).ok()?;
        let after = std::fs::metadata(path).ok()?;
        let changed = UNIX_EPOCH + Duration::from_secs(u64::try_from(after.ctime()).ok()? + 1);
        let settled = started
            .duration_since(changed)
            .is_ok_and(|d| d >= Duration::from_secs(1));
        (file_version(&before) == file_version(&after) && settled).then(|| id.token(&after))
    }
}

impl fmt::Display for ExeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..12] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ExeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExeId({self})")
    }
}

/// An object of the process's code: the executable or a shared library, where it is loaded and
/// which build it is. Images of programs whose state may point into code and static data
/// (`GlobalHeap`) record every one, and resume refuses to run the state on other addresses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadedObject {
    /// Its path as the dynamic loader names it (empty for the executable).
    pub path: String,
    /// Its load bias (`dlpi_addr`): where its addresses start.
    pub base: u64,
    /// Its ELF build ID (`NT_GNU_BUILD_ID`), empty if it has none.
    pub build_id: Vec<u8>,
}

impl LoadedObject {
    /// The name it is matched by across machines: the file name (paths may differ); the
    /// executable's is empty.
    fn key(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }

    fn describe(&self) -> String {
        if self.path.is_empty() {
            "the executable".to_owned()
        } else {
            self.path.clone()
        }
    }
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "none".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The executable and the shared libraries loaded in this process, in the loader's order (the
/// vDSO, which the kernel provides, is left out).
pub fn loaded_objects() -> Vec<LoadedObject> {
    unsafe extern "C" fn one(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info and our `data`, a &mut Vec.
        let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<LoadedObject>>()) };
        let path = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: the loader's NUL-terminated name.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        };
        if path.starts_with("linux-vdso") || path.starts_with("linux-gate") {
            return 0;
        }
        let mut build_id = Vec::new();
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_NOTE {
                continue;
            }
            let start = (info.dlpi_addr + ph.p_vaddr) as usize;
            // SAFETY: a PT_NOTE segment of a loaded object is mapped readable at its address.
            let notes =
                unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
            if let Some(id) = gnu_build_id(notes) {
                build_id = id.to_vec();
                break;
            }
        }
        out.push(LoadedObject {
            path,
            base: info.dlpi_addr,
            build_id,
        });
        0
    }
    let mut out: Vec<LoadedObject> = Vec::new();
    // SAFETY: the callback only reads what the loader hands it and pushes into `out`.
    unsafe { libc::dl_iterate_phdr(Some(one), (&mut out as *mut Vec<LoadedObject>).cast()) };
    out
}

/// The descriptor of the `NT_GNU_BUILD_ID` note in a PT_NOTE segment's bytes.
fn gnu_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    let pad = |n: usize| n.next_multiple_of(4);
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (
            word(notes, 0)? as usize,
            word(notes, 4)? as usize,
            word(notes, 8)?,
        );
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + pad(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_at + pad(descsz)..)?;
    }
    None
}

/// Checks that every object of the image's code is loaded here at the same address and is the
/// same build; the first difference, as one line, otherwise.
pub fn compare_code(image: &[LoadedObject], here: &[LoadedObject]) -> Result<(), String> {
    for want in image {
        let Some(got) = here.iter().find(|o| o.key() == want.key()) else {
            return Err(format!(
                "{} was loaded at {:#x} when the image was taken and is not loaded here",
                want.describe(),
                want.base
            ));
        };
        if got.build_id != want.build_id {
            return Err(format!(
                "{} here is build {}, the image's is build {}",
                got.describe(),
                hex(&got.build_id),
                hex(&want.build_id)
            ));
        }
        if got.base != want.base {
            return Err(format!(
                "{} is loaded at {:#x} here but was at {:#x} when the image was taken",
                got.describe(),
                got.base,
                want.base
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handed-down identity counts only for the file version it was taken of: a write to the
    /// file (even of the same size) makes the program hash itself again.
    #[test]
    fn a_handed_down_identity_names_one_file_version() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("prog");
        std::fs::write(&p, b"version one").unwrap();
        let m = std::fs::metadata(&p).unwrap();
        let id = hash_file(&p).unwrap();
        let token = id.token(&m);
        assert_eq!(ExeId::for_version(&token, &m), Some(id));
        assert!(ExeId::names_file(&token, &p));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"version two").unwrap();
        let m2 = std::fs::metadata(&p).unwrap();
        assert_eq!(ExeId::for_version(&token, &m2), None);
        assert!(!ExeId::names_file(&token, &p));
        assert_eq!(ExeId::for_version("zz", &m), None);
        // Just written: a change within the change time's granularity could go unseen.
        assert_eq!(ExeId::of_file(&p), None);
    }

    #[test]
    fn this_process_has_an_executable_with_a_build_id_and_libc() {
        let objs = loaded_objects();
        assert!(objs[0].path.is_empty(), "{objs:?}");
        assert!(
            objs.iter().any(|o| o.key().starts_with("libc.so")),
            "{objs:?}"
        );
        assert!(objs.iter().all(|o| !o.path.contains("vdso")));
        let libc = objs
            .iter()
            .find(|o| o.key().starts_with("libc.so"))
            .unwrap();
        assert!(!libc.build_id.is_empty(), "Debian's libc has a build ID");
        assert_eq!(compare_code(&objs, &objs), Ok(()));
    }

    #[test]
    fn differences_are_named() {
        let exe = LoadedObject {
            path: String::new(),
            base: 0x5555_5555_4000,
            build_id: vec![1, 2],
        };
        let lib = LoadedObject {
            path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
            base: 0x7fff_f7c0_0000,
            build_id: vec![0xab],
        };
        let image = vec![exe.clone(), lib.clone()];
        let moved = vec![
            LoadedObject {
                base: 0x5600_0000_0000,
                ..exe.clone()
            },
            lib.clone(),
        ];
        let e = compare_code(&image, &moved).unwrap_err();
        assert!(
            e.contains("the executable is loaded at 0x560000000000 here but was at 0x555555554000"),
            "{e}"
        );
        let rebuilt = vec![
            exe.clone(),
            LoadedObject {
                path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
                build_id: vec![0xcd],
                ..lib.clone()
            },
        ];
        let e = compare_code(&image, &rebuilt).unwrap_err();
        assert!(
            e.contains("libc.so.6 here is build cd, the image's is build ab"),
            "{e}"
        );
        let e = compare_code(&image, std::slice::from_ref(&exe)).unwrap_err();
        assert!(e.contains("is not loaded here"), "{e}");
        // Another path for the same file name and extra libraries are fine.
        let mut more = image.clone();
        more[1].path = "/lib/x86_64-linux-gnu/libc.so.6".into();
        more.push(LoadedObject {
            path: "/usr/lib/libextra.so".into(),
            base: 1,
            build_id: vec![],
        });
        assert_eq!(compare_code(&image, &more), Ok(()));
    }

    #[test]
    fn build_id_notes_are_parsed_and_garbage_is_not() {
        let mut n = Vec::new();
        // An unrelated note first, then the build ID.
        n.extend_from_slice(&4u32.to_ne_bytes());
        n.extend_from_slice(&3u32.to_ne_bytes());
        n.extend_from_slice(&1u32.to_ne_bytes());
        n.extend_from_slice(b"GNU\0");
        n.extend_from_slice(&[9, 9, 9, 0]);
        n.extend_from_slice(&4u32.to_ne_bytes());
        n.extend_from_slice(&5u32.to_ne_bytes());
        n.extend_from_slice(&3u32.to_ne_bytes());
        n.extend_from_slice(b"GNU\0");
        n.extend_from_slice(&[1, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(gnu_build_id(&n), Some(&[1, 2, 3, 4, 5][..]));
        assert_eq!(gnu_build_id(&n[..30]), None);
        assert_eq!(gnu_build_id(&[0xff; 40]), None);
    }
}
