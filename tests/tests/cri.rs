//! The CRI socket on a standalone node (root, SimNodes): a client built from the
//! upstream `runtime.v1` protos lists and inspects the node's sandboxes, containers,
//! stats and images, runs commands (ExecSync and the streaming URL, once per token),
//! reopens a moved log, pulls from and removes images of a real registry, and is
//! refused every write that would fight the pod manager. With `crictl` on the machine
//! (`$CRICTL`, the PATH or `$KUBEBUILDER_ASSETS`), the same answers go through it.

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kernlet::cri::proto;
use kernlet_tests::cri::{CriClient, crictl};
use kernlet_tests::registry::Registry;
use kernlet_tests::simnode::{Lab, SimNode};
use tokio_tungstenite::tungstenite::Message;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: t, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: talk
    image: busybox:1.36
    command: ["sh", "-c", "echo hello; echo oops >&2; while true; do echo tick; sleep 0.3; done"]
  - {name: sleeper, image: busybox:1.36, command: ["httpd", "-f", "-p", "8080", "-h", "/etc"]}
"#;

fn wait<T>(node: &SimNode, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}\n{}",
            node.kernlet_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the exec of a streaming URL over WebSocket (v5.channel.k8s.io) from the
/// node's network namespace: the frames by channel, or the HTTP refusal.
fn stream_exec(node: &SimNode, url: &str) -> Result<Vec<(u8, Vec<u8>)>, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let netns = std::path::PathBuf::from(format!("/run/netns/{}", node.netns));
    let url = url.to_string();
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let tcp = kernlet::sys::ns::connect_in(Some(&netns), addr, Duration::from_secs(5)).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let mut req = url
            .replace("http://", "ws://")
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v5.channel.k8s.io".parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
            match m {
                Message::Binary(b) if !b.is_empty() => frames.push((b[0], b[1..].to_vec())),
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = ws.close(None).await;
        Ok(frames)
    })
}

