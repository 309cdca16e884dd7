//! What a Create hands to the sandbox code: the shim's side of things ([`Host`]) and the
//! container to make ([`NewContainer`]).

use std::sync::Arc;

use containerd_shim_protos::api::Mount;
use tokio::sync::mpsc;

use crate::audit::{AuditOutput, KillRequest};
use crate::bundle::Bundle;
use crate::confine::Confinement;
use crate::hooks::ShimHooks;
use crate::node::{Node, RuntimeEnv};
use crate::reaper::Reaper;
use crate::stdio::IoPaths;

/// What Create needs from the shim.
pub struct Host<'a> {
    /// The node (state directories, the runsc to use).
    pub node: &'a Node,
    /// The runtime config this container was created with.
    pub env: &'a RuntimeEnv,
    /// containerd's namespace.
    pub namespace: &'a str,
    /// The shim's reaper.
    pub reaper: &'a Reaper,
    /// The shim's audit writer.
    pub output: &'a Arc<AuditOutput>,
    /// Where a sandbox's enforcer sends its kill requests.
    pub kills: &'a mpsc::UnboundedSender<KillRequest>,
}

/// A container to create, its policy chosen and compiled.
pub struct NewContainer<'a> {
    /// containerd's id.
    pub id: String,
    /// The bundle (its spec without the hooks the shim runs itself).
    pub bundle: Bundle,
    /// containerd's rootfs mounts.
    pub rootfs: &'a [Mount],
    /// Its stdio.
    pub io: IoPaths,
    /// The hooks the shim runs itself.
    pub hooks: ShimHooks,
    /// Its policy.
    pub confinement: Confinement,
}
