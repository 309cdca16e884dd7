//! `runsc events --stats` output turned into containerd's cgroup v1 metrics, so `ctr task
//! metrics` and kubelet's stats show the sandbox's real CPU, memory and pid numbers.

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::MessageField;
use serde_json::Value;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Converts runsc's stats JSON (`{"type":"stats","data":{...}}`) to v1 metrics.
pub fn metrics_from_runsc(raw: &Value) -> Metrics {
    let d = if raw.get("data").is_some() {
        &raw["data"]
    } else {
        raw
    };
    let mut m = Metrics::new();

    let mut usage = CPUUsage::new();
    usage.total = u(&d["cpu"]["usage"]["total"]);
    usage.kernel = u(&d["cpu"]["usage"]["kernel"]);
    usage.user = u(&d["cpu"]["usage"]["user"]);
    if let Some(per) = d["cpu"]["usage"]["percpu"].as_array() {
        usage.per_cpu = per.iter().map(u).collect();
    }
    let mut cpu = CPUStat::new();
    cpu.usage = MessageField::some(usage);
    m.cpu = MessageField::some(cpu);

    let mem = &d["memory"];
    let entry = |v: &Value| {
        let mut e = MemoryEntry::new();
        e.usage = u(&v["usage"]);
        e.limit = u(&v["limit"]);
        e.max = u(&v["max"]);
        e.failcnt = u(&v["failcnt"]);
        MessageField::some(e)
    };
    let mut ms = MemoryStat::new();
    ms.usage = entry(&mem["usage"]);
    ms.swap = entry(&mem["swap"]);
    ms.kernel = entry(&mem["kernel"]);
    ms.kernel_tcp = entry(&mem["kernelTCP"]);
    ms.cache = u(&mem["cache"]);
    ms.rss = u(&mem["raw"]["rss"]);
    ms.total_rss = ms.rss;
    m.memory = MessageField::some(ms);

    let mut pids = PidsStat::new();
    pids.current = u(&d["pids"]["current"]);
    pids.limit = u(&d["pids"]["limit"]);
    m.pids = MessageField::some(pids);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_numbers_runsc_reports() {
        let raw: Value = serde_json::from_str(
            r#"{"type":"stats","id":"c8","data":{"cpu":{"usage":{"total":155596823}},"memory":{"usage":{"limit":0,"usage":2031616,"failcnt":0}},"pids":{"current":3}}}"#,
        )
        .expect("json");
        let m = metrics_from_runsc(&raw);
        assert_eq!(m.cpu.usage.total, 155596823);
        assert_eq!(m.memory.usage.usage, 2031616);
        assert_eq!(m.pids.current, 3);
        // Garbage gives zeros, not a panic.
        let m = metrics_from_runsc(&serde_json::json!({"data": "nonsense"}));
        assert_eq!(m.pids.current, 0);
    }
}