fn channel(frames: &[(u8, Vec<u8>)], ch: u8) -> String {
    frames
        .iter()
        .filter(|(c, _)| *c == ch)
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[test]
fn crictl_s_reads_exec_logs_and_images_work_on_the_cri_socket() {
    let mut lab = Lab::new("cri").unwrap();
    let reg_node = lab.add_node("r1").unwrap();
    let mut node = lab.add_node("c1").unwrap();
    node.import_busybox().unwrap();
    let registry = Registry::start(&reg_node, None).unwrap();
    let work = reg_node.dir("image-build");
    std::fs::create_dir_all(&work).unwrap();
    let layout = kernlet_tests::oci::busybox_layout(&work, "1.36").unwrap();
    registry
        .push(&reg_node, &layout, "1.36", "tools/bb")
        .unwrap();
    let manifests = node.dir("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("pods.yaml"), PODS).unwrap();
    let m = manifests.display().to_string();
    node.start_kernlet(&[
        "run",
        "--standalone",
        "--manifests",
        &m,
        "--insecure-registry",
        &registry.addr,
    ])
    .unwrap();
    let socket = node.dir("run").join("cri.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cri = wait(&node, "the CRI socket", || {
        rt.block_on(CriClient::connect(&socket)).ok()
    });
    // Both containers running.
    let list = |cri: &mut CriClient, filter: Option<proto::ContainerFilter>| {
        rt.block_on(
            cri.runtime
                .list_containers(proto::ListContainersRequest { filter }),
        )
        .unwrap()
        .into_inner()
        .containers
    };
    let running = proto::ContainerStateValue {
        state: proto::ContainerState::ContainerRunning as i32,
    };
    let filter = Some(proto::ContainerFilter {
        state: Some(running),
        ..Default::default()
    });
    let containers = wait(&node, "both containers running", || {
        let c = list(&mut cri, filter.clone());
        (c.len() == 2).then_some(c)
    });

    check_runtime(&rt, &mut cri);
    let sandbox_id = check_sandboxes(&rt, &mut cri);
    let talk = containers
        .iter()
        .find(|c| c.metadata.as_ref().unwrap().name == "talk")
        .unwrap();
    assert_eq!(talk.pod_sandbox_id, sandbox_id);
    assert_eq!(talk.labels["io.kubernetes.pod.name"], "web");
    assert_eq!(talk.labels["io.kubernetes.pod.namespace"], "t");
    assert_eq!(talk.labels["io.kubernetes.container.name"], "talk");
    let by_pod = list(
        &mut cri,
        Some(proto::ContainerFilter {
            pod_sandbox_id: sandbox_id[..8].to_string(),
            label_selector: [("io.kubernetes.container.name".into(), "sleeper".into())].into(),
            ..Default::default()
        }),
    );
    assert_eq!(by_pod.len(), 1, "{by_pod:?}");
    let log_path = check_container(&rt, &mut cri, &talk.id);
    check_exec(&rt, &mut cri, &node, &talk.id);
    check_stats(&rt, &mut cri, &sandbox_id);
    check_reopen(&rt, &mut cri, &node, &talk.id, &log_path);
    check_images(&rt, &mut cri, &registry);
    check_writes_refused(&rt, &mut cri);
    if let Some(crictl) = crictl() {
        check_crictl(&node, &crictl, &talk.id, &registry);
    } else {
        eprintln!("no crictl on this machine: the CRI was checked with the proto client only");
    }
    drop(registry);
}

fn check_runtime(rt: &tokio::runtime::Runtime, cri: &mut CriClient) {
    let v = rt
        .block_on(cri.runtime.version(proto::VersionRequest::default()))
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("kernlet", "v1")
    );
    let s = rt
        .block_on(cri.runtime.status(proto::StatusRequest { verbose: true }))
        .unwrap()
        .into_inner();
    let conditions = s.status.unwrap().conditions;
    let ready = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(ready.status);
    assert!(conditions.iter().any(|c| c.r#type == "NetworkReady"));
    assert!(s.info["config"].contains("streamServer"), "{:?}", s.info);
    assert!(s.features.unwrap().supplemental_groups_policy);
    let c = rt
        .block_on(cri.runtime.runtime_config(proto::RuntimeConfigRequest {}))
        .unwrap()
        .into_inner();
    assert_eq!(
        c.linux.unwrap().cgroup_driver,
        proto::CgroupDriver::Cgroupfs as i32
    );
}

/// The one sandbox, found whole, by a prefix of its ID and by label; its ID.
fn check_sandboxes(rt: &tokio::runtime::Runtime, cri: &mut CriClient) -> String {
    let mut list = |filter: Option<proto::PodSandboxFilter>| {
        rt.block_on(
            cri.runtime
                .list_pod_sandbox(proto::ListPodSandboxRequest { filter }),
        )
        .unwrap()
        .into_inner()
        .items
    };
    let all = list(None);
    assert_eq!(all.len(), 1, "{all:?}");
    let sb = &all[0];
    let meta = sb.metadata.as_ref().unwrap();
    assert_eq!((meta.name.as_str(), meta.namespace.as_str()), ("web", "t"));
    assert_eq!(sb.id, meta.uid, "the sandbox ID is the pod's UID");
    assert_eq!(sb.state, proto::PodSandboxState::SandboxReady as i32);
    assert_eq!(sb.labels["app"], "web");
    assert!(
        sb.created_at > 1_700_000_000_000_000_000,
        "{}",
        sb.created_at
    );
    let by = |labels: &[(&str, &str)]| proto::PodSandboxFilter {
        label_selector: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    assert_eq!(list(Some(by(&[("app", "web")]))).len(), 1);
    assert!(list(Some(by(&[("app", "other")]))).is_empty());
    let prefix = proto::PodSandboxFilter {
        id: sb.id[..6].to_string(),
        ..Default::default()
    };
    assert_eq!(list(Some(prefix)).len(), 1);
    let status = rt
        .block_on(
            cri.runtime
                .pod_sandbox_status(proto::PodSandboxStatusRequest {
                    pod_sandbox_id: sb.id[..6].to_string(),
                    verbose: true,
                }),
        )
        .unwrap()
        .into_inner();
    assert_eq!(status.status.as_ref().unwrap().id, sb.id);
    assert_eq!(status.containers_statuses.len(), 2);
    assert!(status.info["info"].contains("cgroup"), "{:?}", status.info);
    let missing = rt
        .block_on(
            cri.runtime
                .pod_sandbox_status(proto::PodSandboxStatusRequest {
                    pod_sandbox_id: "nosuchsandbox".into(),
                    verbose: false,
                }),
        )
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    sb.id.clone()
}

/// The container's status by a prefix of its ID; its log path.
fn check_container(rt: &tokio::runtime::Runtime, cri: &mut CriClient, id: &str) -> String {
    let s = rt
        .block_on(cri.runtime.container_status(proto::ContainerStatusRequest {
            container_id: id[..10].to_string(),
            verbose: true,
        }))
        .unwrap()
        .into_inner();
    let status = s.status.unwrap();
    assert_eq!(status.id, id);
    assert_eq!(status.state, proto::ContainerState::ContainerRunning as i32);
    assert!(status.started_at >= status.created_at && status.created_at > 0);
    assert!(status.image.unwrap().image.contains("busybox"));
    assert!(s.info["info"].contains("\"pid\""), "{:?}", s.info);
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(log.contains(" stdout F hello\n"), "{log}");
    assert!(log.contains(" stderr F oops\n"), "{log}");
    status.log_path
}

fn check_exec(rt: &tokio::runtime::Runtime, cri: &mut CriClient, node: &SimNode, id: &str) {
    let r = rt
        .block_on(cri.runtime.exec_sync(proto::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), "echo out; exit 7".into()],
            timeout: 10,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(r.exit_code, 7);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "out\n");
    let url = rt
        .block_on(cri.runtime.exec(proto::ExecRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), "echo streamed; hostname".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        }))
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let frames = stream_exec(node, &url).unwrap();
    assert_eq!(channel(&frames, 1), "streamed\nweb\n", "{frames:?}");
    assert!(channel(&frames, 3).contains("Success"), "{frames:?}");
    let again = stream_exec(node, &url).unwrap_err();
    assert!(again.contains("404"), "a token serves once: {again}");
    let url = rt
        .block_on(cri.runtime.attach(proto::AttachRequest {
            container_id: id.into(),
            stdout: true,
            stderr: true,
            ..Default::default()
        }))
        .unwrap()
        .into_inner()
        .url;
    assert!(url.contains("/attach/"), "{url}");
}

