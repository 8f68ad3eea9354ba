//! The image store through the `kernlet image` commands (root: layers keep their
//! owners, whiteouts are device nodes): real images built with umoci and skopeo,
//! overlay semantics of whiteouts, opaque directories and hard links, and a corpus of
//! hostile layers that must change nothing outside the store.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kernlet_tests::hygiene;
use kernlet_tests::oci::{RawTar, busybox_layout, write_layout};
use serde_json::Value;

fn workdir(label: &str) -> tempfile::TempDir {
    hygiene::sweep_once();
    tempfile::Builder::new()
        .prefix(&format!("{}-{label}-", hygiene::run_prefix()))
        .tempdir()
        .unwrap()
}

fn kernlet(store: &Path, args: &[&str]) -> Output {
    Command::new(kernlet_tests::simnode::kernlet_bin().unwrap())
        .args(["image"])
        .args(args)
        .arg("--image-dir")
        .arg(store)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn listed(store: &Path) -> Vec<Value> {
    serde_json::from_str::<Vec<Value>>(&ok(&kernlet(store, &["ls", "-o", "json"]))).unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn images_from_umoci_and_skopeo_import_list_share_layers_and_remove() {
    let w = workdir("img");
    let layout = busybox_layout(w.path(), "1.36").unwrap();
    let lay = layout.display().to_string();
    // The same image, recompressed with zstd and as an oci-archive.
    let zst = w.path().join("zst");
    let archive = w.path().join("bb.tar");
    for dest in [
        format!("oci:{}:1.36", zst.display()),
        format!(
            "oci-archive:{}:example.com/tools/bb:1.36",
            archive.display()
        ),
    ] {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", &format!("oci:{lay}:1.36"), &dest]);
        if dest.starts_with("oci:") {
            cmd.args(["--dest-compress-format", "zstd"]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = w.path().join("store");

    // A layout naming its image only by tag needs --name, and says so.
    let out = kernlet(&store, &["import", &lay]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name"));

    let gz = ok(&kernlet(&store, &["import", &lay, "--name", "busybox"]));
    assert!(
        gz.contains("imported docker.io/library/busybox:1.36 sha256:"),
        "{gz}"
    );
    ok(&kernlet(
        &store,
        &[
            "import",
            zst.to_str().unwrap(),
            "--name",
            "example.com/zst/bb",
        ],
    ));
    ok(&kernlet(&store, &["import", archive.to_str().unwrap()]));

    let list = listed(&store);
    let refs: Vec<String> = list
        .iter()
        .flat_map(|i| {
            i["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
        })
        .collect();
    for want in [
        "docker.io/library/busybox:1.36",
        "example.com/zst/bb:1.36",
        "example.com/tools/bb:1.36",
    ] {
        assert!(refs.contains(&want.to_string()), "{refs:?}");
    }
    // The gzip image and its archived copy are one image; the zstd one has its own
    // blob but the same diff ID, so one unpacked layer serves all three.
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(entries(&store.join("layers")).len(), 1);
    let layer = store
        .join("layers")
        .join(&entries(&store.join("layers"))[0]);
    let bb = std::fs::symlink_metadata(layer.join("bin/busybox")).unwrap();
    assert!(bb.is_file() && bb.mode() & 0o111 != 0);
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_to_string(layer.join("var/www/index.html")).unwrap(),
        "hello from kernlet\n"
    );
    let gz_image = list
        .iter()
        .find(|i| {
            i["references"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "docker.io/library/busybox:1.36")
        })
        .unwrap();
    assert_eq!(gz_image["image"]["run"]["cmd"], serde_json::json!(["sh"]));
    let table = ok(&kernlet(&store, &["ls"]));
    assert!(
        table.starts_with("IMAGE") && table.contains("example.com/zst/bb:1.36"),
        "{table}"
    );

    // Removing one name of a shared image keeps it; removing the last frees it.
    let out = ok(&kernlet(&store, &["rm", "busybox:1.36"]));
    assert!(
        out.contains("untagged docker.io/library/busybox:1.36") && !out.contains("deleted"),
        "{out}"
    );
    let out = ok(&kernlet(&store, &["rm", "example.com/tools/bb:1.36"]));
    assert!(out.contains("deleted sha256:"), "{out}");
    assert_eq!(
        entries(&store.join("layers")).len(),
        1,
        "the zstd image still uses the layer"
    );
    ok(&kernlet(&store, &["rm", "example.com/zst/bb:1.36"]));
    assert!(entries(&store.join("layers")).is_empty());
    assert!(entries(&store.join("blobs/sha256")).is_empty());
    assert!(entries(&store.join("tmp")).is_empty());
    let out = kernlet(&store, &["rm", "example.com/zst/bb:1.36"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not in the store"));
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn whiteouts_opaque_directories_and_hard_links_compose_in_overlayfs() {
    let w = workdir("wh");
    let lower = RawTar::new()
        .dir("a")
        .file("a/gone", b"1")
        .file("a/kept", b"2")
        .dir("d")
        .file("d/old", b"3")
        .finish();
    let upper = RawTar::new()
        .file("a/.wh.gone", b"")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"4")
        .file("a/f", b"linked")
        .hard_link("a/hl", "a/f")
        .char_device("dev-null", 1, 3)
        .finish();
    let layout = w.path().join("layout");
    write_layout(&layout, "t", &[lower, upper], &["sh"]).unwrap();
    let store = w.path().join("store");
    ok(&kernlet(
        &store,
        &[
            "import",
            layout.to_str().unwrap(),
            "--name",
            "example.com/wh",
        ],
    ));
    let image = &listed(&store)[0]["image"];
    let dirs: Vec<PathBuf> = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            store
                .join("layers")
                .join(&l["diff_id"].as_str().unwrap()[7..])
        })
        .collect();
    // In the upper layer: a 0:0 whiteout, the opaque xattr, one inode for the link,
    // and no device node.
    let wh = std::fs::symlink_metadata(dirs[1].join("a/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(kernlet::sys::fs::is_opaque(&dirs[1].join("d")));
    assert_eq!(
        std::fs::metadata(dirs[1].join("a/hl")).unwrap().ino(),
        std::fs::metadata(dirs[1].join("a/f")).unwrap().ino()
    );
    assert!(!dirs[1].join("dev-null").exists());

    // As overlayfs shows them to a container.
    let merged = w.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let opts = format!("lowerdir={}:{}", dirs[1].display(), dirs[0].display());
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .unwrap();
    let _m = Mounted(merged.clone());
    assert_eq!(entries(&merged.join("a")), ["f", "hl", "kept"]);
    assert_eq!(entries(&merged.join("d")), ["new"]);
    assert_eq!(
        std::fs::read_to_string(merged.join("a/hl")).unwrap(),
        "linked"
    );
}

#[test]
fn hostile_layers_are_refused_named_and_change_nothing_outside_the_store() {
    let w = workdir("hostile");
    // What an attack would aim at: a directory next to the store.
    let outside = w.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), "untouched").unwrap();
    let out_abs = outside.display().to_string();
    let store = w.path().join("store");
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            RawTar::new().file("../../outside/pwned", b"x").finish(),
            "climbs out of the layer",
        ),
        (
            "hardlink-out",
            RawTar::new()
                .hard_link("hl", &format!("{out_abs}/victim"))
                .finish(),
            "not a file of this layer",
        ),
        (
            "hardlink-dotdot",
            RawTar::new()
                .hard_link("hl", "../../outside/victim")
                .finish(),
            "not a file of this layer",
        ),
        (
            "hardlink-via-symlink",
            RawTar::new()
                .symlink("s", &out_abs)
                .hard_link("hl", "s/victim")
                .finish(),
            "not a file of this layer",
        ),
        (
            "whiteout-out",
            RawTar::new().file("../outside/.wh.victim", b"").finish(),
            "climbs out of the layer",
        ),
        (
            "dot-dotdot",
            RawTar::new().file("./a/../../outside/pwned", b"x").finish(),
            "climbs out of the layer",
        ),
        (
            "whiteout-dotdot",
            RawTar::new().dir("a").file("a/.wh...", b"").finish(),
            "",
        ),
        (
            "opaque-outside",
            RawTar::new().file("../outside/.wh..wh..opq", b"").finish(),
            "climbs out of the layer",
        ),
        (
            "hardlink-via-chain",
            RawTar::new()
                .symlink("a", "b")
                .symlink("b", &out_abs)
                .hard_link("hl", "a/victim")
                .finish(),
            "not a file of this layer",
        ),
        (
            "sparse-1t",
            RawTar::new().sparse_claim("big", 1 << 40).finish(),
            "claims 1099511627776 bytes",
        ),
    ];
    let mut tried = 0;
    for (label, layer, why) in corpus {
        tried += 1;
        let layout = w.path().join(format!("layout-{label}"));
        write_layout(&layout, "t", &[layer], &["sh"]).unwrap();
        let out = kernlet(
            &store,
            &[
                "import",
                layout.to_str().unwrap(),
                "--name",
                "example.com/evil",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{label} was accepted: {err}");
        assert!(
            err.contains("layer sha256:") && err.contains("entry") && err.contains(why),
            "{label}: {err}"
        );
        assert!(
            entries(&store.join("layers")).is_empty(),
            "{label} left a layer"
        );
        assert!(
            entries(&store.join("tmp")).is_empty(),
            "{label} left work files"
        );
        assert!(listed(&store).is_empty(), "{label} was recorded");
    }
    // Absolute names, and files written through symlinks that point outside, are
    // read inside the layer root (as containerd reads them): accepted, and the
    // directory they aim at is not touched.
    for (label, layer) in [
        (
            "absolute",
            RawTar::new()
                .file(&format!("{out_abs}/pwned"), b"x")
                .finish(),
        ),
        (
            "through-symlink",
            RawTar::new()
                .symlink("evil", &out_abs)
                .file("evil/pwned", b"x")
                .finish(),
        ),
        (
            "symlink-chain",
            RawTar::new()
                .symlink("a", "b")
                .symlink("b", "../../outside")
                .file("a/pwned", b"x")
                .finish(),
        ),
        (
            "whiteout-through-symlink",
            RawTar::new()
                .symlink("evil", &out_abs)
                .file("evil/.wh.victim", b"")
                .finish(),
        ),
        (
            "escaping-symlink",
            RawTar::new()
                .dir("a")
                .symlink("a/up", "../../outside")
                .file("a/up/pwned", b"x")
                .finish(),
        ),
    ] {
        tried += 1;
        let layout = w.path().join(format!("layout-{label}"));
        write_layout(&layout, "t", &[layer], &["sh"]).unwrap();
        let store = w.path().join(format!("store-{label}"));
        ok(&kernlet(
            &store,
            &[
                "import",
                layout.to_str().unwrap(),
                "--name",
                "example.com/aim",
            ],
        ));
    }
    assert_eq!(entries(&outside), ["victim"]);
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "untouched"
    );
    assert_eq!(
        std::fs::metadata(outside.join("victim")).unwrap().nlink(),
        1
    );

    // Device nodes are not refused, only left out (kernlet builds /dev itself).
    let layout = w.path().join("layout-devices");
    write_layout(
        &layout,
        "t",
        &[RawTar::new()
            .char_device("dev/kmem", 1, 2)
            .file("ok", b"fine")
            .finish()],
        &["sh"],
    )
    .unwrap();
    ok(&kernlet(
        &store,
        &[
            "import",
            layout.to_str().unwrap(),
            "--name",
            "example.com/devices",
        ],
    ));
    let layer = store
        .join("layers")
        .join(&entries(&store.join("layers"))[0]);
    assert!(!layer.join("dev/kmem").exists(), "device nodes are skipped");
    assert_eq!(std::fs::read_to_string(layer.join("ok")).unwrap(), "fine");
    tried += 1;
    println!("escape corpus, hostile layers: {tried} tried, 0 escaped");
}

/// The one layer a store holds after importing `layout` as `name`.
fn import_one(store: &Path, layout: &Path, name: &str) -> PathBuf {
    ok(&kernlet(
        store,
        &["import", layout.to_str().unwrap(), "--name", name],
    ));
    let layers = entries(&store.join("layers"));
    assert_eq!(layers.len(), 1, "{layers:?}");
    store.join("layers").join(&layers[0])
}

/// GNU tar's archive of the contents of `dir` (`./`-prefixed names) with `args`.
fn gnu_tar(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = kernlet_tests::succeeded(
        Command::new("tar")
            .args(args)
            .args(["--numeric-owner", "-C"])
            .arg(dir)
            .args(["-cf", "-", "."]),
    );
    out.stdout
}

fn meta(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A v2 file capability granting cap_net_bind_service (effective).
const CAP_NET_BIND_SERVICE: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Layers as real tools write them unpack as containerd unpacks them: umoci's entry
/// named `/`, GNU tar's `./` names, hard links across directories, GNU and PAX long
/// names, sparse files, symlinks above the layer root, set-id bits, extended
/// attributes (a file capability among them), zstd from skopeo, and hand-made shapes
/// (absolute names, symlinked parents of this layer).
#[test]
fn layers_real_tools_write_unpack_as_containerd_would() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = workdir("tools");
    let src = w.path().join("src");
    let long_dir = "d".repeat(120);
    for d in ["etc/deep", "a", "b", &format!("long/{long_dir}")] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("etc/deep/f"), "hi\n").unwrap();
    std::fs::set_permissions(
        src.join("etc/deep/f"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(src.join("etc/deep/f"), Some(1000), Some(1000)).unwrap();
    std::fs::write(src.join("a/f"), "shared").unwrap();
    std::fs::hard_link(src.join("a/f"), src.join("b/g")).unwrap();
    std::fs::write(src.join(format!("long/{long_dir}/file")), "long").unwrap();
    std::os::unix::fs::symlink("../../../etc/passwd", src.join("a/up")).unwrap();
    std::fs::write(src.join("setuid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("setuid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(src.join("cap"), "bind").unwrap();
    xattr::set(
        src.join("cap"),
        "security.capability",
        &CAP_NET_BIND_SERVICE,
    )
    .unwrap();
    xattr::set(src.join("cap"), "user.kltest", b"value").unwrap();
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    sparse.set_len(1 << 20).unwrap();
    drop(sparse);
    std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("sparse"))
        .map(|mut f| std::io::Write::write_all(&mut f, b"end\n"))
        .unwrap()
        .unwrap();

    // umoci insert: the layer starts with an entry named "/".
    let umoci = w.path().join("umoci");
    let layout = umoci.join("layout");
    let layout_s = layout.to_str().unwrap();
    kernlet_tests::succeeded(Command::new("umoci").args(["init", "--layout", layout_s]));
    let image = format!("{layout_s}:t");
    kernlet_tests::succeeded(Command::new("umoci").args(["new", "--image", &image]));
    kernlet_tests::succeeded(
        Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(src.join("etc"))
            .arg("/etc"),
    );
    let layer = import_one(&w.path().join("store-umoci"), &layout, "example.com/umoci");
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/deep/f")).unwrap(),
        "hi\n"
    );
    let m = meta(&layer.join("etc/deep/f"));
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1000, 1000));

    // GNU tar, GNU format: `./` names, a long name, a sparse file, a hard link across
    // directories, a symlink above the root, a set-uid file.
    let gnu = gnu_tar(&src, &["--format=gnu", "--sparse"]);
    let layout = w.path().join("layout-gnu");
    write_layout(&layout, "t", &[gnu], &["sh"]).unwrap();
    let layer = import_one(&w.path().join("store-gnu"), &layout, "example.com/gnu");
    let check_gnu_shapes = |layer: &Path| {
        assert_eq!(
            std::fs::read_to_string(layer.join("b/g")).unwrap(),
            "shared"
        );
        assert_eq!(
            meta(&layer.join("a/f")).ino(),
            meta(&layer.join("b/g")).ino()
        );
        assert_eq!(
            std::fs::read_to_string(layer.join(format!("long/{long_dir}/file"))).unwrap(),
            "long"
        );
        let sparse = std::fs::read(layer.join("sparse")).unwrap();
        assert_eq!(sparse.len(), (1 << 20) + 4);
        assert!(sparse[..1 << 20].iter().all(|b| *b == 0) && sparse.ends_with(b"end\n"));
        assert!(
            meta(&layer.join("sparse")).blocks() * 512 < 1 << 20,
            "the hole stays a hole"
        );
        assert_eq!(
            std::fs::read_link(layer.join("a/up")).unwrap(),
            Path::new("../../../etc/passwd"),
            "a symlink above the layer root is kept as written"
        );
        assert_eq!(meta(&layer.join("setuid")).mode() & 0o7777, 0o4755);
    };
    check_gnu_shapes(&layer);

    // The same layer recompressed with zstd by skopeo.
    let zstd = w.path().join("layout-zstd");
    kernlet_tests::succeeded(Command::new("skopeo").args([
        "copy",
        "--dest-compress",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}:t", layout.display()),
        &format!("oci:{}:t", zstd.display()),
    ]));
    let zlayer = import_one(&w.path().join("store-zstd"), &zstd, "example.com/zstd");
    assert_eq!(zlayer.file_name(), layer.file_name(), "the same diff ID");
    check_gnu_shapes(&zlayer);

    // GNU tar, PAX format with extended attributes: PAX long names, a file capability
    // and a user attribute.
    let pax = gnu_tar(&src, &["--format=posix", "--xattrs", "--xattrs-include=*"]);
    let layout = w.path().join("layout-pax");
    write_layout(&layout, "t", &[pax], &["sh"]).unwrap();
    let layer = import_one(&w.path().join("store-pax"), &layout, "example.com/pax");
    assert_eq!(
        std::fs::read_to_string(layer.join(format!("long/{long_dir}/file"))).unwrap(),
        "long"
    );
    assert_eq!(
        xattr::get(layer.join("cap"), "security.capability").unwrap(),
        Some(CAP_NET_BIND_SERVICE.to_vec()),
        "the file capability survives"
    );
    assert_eq!(
        xattr::get(layer.join("cap"), "user.kltest").unwrap(),
        Some(b"value".to_vec())
    );

    // Hand-made shapes: absolute names, parents that are symlinks of this layer
    // (relative, absolute, and one climbing above the root, which stops there).
    let layout = w.path().join("layout-raw");
    let raw = RawTar::new()
        .dir("/")
        .dir("/usr/lib")
        .file("/etc/abs", b"absolute")
        .symlink("lib", "usr/lib")
        .symlink("lib64", "/usr/lib")
        .symlink("up", "../../..")
        .file("lib/x/f", b"via relative")
        .file("lib64/y", b"via absolute")
        .file("up/etc/clamped", b"at the root")
        .hard_link("lib/hl", "/lib64/y")
        .finish();
    write_layout(&layout, "t", &[raw], &["sh"]).unwrap();
    let layer = import_one(&w.path().join("store-raw"), &layout, "example.com/raw");
    for (path, content) in [
        ("etc/abs", "absolute"),
        ("usr/lib/x/f", "via relative"),
        ("usr/lib/y", "via absolute"),
        ("etc/clamped", "at the root"),
        ("usr/lib/hl", "via absolute"),
    ] {
        assert_eq!(
            std::fs::read_to_string(layer.join(path)).unwrap(),
            content,
            "{path}"
        );
    }
    assert!(meta(&layer.join("lib")).file_type().is_symlink());
    assert!(!layer.join("x").exists() && !w.path().join("etc").exists());
}
