//! Tests of the crate's internals, with the integration tests' helpers.

#[allow(unused_imports)]
#[path = "../../tests/common/mod.rs"]
mod common;
mod replicas;
