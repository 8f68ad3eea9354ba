//! The in-memory control plane's contract, checked against the recorded fixtures with
//! kube-rs and the installed kubectl as real clients. Each test also runs against a
//! real control plane when `KUBEBUILDER_ASSETS` is set (knobs only the in-memory one
//! has are skipped there).

#![allow(
    clippy::unwrap_used,
    reason = "a test that cannot go on should stop loudly"
)]

use std::process::Command;

use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kernlet_tests::cluster::Cluster;
use kernlet_tests::fixtures;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

async fn start() -> Cluster {
    Cluster::start(&[]).await.expect("control plane starts")
}

/// Sends a raw request and returns the status code and JSON body.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
    content_type: &str,
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
        .expect("request");
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let first_line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let v = serde_json::from_slice(first_line)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (code, v)
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates the demo namespace, the two fixture nodes and the bound web pod.
async fn fixture_world(cluster: &Cluster) -> kube::Client {
    let admin = cluster.admin().await.expect("admin client");
    cluster.create_namespace("demo").await.expect("namespace");
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["fixture-node-1", "fixture-node-2"] {
        let mut n = fixtures::for_create(&fixtures::json("objects/node-created-by-node.json"));
        n["metadata"]["name"] = json!(name);
        n["metadata"]["labels"]["kubernetes.io/hostname"] = json!(name);
        nodes
            .create(&PostParams::default(), &serde_json::from_value(n).unwrap())
            .await
            .expect("node");
    }
    // The pod as its ReplicaSet would create it: without what admission injects.
    let mut pod = fixtures::for_create(&fixtures::json("bound-pods/web-589c74b5fc-cscnw.json"));
    pod["metadata"].as_object_mut().unwrap().remove("namespace");
    let injected = |v: &Value| {
        v["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    };
    pod["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .retain(|v| !injected(v));
    for list in ["containers", "initContainers"] {
        for c in pod["spec"][list].as_array_mut().unwrap() {
            c["volumeMounts"]
                .as_array_mut()
                .unwrap()
                .retain(|m| !injected(m));
        }
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "demo");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .expect("pod");
    admin
}

/// Compares a Status body with a recorded one: same code, reason, message and details.
fn assert_status_like(got: &Value, fixture: &str) {
    let want = fixtures::json(fixture);
    for field in ["kind", "status", "code", "reason", "message", "details"] {
        assert_eq!(
            got.get(field),
            want.get(field),
            "{fixture}: field {field}\n got: {got}\nwant: {want}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_identity_is_refused_exactly_where_the_fixtures_show_403() {
    let cluster = start().await;
    let _admin = fixture_world(&cluster).await;
    let node = cluster.node_client("fixture-node-1").await.unwrap();

    let sneaky = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sneaky", "namespace": "demo"}, "spec": {"nodeName": "fixture-node-1", "containers": [{"name": "c", "image": "busybox"}]}});
    let (code, body) = raw(
        &node,
        "POST",
        "/api/v1/namespaces/demo/pods",
        Some(sneaky),
        "application/json",
    )
    .await;
    assert_eq!(code, 403);
    assert_status_like(&body, "api-errors/403-node-creates-non-mirror-pod.json");

    let (code, body) = raw(
        &node,
        "GET",
        "/api/v1/namespaces/demo/pods/web-589c74b5fc-cscnw/status",
        None,
        "application/json",
    )
    .await;
    assert_eq!(code, 403);
    assert_status_like(&body, "api-errors/403-node-gets-pod-status.json");

    let (code, body) = raw(
        &node,
        "GET",
        "/api/v1/namespaces/demo/pods/does-not-exist",
        None,
        "application/json",
    )
    .await;
    assert_eq!(
        code, 403,
        "a node gets 403, not 404, for pods not bound to it"
    );
    assert_status_like(&body, "api-errors/403-node-gets-unrelated-pod.json");

    let (code, body) = raw(
        &node,
        "PATCH",
        "/api/v1/nodes/fixture-node-2",
        Some(json!({"metadata": {"labels": {"x": "y"}}})),
        "application/strategic-merge-patch+json",
    )
    .await;
    assert_eq!(code, 403);
    assert_status_like(&body, "api-errors/403-node-patches-other-node.json");

    let (code, body) = raw(
        &node,
        "PATCH",
        "/api/v1/nodes/fixture-node-1",
        Some(json!({"metadata": {"labels": {"node-role.kubernetes.io/worker": ""}}})),
        "application/strategic-merge-patch+json",
    )
    .await;
    assert_eq!(code, 403);
    assert_status_like(&body, "api-errors/403-node-sets-forbidden-label.json");

    let (code, body) = raw(
        &node,
        "GET",
        "/api/v1/nodes?watch=true",
        None,
        "application/json",
    )
    .await;
    assert_eq!(code, 403);
    assert_status_like(
        &body,
        "api-errors/403-node-watches-all-nodes-without-rbac.json",
    );

    let (code, body) = raw(
        &node,
        "GET",
        "/apis/discovery.k8s.io/v1/endpointslices?watch=true",
        None,
        "application/json",
    )
    .await;
    assert_eq!(code, 403);
    assert_status_like(
        &body,
        "api-errors/403-node-watches-endpointslices-without-rbac.json",
    );

    // The recorded request, bound to the pod as it exists here (its uid is new).
    let mut request =
        fixtures::json("api-errors/403-tokenrequest-audience-not-in-pod-request.json");
    let pod_uid = Api::<Pod>::namespaced(cluster.admin().await.unwrap(), "demo")
        .get("web-589c74b5fc-cscnw")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    request["spec"]["boundObjectRef"]["uid"] = json!(pod_uid);
    let (code, body) = raw(
        &node,
        "POST",
        "/api/v1/namespaces/demo/serviceaccounts/default/token",
        Some(request),
        "application/json",
    )
    .await;
    assert_eq!(code, 403);
    assert_status_like(
        &body,
        "api-errors/403-tokenrequest-audience-not-in-pod-response.json",
    );

    // What the node may do: its own node, its pod, a token without audiences, pod
    // status patches; and after the admin binds system:node-proxier, watch all nodes.
    let (code, _) = raw(
        &node,
        "GET",
        "/api/v1/nodes/fixture-node-1",
        None,
        "application/json",
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = raw(
        &node,
        "GET",
        "/api/v1/namespaces/demo/pods/web-589c74b5fc-cscnw",
        None,
        "application/json",
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = raw(
        &node,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dfixture-node-1",
        None,
        "application/json",
    )
    .await;
    assert_eq!(code, 200);
    let mut token_request = fixtures::json("tokens/tokenrequest-request.json");
    token_request["spec"]["boundObjectRef"]["uid"] = json!(pod_uid);
    let (code, token) = raw(
        &node,
        "POST",
        "/api/v1/namespaces/demo/serviceaccounts/default/token",
        Some(token_request),
        "application/json",
    )
    .await;
    assert_eq!(code, 201, "{token}");
    assert!(
        token
            .pointer("/status/token")
            .and_then(Value::as_str)
            .is_some_and(|t| t.split('.').count() == 3)
    );

    let kubeconfig = cluster.admin_kubeconfig().unwrap();
    let binding = fixtures::dir().join("rbac-node-proxier-binding.yaml");
    kubectl(
        &kubeconfig,
        &["apply", "-f", &binding.display().to_string()],
    );
    let (code, _) = raw(
        &node,
        "GET",
        "/apis/discovery.k8s.io/v1/endpointslices",
        None,
        "application/json",
    )
    .await;
    assert_eq!(
        code, 200,
        "node-proxier binding lets the node list EndpointSlices"
    );
    let (code, _) = raw(&node, "GET", "/api/v1/nodes", None, "application/json").await;
    assert_eq!(
        code, 200,
        "node-proxier binding lets the node list all Nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_conflict_and_invalid_bodies_match_the_fixtures() {
    let cluster = start().await;
    let admin = fixture_world(&cluster).await;
    let (code, body) = raw(
        &admin,
        "GET",
        "/api/v1/namespaces/demo/pods/does-not-exist",
        None,
        "application/json",
    )
    .await;
    assert_eq!(code, 404);
    assert_status_like(&body, "api-errors/404-pod-not-found.json");

    let node = cluster.node_client("fixture-node-1").await.unwrap();
    let stale = json!({"metadata": {"resourceVersion": "1"}, "status": {"phase": "Running"}});
    let (code, body) = raw(
        &node,
        "PATCH",
        "/api/v1/namespaces/demo/pods/web-589c74b5fc-cscnw/status",
        Some(stale),
        "application/strategic-merge-patch+json",
    )
    .await;
    assert_eq!(code, 409);
    assert_status_like(
        &body,
        "api-errors/409-pod-status-stale-resourceversion.json",
    );

    let bad = json!({"status": {"podIP": "not-an-ip", "podIPs": [{"ip": "not-an-ip"}, {"ip": "10.244.0.11"}]}});
    let (code, body) = raw(
        &node,
        "PATCH",
        "/api/v1/namespaces/demo/pods/web-589c74b5fc-cscnw/status",
        Some(bad),
        "application/strategic-merge-patch+json",
    )
    .await;
    assert_eq!(code, 422);
    let want = fixtures::json("api-errors/422-pod-status-invalid-ip.json");
    assert_eq!(body["reason"], want["reason"]);
    assert_eq!(
        body.pointer("/details/causes/0"),
        want.pointer("/details/causes/0")
    );

    // The fixture's own status patch from the node is accepted.
    let good = fixtures::json("objects/pod-status-patch-web-589c74b5fc-cscnw.json");
    let (code, body) = raw(
        &node,
        "PATCH",
        "/api/v1/namespaces/demo/pods/web-589c74b5fc-cscnw/status",
        Some(good.clone()),
        "application/strategic-merge-patch+json",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.pointer("/status/podIP"), good.pointer("/status/podIP"));

    // A replace with a stale resourceVersion conflicts; kube-rs sees the 409.
    let cms: Api<ConfigMap> = Api::namespaced(admin, "demo");
    let created = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut newer = created.clone();
    newer.data = Some([("a".to_string(), "2".to_string())].into());
    cms.replace("c", &PostParams::default(), &newer)
        .await
        .unwrap();
    let mut older = created;
    older.data = Some([("a".to_string(), "3".to_string())].into());
    match cms.replace("c", &PostParams::default(), &older).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "Conflict")),
        other => panic!("expected 409, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategic_merge_on_conditions_keeps_other_writers_entries() {
    let cluster = start().await;
    let admin = fixture_world(&cluster).await;
    let nodes: Api<Node> = Api::all(admin);
    // Another writer (a network plugin) owns NetworkUnavailable.
    nodes.patch_status("fixture-node-1", &PatchParams::default(), &Patch::Strategic(json!({"status": {"conditions": [
        {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp", "message": "Flannel is running on this node"}
    ]}}))).await.unwrap();
    let node_api: Api<Node> = Api::all(cluster.node_client("fixture-node-1").await.unwrap());
    let patch = fixtures::json("objects/node-after-status-patch.json");
    let ready_only: Vec<Value> = patch
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "Ready")
        .cloned()
        .collect();
    assert_eq!(ready_only.len(), 1);
    let out = node_api
        .patch_status(
            "fixture-node-1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": ready_only}})),
        )
        .await
        .unwrap();
    let types: Vec<String> = out
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| c.type_)
        .collect();
    assert!(
        types.contains(&"NetworkUnavailable".to_string()) && types.contains(&"Ready".to_string()),
        "{types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_resource_version_and_expired_versions_get_410() {
    let cluster = start().await;
    let admin = cluster.admin().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let mk =
        |n: &str| serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": n}})).unwrap();
    let first = cms.create(&PostParams::default(), &mk("w1")).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    cms.create(&PostParams::default(), &mk("w2")).await.unwrap();
    cms.delete("w1", &Default::default()).await.unwrap();

    // Resume after w1's creation: exactly the later events, in order.
    let stream = cms
        .watch(&kube::api::WatchParams::default().timeout(2), &rv)
        .await
        .unwrap();
    let events: Vec<String> = stream
        .take(2)
        .map_ok(|e| match e {
            kube::api::WatchEvent::Added(c) => format!("ADDED {}", c.metadata.name.unwrap()),
            kube::api::WatchEvent::Deleted(c) => format!("DELETED {}", c.metadata.name.unwrap()),
            other => format!("{other:?}"),
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events, ["ADDED w2", "DELETED w1"]);

    let Some(mem) = cluster.in_memory() else {
        return;
    };
    mem.set_history_window(3);
    for i in 0..10 {
        cms.create(&PostParams::default(), &mk(&format!("fill{i}")))
            .await
            .unwrap();
    }
    let (code, body) = raw(
        &admin,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"),
        None,
        "application/json",
    )
    .await;
    assert_eq!(
        code, 200,
        "an expired watch is an ERROR event on a 200 stream, as recorded"
    );
    let recorded: Value = serde_json::from_str(
        std::fs::read_to_string(
            fixtures::dir().join("watch/410-watch-expired-resourceversion.jsonl"),
        )
        .unwrap()
        .lines()
        .next()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(body["type"], recorded["type"]);
    for f in ["kind", "status", "reason", "code"] {
        assert_eq!(body["object"][f], recorded["object"][f], "{f}");
    }
    assert!(
        body["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("too old resource version: {rv} ("))
    );

    // Relist, then a watch from the list's version works again.
    let list = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 12, "w2, ten fills and kube-root-ca.crt");
    let rv = list.metadata.resource_version.unwrap();
    cms.create(&PostParams::default(), &mk("after"))
        .await
        .unwrap();
    let mut stream = cms
        .watch(&kube::api::WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(kube::api::WatchEvent::Added(c)) => {
            assert_eq!(c.metadata.name.as_deref(), Some("after"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_ends_with_the_initial_events_bookmark_and_kube_watcher_syncs() {
    let cluster = start().await;
    let admin = fixture_world(&cluster).await;
    let node = cluster.node_client("fixture-node-1").await.unwrap();
    let (code, _) = raw(&node, "GET", "/api/v1/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&fieldSelector=spec.nodeName%3Dfixture-node-1&timeoutSeconds=1", None, "application/json").await;
    assert_eq!(code, 200);
    // Read the whole (short) stream and check its shape against the recording.
    let req = http::Request::get("/api/v1/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&fieldSelector=spec.nodeName%3Dfixture-node-1&timeoutSeconds=1").body(Vec::new()).unwrap();
    let resp = node.send(req.map(kube::client::Body::from)).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let lines: Vec<Value> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "ADDED", "{lines:?}");
    assert_eq!(
        lines[0]["object"]["metadata"]["name"],
        "web-589c74b5fc-cscnw"
    );
    assert_eq!(lines[1]["type"], "BOOKMARK");
    assert_eq!(
        lines[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // kube-rs's watcher, in streaming-list mode and in list-watch mode, sees the pod.
    for cfg in [
        kube::runtime::watcher::Config::default().streaming_lists(),
        kube::runtime::watcher::Config::default(),
    ] {
        let api: Api<Pod> = Api::all(node.clone());
        let cfg = cfg.fields("spec.nodeName=fixture-node-1");
        let mut stream = kube::runtime::watcher(api, cfg).boxed();
        let mut names = Vec::new();
        while let Some(ev) =
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.try_next())
                .await
                .unwrap()
                .unwrap()
        {
            match ev {
                kube::runtime::watcher::Event::InitApply(p) => names.push(p.metadata.name.unwrap()),
                kube::runtime::watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(names, ["web-589c74b5fc-cscnw"]);
    }
    drop(admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaulting_adds_the_projected_token_volume_and_graceful_delete_works() {
    let cluster = start().await;
    let admin = fixture_world(&cluster).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "demo");
    let pod = pods.get("web-589c74b5fc-cscnw").await.unwrap();
    let spec = pod.spec.unwrap();
    let injected: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.name.starts_with("kube-api-access-"))
        .collect();
    assert_eq!(injected.len(), 1, "exactly one projected token volume");
    let recorded = fixtures::json("bound-pods/web-589c74b5fc-cscnw.json");
    let want = recorded["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .unwrap();
    assert_eq!(
        serde_json::to_value(&injected[0].projected).unwrap(),
        want["projected"]
    );
    assert_eq!(pod.status.unwrap().qos_class.as_deref(), Some("Burstable"));

    // Graceful delete, then the node's final delete with grace 0 and a uid precondition.
    let deleting = pods
        .delete("web-589c74b5fc-cscnw", &Default::default())
        .await
        .unwrap();
    let left = deleting.left().expect("a bound pod is not removed at once");
    assert!(left.metadata.deletion_timestamp.is_some());
    assert_eq!(left.metadata.deletion_grace_period_seconds, Some(30));
    let node = cluster.node_client("fixture-node-1").await.unwrap();
    let mut final_delete = fixtures::json("deletion/03-final-delete-request.json");
    final_delete["preconditions"]["uid"] = json!(left.metadata.uid);
    let (code, body) = raw(
        &node,
        "DELETE",
        "/api/v1/namespaces/demo/pods/web-589c74b5fc-cscnw",
        Some(final_delete),
        "application/json",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["metadata"]["deletionGracePeriodSeconds"], 0);
    assert!(
        pods.get_opt("web-589c74b5fc-cscnw")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_fixture_workloads_and_lists_them_wide() {
    let cluster = start().await;
    let kubeconfig = cluster.admin_kubeconfig().unwrap();
    let version = kubectl(&kubeconfig, &["get", "--raw", "/version"]);
    let v: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(
        (v["major"].as_str(), v["minor"].as_str()),
        (Some("1"), Some("36"))
    );

    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("workloads.yaml");
    let docs: Vec<String> = fixtures::workload_manifests()
        .iter()
        .map(|d| serde_saphyr::to_string(d).unwrap())
        .collect();
    std::fs::write(&manifest, docs.join("\n---\n")).unwrap();
    // The namespace first: a real cluster refuses its pods until the controller-manager
    // has given it a default ServiceAccount.
    let ns_only = tmp.path().join("namespace.yaml");
    std::fs::write(&ns_only, &docs[0]).unwrap();
    assert!(docs[0].contains("kind: Namespace"), "{}", docs[0]);
    let mut applied = kubectl(
        &kubeconfig,
        &["apply", "-f", &ns_only.display().to_string()],
    );
    cluster.create_namespace("demo").await.unwrap();
    applied += &kubectl(
        &kubeconfig,
        &["apply", "-f", &manifest.display().to_string()],
    );
    for what in [
        "namespace/demo created",
        "deployment.apps/web created",
        "service/web-lb created",
        "pod/hostnet created",
        "secret/web-secret created",
    ] {
        assert!(applied.contains(what), "{what} in:\n{applied}");
    }
    // Applying again changes nothing. kubectl still sends pods a patch of only
    // `$setElementOrder` directives (the live pod has the injected token volume) and
    // prints "configured", as against a real apiserver; the object must not change.
    let rv = || {
        kubectl(
            &kubeconfig,
            &[
                "get",
                "pod",
                "hostnet",
                "-n",
                "demo",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
        )
    };
    let generation = || {
        kubectl(
            &kubeconfig,
            &[
                "get",
                "deploy",
                "web",
                "-n",
                "demo",
                "-o",
                "jsonpath={.metadata.generation}",
            ],
        )
    };
    let (before, generation_before) = (rv(), generation());
    let again = kubectl(
        &kubeconfig,
        &["apply", "-f", &manifest.display().to_string()],
    );
    // kubectl reports "configured" wherever its patch is not empty, also when the
    // server keeps the object as it was: the pod (directives only), the Secret
    // (stringData, which the server folds into data) and the Deployment rebuilt from a
    // defaulted pod. What counts is that nothing changed.
    assert!(
        again.lines().all(|l| l.ends_with("unchanged")
            || [
                "pod/hostnet configured",
                "secret/web-secret configured",
                "deployment.apps/web configured"
            ]
            .contains(&l)),
        "{again}"
    );
    assert_eq!(
        generation(),
        generation_before,
        "the Deployment's spec is unchanged"
    );
    assert_eq!(rv(), before, "a directive-only patch is not a change");

    // Play the scheduler and the endpointslice controller for the hostnet pod.
    let admin = cluster.admin().await.unwrap();
    let nodes: Api<Node> = Api::all(admin.clone());
    let mut n = fixtures::for_create(&fixtures::json("objects/node-after-status-patch.json"));
    n["metadata"]["name"] = json!("fixture-node-1");
    nodes
        .create(&PostParams::default(), &serde_json::from_value(n).unwrap())
        .await
        .unwrap();
    let status = fixtures::json("objects/node-after-status-patch.json")["status"].clone();
    nodes
        .patch_status(
            "fixture-node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
    cluster
        .bind_pod("demo", "hostnet", "fixture-node-1")
        .await
        .unwrap();
    cluster.sync_endpointslice("demo", "web-lb").await.unwrap();

    let wide = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods,svc,endpointslices,nodes",
            "-n",
            "demo",
            "-o",
            "wide",
        ],
    );
    let line = |needle: &str| {
        wide.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing in:\n{wide}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("pod/hostnet")[6], "fixture-node-1", "NODE column");
    let lb = line("service/web-lb");
    assert_eq!(lb[1], "LoadBalancer");
    assert_eq!(lb[3], "198.18.0.200", "EXTERNAL-IP from externalIPs");
    assert!(
        lb[4].starts_with("80:3") && lb[4].contains("/TCP,53:3") && lb[4].ends_with("/UDP"),
        "PORT(S) {}",
        lb[4]
    );
    assert_eq!(line("service/web-headless")[2], "None");
    assert_eq!(
        line("endpointslice.discovery.k8s.io/web-lb-kltest")[1],
        "IPv4"
    );
    let node = line("node/fixture-node-1");
    assert_eq!(node[1], "Ready");
    assert_eq!(node[5], "198.18.0.101", "INTERNAL-IP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_token_csr_is_auto_approved_and_serving_csr_waits_for_approval() {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    let cluster = start().await;
    // Anonymous may read cluster-info; its JWS is there for the bootstrap token id.
    let anon_cfg = kernlet_tests::apiserver::kubeconfig_yaml(
        &cluster.url(),
        cluster.ca_pem(),
        "anonymous",
        None,
        None,
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("anon"), &anon_cfg).unwrap();
    let anon = Cluster::client_from(&tmp.path().join("anon"))
        .await
        .unwrap();
    let info = Api::<ConfigMap>::namespaced(anon.clone(), "kube-public")
        .get("cluster-info")
        .await
        .unwrap();
    let data = info.data.unwrap();
    assert!(data.contains_key("kubeconfig") && data.contains_key("jws-kubeconfig-abcdef"));
    assert!(
        Api::<ConfigMap>::namespaced(anon, "kube-system")
            .get("kubelet-config")
            .await
            .is_err()
    );

    std::fs::write(
        tmp.path().join("boot"),
        kernlet_tests::apiserver::kubeconfig_yaml(
            &cluster.url(),
            cluster.ca_pem(),
            "boot",
            None,
            Some(cluster.bootstrap_token()),
        ),
    )
    .unwrap();
    let boot = Cluster::client_from(&tmp.path().join("boot"))
        .await
        .unwrap();
    let csrs: Api<CertificateSigningRequest> = Api::all(boot);
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = kernlet::model::csr::node_csr("boot-1", None, &key).unwrap();
    let mut req = fixtures::json("bootstrap/02-client-csr-request.json");
    req["metadata"] = json!({"name": "node-csr-boot-1"});
    req["spec"]["request"] = json!(base64_encode(&pem));
    csrs.create(
        &PostParams::default(),
        &serde_json::from_value(req).unwrap(),
    )
    .await
    .unwrap();
    let issued = wait_for_certificate(&csrs, "node-csr-boot-1").await;
    assert!(issued.contains("BEGIN CERTIFICATE"));

    // The serving CSR from the node stays Pending until someone approves it.
    let node_csrs: Api<CertificateSigningRequest> =
        Api::all(cluster.node_client("boot-1").await.unwrap());
    let mut serving = fixtures::json("bootstrap/05-serving-csr-request.json");
    serving["metadata"] = json!({"name": "csr-serving-boot-1"});
    let ip: std::net::IpAddr = [198, 18, 0, 10].into();
    let serving_pem = kernlet::model::csr::node_csr("boot-1", Some(&[ip]), &key).unwrap();
    serving["spec"]["request"] = json!(base64_encode(&serving_pem));
    node_csrs
        .create(
            &PostParams::default(),
            &serde_json::from_value(serving).unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let pending = node_csrs.get("csr-serving-boot-1").await.unwrap();
    assert!(
        pending.status.and_then(|s| s.certificate).is_none(),
        "serving CSRs are not auto-approved"
    );
    cluster.approve_csr("csr-serving-boot-1").await.unwrap();
    assert!(
        wait_for_certificate(&node_csrs, "csr-serving-boot-1")
            .await
            .contains("BEGIN CERTIFICATE")
    );
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn wait_for_certificate(
    api: &Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest>,
    name: &str,
) -> String {
    for _ in 0..100 {
        if let Some(cert) = api
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.certificate)
        {
            return String::from_utf8(cert.0).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("CSR {name} never got a certificate");
}

/// The client certificate is checked on every request, as the real x509 authenticator
/// does: a connection opened while it was valid gets 401 once it has expired (a new
/// connection is refused too, at the handshake in the kit, with 401 by a real one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused_on_a_connection_it_opened() {
    let cluster = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("expiring.kubeconfig");
    cluster
        .expiring_kubeconfig("kubernetes-admin", &["system:masters"], 3, &path)
        .unwrap();
    let client = Cluster::client_from(&path).await.unwrap();
    let (code, _) = raw(&client, "GET", "/api/v1/namespaces/default", None, "").await;
    assert_eq!(code, 200, "valid now");
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let req = http::Request::builder()
        .uri("/api/v1/namespaces/default")
        .body(Vec::new())
        .unwrap();
    match client.send(req.map(kube::client::Body::from)).await {
        Ok(resp) => assert_eq!(resp.status().as_u16(), 401, "expired"),
        Err(e) => assert!(
            e.to_string().to_lowercase().contains("certificate")
                || e.to_string().contains("handshake")
                || e.to_string().contains("401"),
            "refused for the certificate: {e}"
        ),
    }
}
