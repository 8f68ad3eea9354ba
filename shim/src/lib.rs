//! kernlet's per-container reaper (`kernlet-shim`), and what it shares with the agent.
//!
//! The agent's shim (`kernlet internal shim`, the whole kernlet binary) sets a container
//! up with libcontainer and starts it; then, to cost the node little for the rest of the
//! container's life, it hands over to this small static binary by `exec` — the same
//! process, so the container stays its child and the private mount namespace (the
//! container's overlay root) stays alive. From then on the reaper copies the container's
//! output into its CRI log, relays attach sessions to its stdin or terminal, reaps it,
//! and records how it ended.
//!
//! - [`cri`]: the CRI log format and the writer with kubelet's size rotation;
//! - [`records`]: the files the shim leaves in the container's directory;
//! - [`tty`]: the frames attach sessions carry to a terminal container;
//! - [`reaper`]: the hand-over and the reaper's loop.

pub mod cri;
pub mod reaper;
pub mod records;
mod sys;
pub mod tty;
