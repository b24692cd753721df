//! What the fleet's system tests share beyond `lode_testkit`.
#![allow(dead_code)]

use std::path::Path;

use lode_testkit::free_port;

/// Fleet options for a test: everything under `root`, every port free on loopback.
pub fn fleet_options(root: &Path) -> lode_fleet::FleetOptions {
    let mut o = lode_fleet::FleetOptions::new(root.to_path_buf(), lode_testkit::fleet_bins());
    let any = "127.0.0.1:0".parse().expect("addr");
    (o.api, o.rpc, o.grpc) = (any, any, any);
    o.gateway_port = free_port();
    o.relay_port = free_port();
    o
}
