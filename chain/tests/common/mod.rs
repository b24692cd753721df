//! Fake nodes for the chain client tests.
#![allow(dead_code)]

pub mod comet_node;
pub mod grpc_node;
