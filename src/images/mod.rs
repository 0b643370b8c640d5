//! Images: build contexts, content-addressed tags, builds through the Docker API, the project
//! image written by ferry, the serving image assembled from parts of its platform, and the
//! offline path (a base bootstrapped from Debian packages, Python wheels fetched on the host).

pub mod bootstrap;
pub mod build;
pub mod code;
pub mod context;
pub mod leftovers;
pub(crate) mod load;
pub mod push;
pub mod requirements;
pub mod runtime_parts;
pub mod serving;
pub mod venv;
pub mod wheels;
