//! The seed paper's showcase: a terminal Tetris whose state lives in checkpoint memory and that
//! keeps running on the spare when the primary is killed.
//!
//! **Not built yet** (project issue 5; it needs the `hotspare` library of issue 3 first). This
//! empty crate only reserves the place the design gives it.
