//! What the server does because of Hot Spare, besides its worker loop (`main.rs`): a
//! checkpoint stops the whole store (every shard lock), and the figures of `INFO hotspare` and
//! `HOTSPARE.CPT`. The interval timer, the per-write commits, the switchover watch and the
//! output commit are the library's (`hotspare::Checkpointer`, `hotspare::OutputCommit`).

use crate::commands::CptMode;
use crate::store::Store;
use hotspare::{Checkpointer, CptKind, HotSpare};

/// The checkpointer over the store: a checkpoint holds every shard lock, so it sees no command
/// half done.
pub fn checkpointer(hs: &HotSpare, store: &'static Store) -> Checkpointer {
    Checkpointer::new(hs, move |capture| {
        let _all = store.lock_all();
        capture()
    })
}

/// `HOTSPARE.CPT [FULL|NOWAIT]`: a checkpoint now; its statistics as JSON. Durable before the
/// reply, except with NOWAIT (then it is taken as the interval timer takes them: the caller is
/// stopped only for the capture).
pub fn cpt_now(cp: Option<&Checkpointer>, mode: CptMode) -> Result<String, String> {
    let cp = cp.ok_or("this server runs without Hot Spare (--plain)")?;
    let kind = match mode {
        CptMode::Durable => CptKind::Commit,
        CptMode::Full => CptKind::Full,
        CptMode::NoWait => CptKind::Interval,
    };
    let c = cp
        .checkpoint(kind)
        .map_err(|e| e.to_string())?
        .ok_or("no checkpoint was taken")?;
    let st = &c.stats;
    if mode != CptMode::NoWait {
        cp.hotspare()
            .wait_durable(st.seq)
            .map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "{{\"seq\":{},\"stopped_ms\":{:.3},\"query_ms\":{:.3},\"bytes\":{},\"pages\":{},\"full\":{},\"coalesced\":{}}}",
        st.seq,
        c.stopped.as_secs_f64() * 1e3,
        st.query.as_secs_f64() * 1e3,
        st.bytes,
        st.pages,
        st.full,
        st.coalesced
    ))
}

/// The `# Hotspare` section of `INFO` (`# Persistence` without Hot Spare).
pub fn info(cp: Option<&Checkpointer>, out: &mut String) {
    let Some(cp) = cp else {
        out.push_str("# Persistence\r\nhotspare:off\r\n\r\n");
        return;
    };
    let hs = cp.hotspare();
    let s = cp.statistics();
    let (stop, cap) = (s.stop_ms, s.capture_ms);
    let (backend, _) = hs.backend();
    let resumed = hs.resumed();
    out.push_str(&format!(
        "# Hotspare\r\nhotspare_backend:{backend:?}\r\nhotspare_durability:{}\r\nhotspare_pipeline_depth:{}\r\nhotspare_cpt_ms:{}\r\nhotspare_every_write:{}\r\nhotspare_checkpoints:{}\r\nhotspare_coalesced:{}\r\nhotspare_failed:{}\r\nhotspare_stop_ms_median:{:.3}\r\nhotspare_stop_ms_p99:{:.3}\r\nhotspare_stop_ms_max:{:.3}\r\nhotspare_capture_ms_median:{:.3}\r\nhotspare_capture_ms_p99:{:.3}\r\nhotspare_capture_ms_max:{:.3}\r\nhotspare_bytes_median:{}\r\nhotspare_full_image_bytes:{}\r\nhotspare_heap_used_bytes:{}\r\nhotspare_heap_in_use_bytes:{}\r\nhotspare_wire_bytes:{}\r\nhotspare_resumed:{}\r\nhotspare_resumed_seq:{}\r\nhotspare_restore_ms:{:.3}\r\n\r\n",
        hs.config().durability_level(),
        hs.config().depth(),
        cp.current_interval_ms(),
        u8::from(cp.is_every_write()),
        s.checkpoints,
        s.coalesced,
        s.failed,
        stop.median,
        stop.p99,
        stop.max,
        cap.median,
        cap.p99,
        cap.max,
        s.bytes_median,
        s.full_bytes,
        hs.heap().allocated_bytes(),
        // Allocated and not freed, the allocator's free lists walked (all its locks held for
        // the walk): after a FLUSHALL what a resumed server inherited, docs/library.md.
        hotspare::GlobalHeap::check().map_or(0, |st| st.in_use_bytes),
        hs.wire_bytes().unwrap_or(0),
        u8::from(resumed.is_some()),
        resumed.map_or(0, |r| r.seq),
        resumed.map_or(0.0, |r| r.restore_time.as_secs_f64() * 1e3),
    ));
}