fn check_stats(rt: &tokio::runtime::Runtime, cri: &mut CriClient, sandbox: &str) {
    let all = rt
        .block_on(
            cri.runtime
                .list_container_stats(proto::ListContainerStatsRequest { filter: None }),
        )
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 2, "{all:?}");
    for s in &all {
        let cpu = s.cpu.as_ref().unwrap();
        assert!(
            cpu.timestamp > 0 && cpu.usage_core_nano_seconds.is_some(),
            "{s:?}"
        );
        assert!(
            s.writable_layer.as_ref().unwrap().used_bytes.is_some(),
            "{s:?}"
        );
    }
    let pods = rt
        .block_on(
            cri.runtime
                .list_pod_sandbox_stats(proto::ListPodSandboxStatsRequest { filter: None }),
        )
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].attributes.as_ref().unwrap().id, sandbox);
    assert_eq!(pods[0].linux.as_ref().unwrap().containers.len(), 2);
}

fn check_reopen(
    rt: &tokio::runtime::Runtime,
    cri: &mut CriClient,
    node: &SimNode,
    id: &str,
    log_path: &str,
) {
    let moved = format!("{log_path}.moved");
    std::fs::rename(log_path, &moved).unwrap();
    rt.block_on(
        cri.runtime
            .reopen_container_log(proto::ReopenContainerLogRequest {
                container_id: id.into(),
            }),
    )
    .unwrap();
    wait(node, "ticks in the reopened log", || {
        let text = std::fs::read_to_string(log_path).ok()?;
        text.contains(" stdout F tick\n").then_some(())
    });
    assert!(std::fs::read_to_string(&moved).unwrap().contains("hello"));
}

