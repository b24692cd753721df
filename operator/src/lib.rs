//! lode's operator: `Supplier`, `ServiceModel` and `GatewayPool` into the objects that
//! run them. The pure part (`build`, `render`) turns custom resources into Kubernetes
//! objects; the controllers apply them and report status.

pub mod admin;
pub mod autoscale;
pub mod build;
pub mod controller;
pub mod leader;
pub mod outcomes;
pub mod render;
pub mod scheduler;
