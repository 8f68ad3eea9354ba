//! The CRI `RuntimeService` from kernlet's own state. Reads (sandboxes, containers,
//! statuses, stats), exec and the streaming URLs are served; calls that would create,
//! change or remove what the pod manager owns answer `Unimplemented` with the reason,
//! because on a kernlet node the apiserver says what runs.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::proto::{self, runtime_service_server::RuntimeService};
use super::streaming::Pending;
use super::view::{NodeView, Run, now_nanos};
use super::{Cri, chunks};
use crate::api::stream::ExecOptions;
use crate::runtime::container::ContainerState;

type Answer<T> = Result<Response<T>, Status>;
type Chunks<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Why the CRI's writes are refused.
fn owned_by_pod_manager(call: &str) -> Status {
    Status::unimplemented(format!(
        "{call}: kernlet's pod manager owns this node's sandboxes and containers; create, \
         change or delete pods through the apiserver (kubectl), not over the CRI"
    ))
}

fn running<'a>(view: &'a NodeView, id: &str) -> Result<&'a Run, Status> {
    let run = view.run(id)?;
    if matches!(run.state, ContainerState::Running { .. }) {
        Ok(run)
    } else {
        Err(Status::failed_precondition(format!(
            "container {} is not running",
            run.record.id
        )))
    }
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(&self, _: Request<proto::VersionRequest>) -> Answer<proto::VersionResponse> {
        Ok(Response::new(proto::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "kernlet".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        _: Request<proto::RunPodSandboxRequest>,
    ) -> Answer<proto::RunPodSandboxResponse> {
        Err(owned_by_pod_manager("RunPodSandbox"))
    }

    async fn stop_pod_sandbox(
        &self,
        _: Request<proto::StopPodSandboxRequest>,
    ) -> Answer<proto::StopPodSandboxResponse> {
        Err(owned_by_pod_manager("StopPodSandbox"))
    }

    async fn remove_pod_sandbox(
        &self,
        _: Request<proto::RemovePodSandboxRequest>,
    ) -> Answer<proto::RemovePodSandboxResponse> {
        Err(owned_by_pod_manager("RemovePodSandbox"))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<proto::PodSandboxStatusRequest>,
    ) -> Answer<proto::PodSandboxStatusResponse> {
        let req = req.into_inner();
        let view = self.view().await?;
        let sandbox = view.sandbox(&req.pod_sandbox_id)?;
        let containers_statuses = view
            .runs
            .iter()
            .filter(|r| r.record.pod_uid == sandbox.record.uid)
            .map(|r| r.status(Some(sandbox)))
            .collect();
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            info.insert("info".into(), super::info::sandbox(sandbox));
        }
        Ok(Response::new(proto::PodSandboxStatusResponse {
            status: Some(sandbox.status()),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<proto::ListPodSandboxRequest>,
    ) -> Answer<proto::ListPodSandboxResponse> {
        let items = self.sandboxes(req.into_inner().filter).await?;
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    type StreamPodSandboxesStream = Chunks<proto::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<proto::StreamPodSandboxesRequest>,
    ) -> Answer<Self::StreamPodSandboxesStream> {
        let items = self.sandboxes(req.into_inner().filter).await?;
        Ok(Response::new(chunks(items, |pod_sandboxes| {
            proto::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn create_container(
        &self,
        _: Request<proto::CreateContainerRequest>,
    ) -> Answer<proto::CreateContainerResponse> {
        Err(owned_by_pod_manager("CreateContainer"))
    }

    async fn start_container(
        &self,
        _: Request<proto::StartContainerRequest>,
    ) -> Answer<proto::StartContainerResponse> {
        Err(owned_by_pod_manager("StartContainer"))
    }

    async fn stop_container(
        &self,
        _: Request<proto::StopContainerRequest>,
    ) -> Answer<proto::StopContainerResponse> {
        Err(owned_by_pod_manager("StopContainer"))
    }

    async fn remove_container(
        &self,
        _: Request<proto::RemoveContainerRequest>,
    ) -> Answer<proto::RemoveContainerResponse> {
        Err(owned_by_pod_manager("RemoveContainer"))
    }

    async fn list_containers(
        &self,
        req: Request<proto::ListContainersRequest>,
    ) -> Answer<proto::ListContainersResponse> {
        let containers = self.containers(req.into_inner().filter).await?;
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    type StreamContainersStream = Chunks<proto::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        req: Request<proto::StreamContainersRequest>,
    ) -> Answer<Self::StreamContainersStream> {
        let items = self.containers(req.into_inner().filter).await?;
        Ok(Response::new(chunks(items, |containers| {
            proto::StreamContainersResponse { containers }
        })))
    }

    async fn container_status(
        &self,
        req: Request<proto::ContainerStatusRequest>,
    ) -> Answer<proto::ContainerStatusResponse> {
        let req = req.into_inner();
        let view = self.view().await?;
        let run = view.run(&req.container_id)?;
        let sandbox = view.sandbox_of(run);
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            info.insert("info".into(), super::info::container(run, &self.rt));
        }
        Ok(Response::new(proto::ContainerStatusResponse {
            status: Some(run.status(sandbox)),
            info,
        }))
    }

    async fn update_container_resources(
        &self,
        _: Request<proto::UpdateContainerResourcesRequest>,
    ) -> Answer<proto::UpdateContainerResourcesResponse> {
        Err(owned_by_pod_manager(
            "UpdateContainerResources (resize the pod through its resize subresource)",
        ))
    }

    async fn reopen_container_log(
        &self,
        req: Request<proto::ReopenContainerLogRequest>,
    ) -> Answer<proto::ReopenContainerLogResponse> {
        let view = self.view().await?;
        let run = running(&view, &req.into_inner().container_id)?;
        // The container's writer opens the file at the log path again when it finds
        // another file (or none) there; an empty one is made now so readers find it.
        let path = &run.record.log_path;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Status::internal(format!("creating {}: {e}", path.display())))?;
        Ok(Response::new(proto::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        req: Request<proto::ExecSyncRequest>,
    ) -> Answer<proto::ExecSyncResponse> {
        let req = req.into_inner();
        let view = self.view().await?;
        let id = running(&view, &req.container_id)?.record.id.clone();
        // No timeout asked: a day, as good as none for a command someone waits on.
        let timeout = match req.timeout {
            t if t > 0 => Duration::from_secs(t as u64),
            _ => Duration::from_secs(24 * 3600),
        };
        let rt = self.rt.clone();
        let result = tokio::task::spawn_blocking(move || rt.exec_sync(&id, &req.cmd, timeout))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        if result.timed_out {
            return Err(Status::deadline_exceeded(format!(
                "command timed out after {}s",
                timeout.as_secs()
            )));
        }
        // The exec helper gives stdout and stderr interleaved, as a terminal shows them.
        Ok(Response::new(proto::ExecSyncResponse {
            stdout: result.output.into_bytes(),
            stderr: Vec::new(),
            exit_code: result.exit_code,
        }))
    }

    async fn exec(&self, req: Request<proto::ExecRequest>) -> Answer<proto::ExecResponse> {
        let req = req.into_inner();
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("exec: no command given"));
        }
        if !(req.stdin || req.stdout || req.stderr) {
            return Err(Status::invalid_argument(
                "exec: one of stdin, stdout and stderr must be set",
            ));
        }
        let view = self.view().await?;
        let container = running(&view, &req.container_id)?.record.id.clone();
        let opts = ExecOptions {
            command: req.cmd,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr && !req.tty,
            tty: req.tty,
        };
        let url = self.streaming.url(Pending::Exec { container, opts });
        Ok(Response::new(proto::ExecResponse { url }))
    }

    async fn attach(&self, req: Request<proto::AttachRequest>) -> Answer<proto::AttachResponse> {
        let req = req.into_inner();
        let view = self.view().await?;
        let container = running(&view, &req.container_id)?.record.id.clone();
        let opts = ExecOptions {
            command: Vec::new(),
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr && !req.tty,
            tty: req.tty,
        };
        let url = self.streaming.url(Pending::Attach { container, opts });
        Ok(Response::new(proto::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<proto::PortForwardRequest>,
    ) -> Answer<proto::PortForwardResponse> {
        let req = req.into_inner();
        let view = self.view().await?;
        let sandbox = view.sandbox(&req.pod_sandbox_id)?.record.uid.clone();
        let ports = req
            .port
            .iter()
            .map(|p| u16::try_from(*p).ok().filter(|p| *p > 0))
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| Status::invalid_argument(format!("bad port in {:?}", req.port)))?;
        let url = self.streaming.url(Pending::PortForward { sandbox, ports });
        Ok(Response::new(proto::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<proto::ContainerStatsRequest>,
    ) -> Answer<proto::ContainerStatsResponse> {
        let id = req.into_inner().container_id;
        let filter = proto::ContainerStatsFilter {
            id,
            ..Default::default()
        };
        let view = self.view().await?;
        view.run(&filter.id)?;
        let stats = self.container_stats_of(view, Some(filter)).await?;
        Ok(Response::new(proto::ContainerStatsResponse {
            stats: stats.into_iter().next(),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<proto::ListContainerStatsRequest>,
    ) -> Answer<proto::ListContainerStatsResponse> {
        let view = self.view().await?;
        let stats = self
            .container_stats_of(view, req.into_inner().filter)
            .await?;
        Ok(Response::new(proto::ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = Chunks<proto::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        req: Request<proto::StreamContainerStatsRequest>,
    ) -> Answer<Self::StreamContainerStatsStream> {
        let view = self.view().await?;
        let stats = self
            .container_stats_of(view, req.into_inner().filter)
            .await?;
        Ok(Response::new(chunks(stats, |container_stats| {
            proto::StreamContainerStatsResponse { container_stats }
        })))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<proto::PodSandboxStatsRequest>,
    ) -> Answer<proto::PodSandboxStatsResponse> {
        let id = req.into_inner().pod_sandbox_id;
        let view = self.view().await?;
        let uid = view.sandbox(&id)?.record.uid.clone();
        let filter = proto::PodSandboxStatsFilter {
            id: uid,
            ..Default::default()
        };
        let stats = self.sandbox_stats_of(view, Some(filter)).await?;
        Ok(Response::new(proto::PodSandboxStatsResponse {
            stats: stats.into_iter().next(),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<proto::ListPodSandboxStatsRequest>,
    ) -> Answer<proto::ListPodSandboxStatsResponse> {
        let view = self.view().await?;
        let stats = self.sandbox_stats_of(view, req.into_inner().filter).await?;
        Ok(Response::new(proto::ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = Chunks<proto::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<proto::StreamPodSandboxStatsRequest>,
    ) -> Answer<Self::StreamPodSandboxStatsStream> {
        let view = self.view().await?;
        let stats = self.sandbox_stats_of(view, req.into_inner().filter).await?;
        Ok(Response::new(chunks(stats, |pod_sandbox_stats| {
            proto::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })))
    }

    async fn update_runtime_config(
        &self,
        _: Request<proto::UpdateRuntimeConfigRequest>,
    ) -> Answer<proto::UpdateRuntimeConfigResponse> {
        Err(Status::unimplemented(
            "UpdateRuntimeConfig: kernlet's pod network follows the Node's podCIDR itself",
        ))
    }

    async fn status(&self, req: Request<proto::StatusRequest>) -> Answer<proto::StatusResponse> {
        Ok(Response::new(self.runtime_status(req.into_inner().verbose)))
    }

    async fn checkpoint_container(
        &self,
        _: Request<proto::CheckpointContainerRequest>,
    ) -> Answer<proto::CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "CheckpointContainer: kernlet does not checkpoint containers",
        ))
    }

    type GetContainerEventsStream = Chunks<proto::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _: Request<proto::GetEventsRequest>,
    ) -> Answer<Self::GetContainerEventsStream> {
        Err(Status::unimplemented(
            "GetContainerEvents: kernlet's pod manager relists; there is no event stream",
        ))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<proto::ListMetricDescriptorsRequest>,
    ) -> Answer<proto::ListMetricDescriptorsResponse> {
        Err(no_cri_metrics())
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<proto::ListPodSandboxMetricsRequest>,
    ) -> Answer<proto::ListPodSandboxMetricsResponse> {
        Err(no_cri_metrics())
    }

    type StreamPodSandboxMetricsStream = Chunks<proto::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<proto::StreamPodSandboxMetricsRequest>,
    ) -> Answer<Self::StreamPodSandboxMetricsStream> {
        Err(no_cri_metrics())
    }

    async fn runtime_config(
        &self,
        _: Request<proto::RuntimeConfigRequest>,
    ) -> Answer<proto::RuntimeConfigResponse> {
        Ok(Response::new(proto::RuntimeConfigResponse {
            linux: Some(proto::LinuxRuntimeConfiguration {
                cgroup_driver: proto::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        _: Request<proto::UpdatePodSandboxResourcesRequest>,
    ) -> Answer<proto::UpdatePodSandboxResourcesResponse> {
        Err(owned_by_pod_manager("UpdatePodSandboxResources"))
    }
}

fn no_cri_metrics() -> Status {
    Status::unimplemented(
        "CRI pod metrics are not served: scrape the kubelet API's /metrics/cadvisor",
    )
}