fn check_images(rt: &tokio::runtime::Runtime, cri: &mut CriClient, registry: &Registry) {
    let status = |cri: &mut CriClient, image: &str| {
        rt.block_on(cri.images.image_status(proto::ImageStatusRequest {
            image: Some(proto::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        }))
        .unwrap()
        .into_inner()
        .image
    };
    let busybox = status(cri, "busybox:1.36").expect("the imported busybox");
    assert!(
        busybox
            .repo_tags
            .iter()
            .any(|t| t.ends_with("busybox:1.36")),
        "{busybox:?}"
    );
    assert!(busybox.size > 0);
    let short = &busybox.id["sha256:".len().."sha256:".len() + 12];
    assert_eq!(
        status(cri, short).unwrap().id,
        busybox.id,
        "found by an ID prefix"
    );
    assert!(status(cri, "nosuch:1").is_none());
    let in_use = rt
        .block_on(cri.images.remove_image(proto::RemoveImageRequest {
            image: Some(proto::ImageSpec {
                image: "busybox:1.36".into(),
                ..Default::default()
            }),
        }))
        .unwrap_err();
    assert_eq!(in_use.code(), tonic::Code::FailedPrecondition, "{in_use:?}");
    let pulled_name = format!("{}/tools/bb:1.36", registry.addr);
    let pulled = rt
        .block_on(cri.images.pull_image(proto::PullImageRequest {
            image: Some(proto::ImageSpec {
                image: pulled_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap()
        .into_inner()
        .image_ref;
    assert!(pulled.starts_with("sha256:"), "{pulled}");
    let listed = rt
        .block_on(
            cri.images
                .list_images(proto::ListImagesRequest { filter: None }),
        )
        .unwrap()
        .into_inner()
        .images;
    assert!(
        listed.iter().any(|i| i.repo_tags.contains(&pulled_name)),
        "{listed:?}"
    );
    rt.block_on(cri.images.remove_image(proto::RemoveImageRequest {
        image: Some(proto::ImageSpec {
            image: pulled_name.clone(),
            ..Default::default()
        }),
    }))
    .unwrap();
    // busybox is the same image under another name: in use, it stays.
    assert!(status(cri, "busybox:1.36").is_some());
    let fs = rt
        .block_on(
            cri.images
                .image_fs_info(proto::ImageFsInfoRequest::default()),
        )
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.unwrap().value > 0);
}

fn check_writes_refused(rt: &tokio::runtime::Runtime, cri: &mut CriClient) {
    let e = rt
        .block_on(
            cri.runtime
                .run_pod_sandbox(proto::RunPodSandboxRequest::default()),
        )
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert!(e.message().contains("apiserver"), "{e:?}");
    let e = rt
        .block_on(
            cri.runtime
                .stop_container(proto::StopContainerRequest::default()),
        )
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}

/// The sandbox ID (pod UID) of `web`.
fn talk_pod(node: &SimNode) -> String {
    let pod = node.recorded_pod("web").unwrap().unwrap();
    pod["metadata"]["uid"].as_str().unwrap().to_string()
}

fn check_crictl(node: &SimNode, crictl: &Path, talk: &str, registry: &Registry) {
    let endpoint = format!("unix://{}", node.dir("run").join("cri.sock").display());
    let run = |args: &[&str]| {
        let out = node
            .command(crictl)
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crictl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["version"]).contains("RuntimeName:  kernlet"));
    let pods = run(&["pods"]);
    assert!(pods.contains("web") && pods.contains("Ready"), "{pods}");
    let ps = run(&["ps"]);
    assert!(
        ps.contains("talk") && ps.contains("sleeper") && ps.contains("Running"),
        "{ps}"
    );
    assert!(run(&["inspect", &talk[..12]]).contains("\"state\": \"CONTAINER_RUNNING\""));
    assert!(run(&["logs", &talk[..12]]).contains("tick"));
    assert_eq!(
        run(&["exec", &talk[..12], "echo", "via-crictl"]),
        "via-crictl\n"
    );
    assert!(run(&["stats"]).contains("talk"));
    assert!(run(&["statsp"]).contains("web"));
    assert!(run(&["inspectp", &talk_pod(node)]).contains("SANDBOX_READY"));
    assert!(run(&["inspecti", "busybox:1.36"]).contains("sha256:"));
    assert!(run(&["imagefsinfo"]).contains("usedBytes"));
    assert!(run(&["images"]).contains("busybox"));
    let name = format!("{}/tools/bb:1.36", registry.addr);
    assert!(run(&["pull", &name]).contains("sha256:"));
    assert!(run(&["rmi", &name]).contains("Deleted"));
    // exec -it: the command gets a terminal (crictl itself under `script`'s).
    let line = format!(
        "{} --runtime-endpoint {endpoint} exec -it {} sh -c 'tty; echo in-a-terminal'",
        crictl.display(),
        &talk[..12]
    );
    let out = node
        .command("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/") && text.contains("in-a-terminal"),
        "crictl exec -it: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // port-forward: a local port of the node reaches the pod's httpd.
    let mut forward = node
        .command(crictl)
        .args(["--runtime-endpoint", &endpoint])
        .args(["port-forward", &talk_pod(node), "18080:8080"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let page = wait(node, "a page through crictl port-forward", || {
        let out = node
            .command("/bin/busybox")
            .args(["wget", "-qO-", "http://127.0.0.1:18080/hostname"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(page.trim(), "web");
}
