//! The `full` backend: no tracking at all, every page of every range is reported every time.

use super::{BackendKind, Tracker};
use crate::dirty::RangeDirty;
use crate::error::Result;
use crate::range::Range;

pub(crate) struct Full;

impl Tracker for Full {
    fn kind(&self) -> BackendKind {
        BackendKind::Full
    }
    fn add(&mut self, _: Range) -> Result<()> {
        Ok(())
    }
    fn remove(&mut self, _: Range) -> Result<()> {
        Ok(())
    }
    fn harvest(&mut self, targets: &mut [RangeDirty]) -> Result<()> {
        for t in targets {
            t.pages.fill(true);
        }
        Ok(())
    }
}
