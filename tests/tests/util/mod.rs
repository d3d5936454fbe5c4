//! The shared test support (`testkit/`, crate `hotspare-testkit`), under the name the test
//! files use.
#![allow(unused_imports)]

pub use hotspare_testkit::*;
