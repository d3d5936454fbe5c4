//! Encoding a checkpoint stream from page runs held in memory (the Copy strategy and tests).

use super::format::{encode_begin, frame_header, Begin, End, FrameKind, PAGES_PER_FRAME};
use std::io::{self, Write};

/// Writes BEGIN, the runs as PAGES frames of at most [`PAGES_PER_FRAME`] pages, and END.
/// Returns the END written.
pub fn write_stream<'a>(
    w: &mut impl Write,
    begin: &Begin,
    runs: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> io::Result<End> {
    w.write_all(&encode_begin(begin))?;
    let page = begin.page_size as usize;
    let mut end = End {
        seq: begin.seq,
        ..End::default()
    };
    for (addr, bytes) in runs {
        for (i, chunk) in bytes.chunks(PAGES_PER_FRAME * page).enumerate() {
            let a = (addr + (i * PAGES_PER_FRAME * page) as u64).to_le_bytes();
            w.write_all(&frame_header(FrameKind::Pages, &[&a, chunk]))?;
            w.write_all(&a)?;
            w.write_all(chunk)?;
            end.digest = crc32c::crc32c_append(crc32c::crc32c_append(end.digest, &a), chunk);
            end.page_frames += 1;
            end.pages += (chunk.len() / page) as u64;
        }
    }
    let e = end.encode();
    w.write_all(&frame_header(FrameKind::End, &[&e]))?;
    w.write_all(&e)?;
    Ok(end)
}
