//! Pulling from real registries (Debian's docker-registry on SimNodes, root): a plain
//! HTTP one named insecure, and a TLS one with a private CA and htpasswd basic auth
//! whose image has zstd layers; pods run from both. Failures — no credentials, HTTPS
//! to a plain registry, a tampered blob, an unknown image — say what is wrong.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kernlet_tests::registry::Registry;
use kernlet_tests::simnode::{Lab, SimNode, kernlet_bin};
use serde_json::Value;

fn layouts(node: &SimNode) -> (std::path::PathBuf, std::path::PathBuf) {
    let work = node.dir("image-build");
    std::fs::create_dir_all(&work).unwrap();
    let gz = kernlet_tests::oci::busybox_layout(&work, "1.36").unwrap();
    let zst = work.join("zst");
    kernlet_tests::succeeded(
        Command::new("skopeo")
            .args(["copy", "--dest-compress-format", "zstd"])
            .arg(format!("oci:{}:1.36", gz.display()))
            .arg(format!("oci:{}:1.36", zst.display())),
    );
    (gz, zst)
}

fn credentials(node: &SimNode, reg: &Registry) -> std::path::PathBuf {
    let (u, p) = reg.login.clone().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let path = node.dir("state").join("registry-auth.json");
    std::fs::write(
        &path,
        serde_json::json!({"auths": {format!("https://{}", reg.addr): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    path
}

fn pod_running(node: &SimNode, name: &str) -> Option<Value> {
    let out = Command::new(kernlet_bin().unwrap())
        .args(["pods", "-o", "json", "--state-dir"])
        .arg(node.dir("state"))
        .output()
        .ok()?;
    let list: Value = serde_json::from_slice(&out.stdout).ok()?;
    list["items"]
        .as_array()?
        .iter()
        .find(|p| {
            p["metadata"]["name"] == name
                && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
        })
        .cloned()
}

#[test]
fn pods_run_from_a_plain_registry_and_a_tls_one_with_basic_auth() {
    let mut lab = Lab::new("reg").unwrap();
    let plain_node = lab.add_node("r1").unwrap();
    let tls_node = lab.add_node("r2").unwrap();
    let mut node = lab.add_node("n1").unwrap();
    let plain = Registry::start(&plain_node, None).unwrap();
    let tls = Registry::start(&tls_node, Some(("kltest", "s3cret-pw"))).unwrap();
    let (gz, zst) = layouts(&node);
    plain
        .push(&plain_node, &gz, "1.36", "library/busybox")
        .unwrap();
    tls.push(&tls_node, &zst, "1.36", "private/bb").unwrap();

    let manifests = node.dir("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("pods.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: plain, namespace: t}}\nspec:\n  containers:\n  - {{name: c, image: '{}/library/busybox:1.36', command: [sh, -c, 'echo plain; exec sleep 600']}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: plain2, namespace: t}}\nspec:\n  containers:\n  - {{name: c, image: '{}/library/busybox:1.36', command: [sh, -c, 'echo plain2; exec sleep 600']}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: private, namespace: t}}\nspec:\n  containers:\n  - {{name: c, image: '{}/private/bb:1.36', imagePullPolicy: Always, command: [sh, -c, 'echo private; exec sleep 600']}}\n",
            plain.addr, plain.addr, tls.addr
        ),
    )
    .unwrap();
    let creds = credentials(&node, &tls);
    let args = [
        "run".to_string(),
        "--standalone".into(),
        "--manifests".into(),
        manifests.display().to_string(),
        "--insecure-registry".into(),
        plain.addr.clone(),
        "--registry-ca".into(),
        tls.ca_file().display().to_string(),
        "--image-credentials".into(),
        creds.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node.start_kernlet(&args).unwrap();
    let start = Instant::now();
    while pod_running(&node, "plain").is_none()
        || pod_running(&node, "plain2").is_none()
        || pod_running(&node, "private").is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "pods from the registries did not run:\n{}\n{}\n{}",
            node.kernlet_log(),
            plain.log(),
            tls.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = pod_running(&node, "private").unwrap();
    assert_eq!(
        p["status"]["containerStatuses"][0]["image"],
        format!("{}/private/bb:1.36", tls.addr)
    );
    let log = node.kernlet_log();
    assert!(log.contains("pulled") && log.contains(&tls.addr), "{log}");
    // Basic credentials were needed and used.
    assert!(tls.log().contains("kltest"), "{}", tls.log());
    // Two pods of one image started together: one pull, the other reused it.
    let manifest_gets = plain
        .log()
        .lines()
        .filter(|l| {
            l.contains("response completed")
                && l.contains("http.request.method=GET")
                && l.contains("/v2/library/busybox/manifests/1.36")
        })
        .count();
    assert_eq!(manifest_gets, 1, "{}", plain.log());
}

