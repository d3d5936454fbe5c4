//! Integration tests that cross crate boundaries or drive the C ABI live in `tests/tests/`;
//! this library is empty on purpose.
