//! The `_IOC` encoding of ioctl request numbers (`include/uapi/asm-generic/ioctl.h`).
//!
//! x86_64 uses the generic layout: `dir << 30 | size << 16 | type << 8 | nr`.

/// `_IOC_WRITE`: user space writes the argument.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: the kernel writes the argument.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    // Sizes of ioctl arguments are 14-bit by construction; every caller passes a struct size.
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}

/// `_IOR(type, nr, T)`.
pub const fn ior(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}

/// `_IOWR(type, nr, T)`.
pub const fn iowr(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}
