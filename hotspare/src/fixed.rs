//! Code at fixed addresses (`fixed_addresses`, docs/library.md "Code at the same addresses"):
//! address-space randomisation turned off for this program by `personality(ADDR_NO_RANDOMIZE)`
//! and one re-execution at start-up.

/// The environment variable that marks a process as re-executed by [`fix_addresses`]: its value
/// is the pid (which `execve` keeps), so a child that inherits it is not fooled.
const REEXEC_VAR: &str = "HOTSPARE_NO_ASLR_PID";

/// Whether address-space randomisation applied to this process image.
fn randomised() -> bool {
    let system = std::fs::read_to_string("/proc/sys/kernel/randomize_va_space")
        .map(|s| s.trim() != "0")
        .unwrap_or(true);
    // SAFETY: 0xffffffff only queries the persona.
    let persona = unsafe { libc::personality(0xffff_ffff) };
    system && persona >= 0 && persona & libc::ADDR_NO_RANDOMIZE == 0
}

/// Makes this process run with its code and libraries at fixed addresses: if randomisation is
/// on, sets `ADDR_NO_RANDOMIZE` and re-executes `/proc/self/exe` with the same arguments and
/// environment (plus a marker), which does not return. In the re-executed process it clears the
/// flag again, so that programs this one starts are randomised as usual (the layout of a
/// process is chosen at its `execve`). Returns only when addresses are fixed, or with an error.
pub(crate) fn fix_addresses() -> Result<(), crate::Error> {
    let os = |what: &str| crate::Error::Os {
        what: what.to_owned(),
        source: std::io::Error::last_os_error(),
    };
    let me = std::process::id().to_string();
    // SAFETY: 0xffffffff only queries the persona.
    let persona = unsafe { libc::personality(0xffff_ffff) };
    if persona < 0 {
        return Err(os("personality(query)"));
    }
    let flag = libc::ADDR_NO_RANDOMIZE;
    if std::env::var_os(REEXEC_VAR).is_some_and(|v| v == me.as_str()) {
        if persona & flag == 0 {
            return Err(crate::Error::Config(
                "re-executed with ADDR_NO_RANDOMIZE, but the flag did not hold; set HOTSPARE_FIXED_ADDRESSES=off and run the program under `setarch -R`".into(),
            ));
        }
        // SAFETY: changes only the persona that later execve calls of this process use.
        unsafe { libc::personality((persona & !flag) as libc::c_ulong) };
        return Ok(());
    }
    if !randomised() {
        return Ok(());
    }
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| {
            crate::Error::Config("an argument or environment entry holds a NUL byte".into())
        })
    };
    let args: Vec<CString> = std::env::args_os()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != REEXEC_VAR)
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            cstr(&e)
        })
        .collect::<Result<_, _>>()?;
    env.push(cstr(format!("{REEXEC_VAR}={me}").as_bytes())?);
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: sets the persona the next execve uses.
    if unsafe { libc::personality((persona | flag) as libc::c_ulong) } < 0 {
        return Err(os("personality(ADDR_NO_RANDOMIZE) (turning address-space randomisation off; HOTSPARE_FIXED_ADDRESSES=off to skip)"));
    }
    // SAFETY: NUL-terminated argument and environment vectors of live CStrings.
    unsafe { libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let e = os("re-executing /proc/self/exe with address-space randomisation off");
    // SAFETY: restores the persona we found.
    unsafe { libc::personality(persona as libc::c_ulong) };
    Err(e)
}
