//! `cargo xtask vm-test`: cgroup v2 limit enforcement, tested in a small VM because
//! this host binds cpu/memory/pids to cgroup v1. Debian's cloud kernel (unpacked with
//! `dpkg -x`, never installed) boots under qemu (TCG) with an initramfs of busybox,
//! kernlet and `kernlet-vm-checks` (with the shared libraries they need), the busybox
//! image store, overlayfs and Debian's `apparmor_parser` (the kernel has AppArmor); the
//! init mounts cgroup2 and securityfs, enables +cpu +memory +pids,
//! moves to a tmpfs root (pivot_root cannot leave the initramfs), runs the checks and
//! powers off. Results are read from the serial console; a hard timeout bounds it.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(600);

fn run(cmd: &mut Command) -> Result<()> {
    super::run(cmd)
}

/// The unpacked cloud kernel: `(vmlinuz, modules dir)`.
fn kernel(vm: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = vm.join("kernel");
    let find = |dir: &Path| -> Option<(PathBuf, PathBuf)> {
        let boot = std::fs::read_dir(dir.join("boot")).ok()?;
        let vmlinuz = boot.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })?;
        let version = vmlinuz
            .file_name()?
            .to_string_lossy()
            .trim_start_matches("vmlinuz-")
            .to_string();
        Some((vmlinuz, dir.join("lib/modules").join(version)))
    };
    if let Some(k) = find(&dir) {
        return Ok(k);
    }
    // The versioned package the meta package points at.
    let depends = super::output_of("apt-cache", &["depends", "linux-image-cloud-amd64"])
        .context("apt-cache depends linux-image-cloud-amd64")?;
    let pkg = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .context("no kernel package behind linux-image-cloud-amd64")?
        .to_string();
    std::fs::create_dir_all(vm)?;
    run(Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(vm))?;
    let deb = std::fs::read_dir(vm)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("the kernel package was not downloaded")?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))?;
    let _ = std::fs::remove_file(&deb);
    find(&dir).context("no vmlinuz in the kernel package")
}

/// Debian's `apparmor_parser` (package `apparmor`, unpacked with `dpkg -x`, never
/// installed): the VM loads the profiles its AppArmor check needs with it.
fn apparmor_parser(vm: &Path) -> Result<PathBuf> {
    let dir = vm.join("apparmor");
    let parser = dir.join("sbin/apparmor_parser");
    if parser.exists() {
        return Ok(parser);
    }
    std::fs::create_dir_all(vm)?;
    run(Command::new("apt-get")
        .args(["download", "apparmor"])
        .current_dir(vm))?;
    let deb = std::fs::read_dir(vm)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("apparmor_"))
        })
        .context("the apparmor package was not downloaded")?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))?;
    let _ = std::fs::remove_file(&deb);
    Ok(parser)
}

