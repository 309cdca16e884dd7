//! `make bench`'s CRI benchmark: pods started through CRI (RunPodSandbox + CreateContainer +
//! StartContainer until the container runs) with the `safehouse` handler against the `runc`
//! handler and containerd's Go runc shim driving runsc (`runsc-go`, sandbox only: see
//! [`containers_for`]), all measured in the same run on one private containerd; shim memory
//! (PSS) per pod with 0, 1 and 3 containers; and 20 pods started at once (time until all run,
//! memory per pod). Prints medians and ratios; asserts nothing. Usage: `cri-bench [RUNS]`
//! (default 10; also `BENCH_RUNS`).

use std::collections::HashMap;
use std::fs;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;
use safehouse_integration::containerd::RUNSC_GO_HANDLER;
use safehouse_integration::cri_env::{ContainerdBuild, CriEnv};
use safehouse_integration::host::processes;

const HANDLERS: &[&str] = &["safehouse", RUNSC_GO_HANDLER, "runc"];
const CONCURRENT_PODS: usize = 20;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cri-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BENCH_RUNS").ok())
        .map(|r| r.parse().context("RUNS must be a number"))
        .transpose()?
        .unwrap_or(10);
    let build = ContainerdBuild {
        label: "system".into(),
        bin_dir: None,
    };
    let env = CriEnv::start(&build, 7)?;
    let outcome = benchmarks(&env, runs);
    for line in env.shutdown() {
        eprintln!("cri-bench teardown: {line}");
    }
    outcome
}

/// How many containers each handler's pods get. containerd's Go runc shim driving runsc hangs
/// in StartContainer for a container joining the pod's sandbox (seen here with runsc
/// 20240729: `runsc start` of the member never returns; the pod is then torn down by CRI), so
/// its pods are measured as sandbox only: RunPodSandbox, the part all three can do.
fn containers_for(handler: &str, wanted: usize) -> usize {
    if handler == RUNSC_GO_HANDLER {
        0
    } else {
        wanted
    }
}

fn benchmarks(env: &CriEnv, runs: usize) -> Result<()> {
    println!(
        "CRI pod start: {runs} runs per handler, interleaved (containerd {}; a pod = pause + one busybox container, runsc-go: pause only)",
        env.version
    );
    // One untimed pod per handler first: images and caches warm, handlers known to work.
    for handler in HANDLERS {
        let pod = start_pod(env, handler, containers_for(handler, 1), "warm")?;
        stop(env, &pod)?;
    }
    let mut sandbox: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut whole: HashMap<&str, Vec<f64>> = HashMap::new();
    for _ in 0..runs {
        for handler in HANDLERS {
            let pod = start_pod(env, handler, containers_for(handler, 1), "start")?;
            sandbox
                .entry(handler)
                .or_default()
                .push(pod.sandbox.as_secs_f64() * 1000.0);
            if handler != &RUNSC_GO_HANDLER {
                whole
                    .entry(handler)
                    .or_default()
                    .push(pod.took.as_secs_f64() * 1000.0);
            }
            stop(env, &pod)?;
        }
    }
    println!(
        "\n{:<10} {:>17} {:>9} {:>9} {:>21} {:>9} {:>9}",
        "handler", "RunPodSandbox_ms", "p10", "p90", "pod_until_running_ms", "p10", "p90"
    );
    let mut sandbox_median = HashMap::new();
    let mut whole_median = HashMap::new();
    for handler in HANDLERS {
        let (m, p10, p90) = spread(sandbox.get(handler).map(Vec::as_slice).unwrap_or(&[]));
        sandbox_median.insert(*handler, m);
        let (w, w10, w90) = spread(whole.get(handler).map(Vec::as_slice).unwrap_or(&[]));
        whole_median.insert(*handler, w);
        let fmt = |v: f64| {
            if v.is_nan() {
                "n/a".to_string()
            } else {
                format!("{v:.1}")
            }
        };
        println!(
            "{handler:<10} {:>17} {:>9} {:>9} {:>21} {:>9} {:>9}",
            fmt(m),
            fmt(p10),
            fmt(p90),
            fmt(w),
            fmt(w10),
            fmt(w90)
        );
    }
    println!(
        "ratio RunPodSandbox safehouse / runsc-go (Go runc shim + runsc): {:.2}",
        sandbox_median["safehouse"] / sandbox_median[RUNSC_GO_HANDLER]
    );
    println!(
        "ratio RunPodSandbox safehouse / runc: {:.2}",
        sandbox_median["safehouse"] / sandbox_median["runc"]
    );
    println!(
        "ratio pod until running safehouse / runc: {:.2}",
        whole_median["safehouse"] / whole_median["runc"]
    );

    println!("\nShim memory per pod (PSS of the pod's one shim process, KiB; median of 3 pods)");
    println!(
        "{:<10} {:>12} {:>12} {:>12}",
        "handler", "sandbox only", "1 container", "3 containers"
    );
    let mut shim_pss = HashMap::new();
    for handler in HANDLERS {
        let mut row = Vec::new();
        for containers in [0, 1, 3] {
            if containers_for(handler, containers) != containers {
                row.push("n/a".to_string());
                continue;
            }
            let pods: Vec<Pod> = (0..3)
                .map(|_| start_pod(env, handler, containers, "mem"))
                .collect::<Result<_>>()?;
            std::thread::sleep(Duration::from_secs(1));
            let values: Vec<f64> = pods
                .iter()
                .map(|p| pod_memory(&p.id).shim_pss_kib as f64)
                .collect();
            for pod in &pods {
                stop(env, pod)?;
            }
            let (m, _, _) = spread(&values);
            shim_pss.insert((*handler, containers), m);
            row.push(format!("{m:.0}"));
        }
        println!("{handler:<10} {:>12} {:>12} {:>12}", row[0], row[1], row[2]);
    }
    println!(
        "ratio shim PSS safehouse / Go shim (runsc-go), sandbox only: {:.2}",
        shim_pss[&("safehouse", 0)] / shim_pss[&(RUNSC_GO_HANDLER, 0)]
    );
    for containers in [1, 3] {
        println!(
            "ratio shim PSS safehouse / Go shim (runc), {containers} container(s): {:.2}",
            shim_pss[&("safehouse", containers)] / shim_pss[&("runc", containers)]
        );
    }

    println!(
        "\n{CONCURRENT_PODS} pods started at once (one container each; runsc-go: sandbox only)"
    );
    println!(
        "{:<10} {:>15} {:>17} {:>20}",
        "handler", "all_running_ms", "shim_PSS_per_pod", "all_PSS_per_pod_KiB"
    );
    let mut burst = HashMap::new();
    for handler in HANDLERS {
        let containers = containers_for(handler, 1);
        let started = Instant::now();
        let pods: Vec<Result<Pod>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..CONCURRENT_PODS)
                .map(|_| s.spawn(|| start_pod(env, handler, containers, "burst")))
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a pod starter panicked")))
                })
                .collect()
        });
        let all_running = started.elapsed().as_secs_f64() * 1000.0;
        std::thread::sleep(Duration::from_secs(1));
        let ok: Vec<&Pod> = pods.iter().filter_map(|p| p.as_ref().ok()).collect();
        let failed: Vec<String> = pods
            .iter()
            .filter_map(|p| p.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        let memory: Vec<PodMemory> = ok.iter().map(|p| pod_memory(&p.id)).collect();
        for pod in &ok {
            stop(env, pod)?;
        }
        if !failed.is_empty() {
            bail!(
                "{handler}: {} of {CONCURRENT_PODS} concurrent pods failed; first: {}",
                failed.len(),
                failed[0]
            );
        }
        let n = memory.len().max(1) as f64;
        let shim = memory.iter().map(|m| m.shim_pss_kib).sum::<u64>() as f64 / n;
        let all = memory.iter().map(|m| m.all_pss_kib).sum::<u64>() as f64 / n;
        burst.insert(*handler, (all_running, shim, all));
        println!("{handler:<10} {all_running:>15.0} {shim:>17.0} {all:>20.0}");
    }
    println!(
        "ratio time to all running safehouse / runc: {:.2}",
        burst["safehouse"].0 / burst["runc"].0
    );
    println!(
        "ratio shim PSS per pod safehouse / Go shim (runc): {:.2}",
        burst["safehouse"].1 / burst["runc"].1
    );
    Ok(())
}

