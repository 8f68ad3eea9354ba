//! `kernlet-shim <container dir>`: the reaper a container's shim becomes once the
//! container runs (see the crate's documentation). Its stderr is the shim's log.

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: kernlet-shim <container directory> (started by kernlet's shim)");
        std::process::exit(2);
    };
    if let Err(e) = kernlet_shim::reaper::run(std::path::Path::new(&dir)) {
        eprintln!("the reaper failed: {e}");
        std::process::exit(1);
    }
}
