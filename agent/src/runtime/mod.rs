//! The pod runtime: images now; sandboxes, containers and logs to come (issue 4).

pub mod image;