/// A started pod.
struct Pod {
    id: String,
    handler: String,
    /// RunPodSandbox alone.
    sandbox: Duration,
    /// RunPodSandbox through every container running.
    took: Duration,
}

/// RunPodSandbox + `containers` × (CreateContainer + StartContainer), then polls
/// ContainerStatus until every container is RUNNING; `took` covers all of it.
fn start_pod(env: &CriEnv, handler: &str, containers: usize, label: &str) -> Result<Pod> {
    let name = env.unique(&format!("{label}-{handler}"));
    let config = env.pod_config(&name, &[]);
    let started = Instant::now();
    let id = env.cri.run_pod(&config, handler)?;
    let mut ids = Vec::new();
    let mut pod = Pod {
        id: id.clone(),
        handler: handler.to_string(),
        sandbox: started.elapsed(),
        took: Duration::ZERO,
    };
    for n in 0..containers {
        let c = env.container_config(&format!("c{n}"), &["sleep", "3600"]);
        match env.cri.create_and_start(&id, &config, &c) {
            Ok(cid) => ids.push(cid),
            Err(e) => {
                let _ = stop(env, &pod);
                return Err(e);
            }
        }
    }
    for cid in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = env
                .cri
                .container_status(cid)?
                .status
                .map(|s| s.state)
                .unwrap_or_default();
            if state == cri::ContainerState::ContainerRunning as i32 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{handler}: container {cid} not running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    pod.took = started.elapsed();
    // Untimed: remembers the pod's netns so that the teardown removes it should CRI not.
    let _ = env.pod_netns(&id);
    Ok(pod)
}

fn stop(env: &CriEnv, pod: &Pod) -> Result<()> {
    if pod.handler == RUNSC_GO_HANDLER {
        // The Go runc shim cannot stop a runsc pod: after the SIGKILL its `runsc kill --all`
        // fails with "sandbox is not running", which it does not recognise as "already
        // stopped", and StopPodSandbox waits forever. Kill this pod's processes (ours: the
        // private containerd's) by pid; containerd then cleans up after the dead shim.
        for p in processes() {
            if p.argv.iter().any(|a| a.contains(&pod.id)) {
                safehouse_integration::host::kill_pid(p.pid);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    env.cri.stop_and_remove_pod(&pod.id)
}

/// Memory of the processes serving one pod.
struct PodMemory {
    /// PSS of the pod's shim process(es).
    shim_pss_kib: u64,
    /// PSS of every process whose argv names the pod (shim, runsc sandbox, gofer, pause).
    all_pss_kib: u64,
}

fn pod_memory(pod_id: &str) -> PodMemory {
    let mut shim = 0;
    let mut all = 0;
    for p in processes() {
        if !p.argv.iter().any(|a| a.contains(pod_id)) {
            continue;
        }
        let pss = pss_kib(p.pid);
        all += pss;
        if p.program_name().starts_with("containerd-shim") {
            shim += pss;
        }
    }
    PodMemory {
        shim_pss_kib: shim,
        all_pss_kib: all,
    }
}

fn pss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// (median, p10, p90) of `values`.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.1), at(0.9))
}