/// Shared libraries a dynamically linked binary loads (from ldd).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = super::output_of("ldd", &[&binary.display().to_string()]).context("ldd")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn copy_into(root: &Path, src: &Path, dest: &str) -> Result<()> {
    let target = root.join(dest.trim_start_matches('/'));
    if let Some(p) = target.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::copy(src, &target).with_context(|| format!("copy {}", src.display()))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = e.file_type()?;
        let dest = to.join(e.file_name());
        if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dest)?;
        } else if t.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else if t.is_file() {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mkdir -p /newroot
mount -t tmpfs -o size=1500m root /newroot
for d in /*; do
  case "$d" in /newroot|/proc|/sys|/dev) ;; *) cp -a "$d" /newroot/ ;; esac
done
mkdir -p /newroot/proc /newroot/sys /newroot/dev
umount /proc
exec switch_root /newroot /init2
"#;

const INIT2: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /tmp /run /var/lib/kernlet /var/log/pods /etc
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t securityfs securityfs /sys/kernel/security
echo "+cpu +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
insmod /modules/overlay.ko
echo "nameserver 127.0.0.1" > /etc/resolv.conf
hostname kltest-vm
ip link set lo up
echo "KLTEST BOOTED $(uname -r)"
/bin/kernlet-vm-checks
poweroff -f
"#;

/// Writes `root` as an uncompressed newc cpio archive (what the kernel unpacks as its
/// initramfs).
fn cpio(root: &Path, out: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut ino = 1u32;
    let mut entry = |w: &mut dyn std::io::Write,
                     name: &str,
                     mode: u32,
                     data: &[u8]|
     -> Result<()> {
        let namesize = name.len() + 1;
        write!(
            w,
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            0
        )?;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        let pad = |n: usize| (4 - n % 4) % 4;
        w.write_all(&vec![0u8; pad(110 + namesize)])?;
        w.write_all(data)?;
        w.write_all(&vec![0u8; pad(data.len())])?;
        ino += 1;
        Ok(())
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = path.strip_prefix(root)?.display().to_string();
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_dir() {
                entry(&mut w, &name, 0o040000 | (meta.mode() & 0o7777), &[])?;
                stack.push(path);
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                entry(
                    &mut w,
                    &name,
                    0o120777,
                    target.as_os_str().as_encoded_bytes(),
                )?;
            } else if ft.is_file() {
                entry(
                    &mut w,
                    &name,
                    0o100000 | (meta.mode() & 0o7777),
                    &std::fs::read(&path)?,
                )?;
            }
        }
    }
    entry(&mut w, "TRAILER!!!", 0, &[])?;
    w.flush()?;
    Ok(())
}

pub fn vm_test() -> Result<()> {
    let vm_dir = std::env::current_dir()?.join("target/vm");
    let vm = vm_dir.as_path();
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        bail!(
            "qemu-system-x86_64 is missing; `cargo xtask setup` installs Debian's qemu-system-x86"
        );
    }
    let (vmlinuz, modules) = kernel(vm)?;
    run(super::cargo().args(["build", "--quiet", "--bins"]))?;
    let images = vm.join("images");
    super::import_busybox(&images, &vm.join("build"))?;
    let root = vm.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "modules", "images"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    copy_into(&root, Path::new("/bin/busybox"), "/bin/busybox")?;
    for bin in ["kernlet", "kernlet-vm-checks"] {
        let src = Path::new("target/debug").join(bin);
        run(Command::new("strip")
            .arg("-o")
            .arg(root.join("bin").join(bin))
            .arg(&src))?;
        for lib in libraries(&src)? {
            copy_into(&root, &lib, &lib.display().to_string())?;
        }
    }
    let parser = apparmor_parser(vm)?;
    copy_into(&root, &parser, "/bin/apparmor_parser")?;
    for lib in libraries(&parser)? {
        copy_into(&root, &lib, &lib.display().to_string())?;
    }
    copy_into(
        &root,
        &modules.join("kernel/fs/overlayfs/overlay.ko"),
        "/modules/overlay.ko",
    )?;
    copy_tree(&images, &root.join("images"))?;
    for (name, text) in [("init", INIT), ("init2", INIT2)] {
        std::fs::write(root.join(name), text)?;
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(root.join(name))?.permissions(),
            0o755,
        );
        let mut p = std::fs::metadata(root.join(name))?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
        std::fs::set_permissions(root.join(name), p)?;
    }
    let initramfs = vm.join("initramfs.cpio");
    cpio(&root, &initramfs)?;
    std::fs::remove_dir_all(&root)?;

    eprintln!("+ qemu-system-x86_64 (TCG) with {}", vmlinuz.display());
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut done = None;
    let mut console = Vec::new();
    while start.elapsed() < TIMEOUT {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                if line.contains("KLTEST") {
                    eprintln!("vm: {line}");
                }
                if let Some(rest) = line.split("KLTEST DONE ").nth(1) {
                    done = Some(rest.to_string());
                }
                console.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let Some(result) = done else {
        let tail: Vec<&String> = console.iter().rev().take(40).collect();
        bail!(
            "the VM did not finish within {TIMEOUT:?}; last console lines:\n{}",
            tail.into_iter()
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    };
    let failed: u32 = result
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    if failed > 0 {
        bail!("{failed} VM check(s) failed (see the KLTEST lines above)");
    }
    eprintln!("vm-test: all checks passed in {:?}", start.elapsed());
    Ok(())
}
