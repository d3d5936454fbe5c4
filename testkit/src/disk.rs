//! Disks of a test's own: a tmpfs (to fill) and a loop-device ext4 (to freeze).

use crate::process::run_ok;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for a test, unmounted (lazily if it is still busy) when dropped.
#[derive(Debug)]
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) on `path` (created if missing).
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// An ext4 file system on a loop device over a sparse file, mounted on `mnt`: a disk of our own
/// that [`LoopExt4::freeze`] can make hang (`fsfreeze`: every write and `fsync` on it blocks
/// until [`LoopExt4::thaw`], reads go on). Thawed, unmounted and detached when dropped.
#[derive(Debug)]
pub struct LoopExt4 {
    pub mnt: PathBuf,
    dev: String,
}

impl LoopExt4 {
    /// A `size_mib` MiB file system backed by `backing` (created), mounted on `mnt` (created).
    pub fn mount(backing: &Path, mnt: &Path, size_mib: u64) -> Result<LoopExt4, String> {
        let f =
            std::fs::File::create(backing).map_err(|e| format!("{}: {e}", backing.display()))?;
        f.set_len(size_mib << 20)
            .map_err(|e| format!("{}: {e}", backing.display()))?;
        drop(f);
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let disk = LoopExt4 {
            mnt: mnt.to_path_buf(),
            dev,
        };
        std::fs::create_dir_all(mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
        run_ok(&["mkfs.ext4", "-q", "-F", &disk.dev])?;
        run_ok(&["mount", &disk.dev, &mnt.to_string_lossy()])?;
        Ok(disk)
    }

    /// Makes every write to the file system block (`fsfreeze -f`).
    pub fn freeze(&self) -> Result<(), String> {
        run_ok(&["fsfreeze", "-f", &self.mnt.to_string_lossy()])
    }

    /// Lets blocked writes go on (`fsfreeze -u`).
    pub fn thaw(&self) -> Result<(), String> {
        run_ok(&["fsfreeze", "-u", &self.mnt.to_string_lossy()])
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = self.thaw();
        let m = self.mnt.to_string_lossy().into_owned();
        if run_ok(&["umount", &m]).is_err() {
            let _ = run_ok(&["umount", "-l", &m]);
        }
        let _ = run_ok(&["losetup", "-d", &self.dev]);
    }
}
