//! The RESP2 client: the shared one of the tests and benchmarks (`hotspare-testkit`).

pub use hotspare_testkit::resp::{
    encode, info_f64, read_reply, Reply, RespConn as Conn, DEFAULT_TIMEOUT,
};
