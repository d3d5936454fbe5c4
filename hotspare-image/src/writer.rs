//! Encoding a checkpoint stream from page runs held in memory (the Copy strategy and tests).

use super::format::{encode_begin, frame_header, Begin, End, FrameKind, Run, PAGES_PER_FRAME};
use std::io::{self, Write};

/// Writes BEGIN, the runs as PAGES frames of at most [`PAGES_PER_FRAME`] pages (or one ZERO
/// frame each), and END. Returns the END written.
pub fn write_stream<'a>(
    w: &mut impl Write,
    begin: &Begin,
    runs: impl IntoIterator<Item = Run<'a>>,
) -> io::Result<End> {
    w.write_all(&encode_begin(begin))?;
    let page = begin.page_size as usize;
    let mut end = End {
        seq: begin.seq,
        ..End::default()
    };
    let mut frame =
        |w: &mut dyn Write, kind: FrameKind, parts: &[&[u8]], pages: usize| -> io::Result<()> {
            w.write_all(&frame_header(kind, parts))?;
            for p in parts {
                w.write_all(p)?;
                end.digest = crc32c::crc32c_append(end.digest, p);
            }
            end.page_frames += 1;
            end.pages += pages as u64;
            Ok(())
        };
    for run in runs {
        match run {
            Run::Data(addr, bytes) => {
                for (i, chunk) in bytes.chunks(PAGES_PER_FRAME * page).enumerate() {
                    let a = (addr + (i * PAGES_PER_FRAME * page) as u64).to_le_bytes();
                    frame(w, FrameKind::Pages, &[&a, chunk], chunk.len() / page)?;
                }
            }
            Run::Zero(addr, len) => {
                let (a, l) = (addr.to_le_bytes(), len.to_le_bytes());
                frame(w, FrameKind::Zero, &[&a, &l], len as usize / page)?;
            }
        }
    }
    let e = end.encode();
    w.write_all(&frame_header(FrameKind::End, &[&e]))?;
    w.write_all(&e)?;
    Ok(end)
}
