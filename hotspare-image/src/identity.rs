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

impl ExeId {
    /// This process's executable, hashed once per process.
    pub fn current() -> std::io::Result<ExeId> {
        static ID: OnceLock<Result<ExeId, String>> = OnceLock::new();
        ID.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            h.update_mmap("/proc/self/exe").map_err(|e| e.to_string())?;
            Ok(ExeId(*h.finalize().as_bytes()))
        })
        .clone()
        .map_err(|e| std::io::Error::other(format!("hashing /proc/self/exe: {e}")))
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
