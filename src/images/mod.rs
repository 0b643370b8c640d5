//! Images: build contexts, content-addressed tags, builds through the Docker API, and the
//! offline path (a base bootstrapped from Debian packages, Python wheels fetched on the host).

pub mod bootstrap;
pub mod build;
pub mod context;
pub mod push;
pub mod serving;
pub mod wheels;