fn pull(node: &SimNode, image: &str, extra: &[&str]) -> Output {
    pull_into(node, &node.dir("images"), image, extra)
}

fn pull_into(node: &SimNode, store: &std::path::Path, image: &str, extra: &[&str]) -> Output {
    node.command(kernlet_bin().unwrap())
        .args(["image", "pull", image, "--image-dir"])
        .arg(store)
        .args(extra)
        .output()
        .unwrap()
}

fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pull_failures_name_the_cause_and_the_fix() {
    let mut lab = Lab::new("regfail").unwrap();
    let plain_node = lab.add_node("f1").unwrap();
    let tls_node = lab.add_node("f2").unwrap();
    let node = lab.add_node("f3").unwrap();
    let plain = Registry::start(&plain_node, None).unwrap();
    let tls = Registry::start(&tls_node, Some(("kltest", "pw"))).unwrap();
    let (gz, _) = layouts(&node);
    plain
        .push(&plain_node, &gz, "1.36", "library/busybox")
        .unwrap();
    tls.push(&tls_node, &gz, "1.36", "private/bb").unwrap();

    // A multi-platform image (an OCI index) resolves to this machine's manifest, from
    // a layout and from a registry.
    let multi = node.dir("image-build").join("multi");
    kernlet_tests::oci::index_layout(&gz, &multi, "1.36").unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(gz.join("index.json")).unwrap()).unwrap();
    let amd64_manifest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out = node
        .command(kernlet_bin().unwrap())
        .args(["image", "import"])
        .arg(&multi)
        .args(["--name", "example.com/multi", "--image-dir"])
        .arg(node.dir("images"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", err(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&amd64_manifest));
    let mut push = plain_node.command("skopeo");
    push.args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1.36", multi.display()))
        .arg(format!("docker://{}/library/multi:1.36", plain.addr));
    let pushed = push.output().unwrap();
    assert!(pushed.status.success(), "{}", err(&pushed));
    let out = pull(
        &node,
        &format!("{}/library/multi:1.36", plain.addr),
        &["--insecure-registry", &plain.addr],
    );
    assert!(out.status.success(), "{}", err(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&amd64_manifest),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A plain registry over HTTPS: use --insecure-registry.
    let out = pull(&node, &format!("{}/library/busybox:1.36", plain.addr), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err(&out).contains(&format!("--insecure-registry {}", plain.addr)),
        "{}",
        err(&out)
    );

    // No credentials for the private registry.
    let ca = tls.ca_file().display().to_string();
    let out = pull(
        &node,
        &format!("{}/private/bb:1.36", tls.addr),
        &["--registry-ca", &ca],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(err(&out).contains("credentials"), "{}", err(&out));

    // An image the registry does not have.
    let insecure = ["--insecure-registry", plain.addr.as_str()];
    let out = pull(&node, &format!("{}/library/nope:1", plain.addr), &insecure);
    assert_eq!(out.status.code(), Some(1));
    assert!(err(&out).contains("is not in registry"), "{}", err(&out));

    // A tampered layer blob in the registry's storage is caught by its digest.
    let index: Value =
        serde_json::from_slice(&std::fs::read(gz.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(gz.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = plain.blob_file(layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    // Into an empty store (the other one has this layer already and would not fetch it).
    let out = pull_into(
        &node,
        &node.dir("images-clean"),
        &format!("{}/library/busybox:1.36", plain.addr),
        &insecure,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(err(&out).to_lowercase().contains("digest"), "{}", err(&out));
    let layers = std::fs::read_dir(node.dir("images-clean").join("layers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(layers, 0, "nothing of the tampered image was unpacked");
}
