//! kernlet: one daemon that makes a Linux machine a node of a stock Kubernetes cluster.
//!
//! The rooms are described in `DESIGN.md`: `config` (flags), `model` (pure translations),
//! `sys` (the only place that talks to the kernel), `node` (a node's flags and wiring). The
//! binary (`main.rs`, `cli/`) parses flags, prints views and hands over.
#![deny(unsafe_code)]

pub mod api;
pub mod bootstrap;
pub mod cleanup;
pub mod client;
pub mod config;
pub mod controllers;
pub mod cri;
pub mod csi;
pub mod daemon;
pub mod doctor;
pub mod eviction;
pub mod explain;
pub mod inspect;
pub mod json_http;
pub mod model;
pub mod node;
pub mod overlay_view;
pub mod podworker;
pub mod runtime;
pub mod services_view;
pub mod state;
pub mod status;
pub mod sys;
pub mod top;
pub mod volume_view;
