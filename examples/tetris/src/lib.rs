//! The seed paper's showcase: a terminal Tetris whose state lives in checkpoint memory and that
//! keeps running on the spare when the primary is killed.
//!
//! [`game`] is the game itself, plain data with no pointers (so it can live in the checkpoint
//! heap as is). The terminal front end and the Hot Spare adaptation are `src/main.rs`; how to
//! run the two-terminal demo and what the adaptation cost is in `docs/tetris.md`.
#![deny(missing_docs)]

pub mod game;
