//! `status` as one JSON object (`quokka ctl status --json`): the same facts as the text, with
//! units in the field names (`_ms`, `_ns`, `_bytes`, `_per_sec`) and times as milliseconds
//! since the Unix epoch. The README lists the fields.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::coordinator::CheckpointStatus;
use super::status::{ChangeTally, Status};
use super::AutoscaleStatus;
use crate::metrics::CoreStatus;

impl Status {
    pub fn to_json(&self) -> String {
        let migration = self.migration.as_ref().map(|m| {
            json!({
                "change": m.change,
                "steps_done": m.steps_done,
                "steps": m.steps,
                "slots_moved": m.slots_moved,
                "slots": m.slots,
                "running_ms": m.started.elapsed().as_millis() as u64,
            })
        });
        let lost: Vec<Value> = (self.lost.iter())
            .map(|l| {
                json!({
                    "node": l.node.name,
                    "cores": l.node.cores,
                    "slots": l.slots,
                    "reason": l.node.reason,
                })
            })
            .collect();
        let recovery = self.recovery.as_ref().map(|r| {
            json!({
                "node": r.node,
                "checkpoint": r.checkpoint,
                "slots": r.slots,
                "running": r.took.is_none() && r.failed.is_none(),
                "since_ms": r.started.elapsed().as_millis() as u64,
                "took_ms": r.took.map(|t| t.as_millis() as u64),
                "failed": r.failed,
                "lost_streams": r.lost_streams,
            })
        });
        let nodes: Vec<Value> = (self.nodes.iter())
            .map(|n| json!({"name": n.name, "data": n.data_addr, "http": n.http, "coordinator": n.coordinator}))
            .collect();
        let status = json!({
            "epoch": self.epoch,
            "slots": self.n_slots,
            "retired_cores": self.retired,
            "nodes": nodes,
            "cores": self.cores.iter().map(core).collect::<Vec<_>>(),
            "silent_cores": self.silent,
            "lost": lost,
            "migration": migration,
            "checkpoints": self.checkpoints.as_ref().map(checkpoints),
            "recovery": recovery,
            "changes": changes(&self.changes),
            "autoscale": autoscale(&self.autoscale),
        });
        status.to_string()
    }
}

fn autoscale(a: &AutoscaleStatus) -> Value {
    json!({
        "on": a.range.is_some(),
        "min": a.range.map(|r| r.0),
        "max": a.range.map(|r| r.1),
        "grows": a.grows,
        "shrinks": a.shrinks,
        "nodes_asked": a.nodes_asked,
        "nodes_let_go": a.nodes_let_go,
        "failed": a.failed,
        "last": a.last.as_ref().map(|(_, what)| what),
        "last_age_ms": a.last.as_ref().map(|(at, _)| at.elapsed().as_millis() as u64),
    })
}

fn changes(c: &ChangeTally) -> Value {
    json!({
        "done": c.done,
        "failed": c.failed,
        "slots_moved": c.slots_moved,
        "entities_moved": c.entities_moved,
        "bytes_moved": c.bytes_moved,
        "moving_ms": c.moving.as_millis() as u64,
        "last_moving_ms": c.last_moving.as_millis() as u64,
    })
}

fn core(c: &CoreStatus) -> Value {
    let files: Vec<Value> = (c.files.iter())
        .map(|(name, offset, ended)| json!({"source": name, "offset": offset, "ended": ended}))
        .collect();
    json!({
        "node": c.node,
        "core": c.core,
        "cpu": c.cpu,
        "epoch": c.epoch,
        "slots": c.slots,
        "entities": c.entities,
        "state_bytes": c.state_bytes,
        "buffered": c.buffered,
        "connections": c.connections,
        "frames": c.frames,
        "bytes_in": c.bytes_in,
        "source_errors": c.source_errors,
        "inbox": c.inbox,
        "outbox": c.outbox,
        "unread": c.unread,
        "busy": c.busy,
        "busy_seconds": c.busy_seconds,
        "applied": c.applied,
        "late": c.late,
        "timers": c.timers,
        "watermark": c.watermark,
        "outputs": c.outputs,
        "sink_down": c.sink_down,
        "sink_failures": c.sink_failures,
        "outputs_at_risk": c.at_risk,
        "frames_per_sec": c.frames_per_sec,
        "outputs_per_sec": c.outputs_per_sec,
        "latency_p50_ns": c.latency_p50,
        "latency_p99_ns": c.latency_p99,
        "latency_p999_ns": c.latency_p999,
        "latency_max_ns": c.latency_max,
        "replaying": c.replaying,
        "files": files,
    })
}

fn checkpoints(c: &CheckpointStatus) -> Value {
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let last = c.last.as_ref().map(|l| {
        json!({
            "checkpoint": l.checkpoint,
            "taken_ms": ms(l.taken),
            "age_ms": SystemTime::now().duration_since(l.taken).map_or(0, |d| d.as_millis() as u64),
            "written_bytes": l.written,
            "state_bytes": l.state_bytes,
            "duration_ms": l.duration.as_millis() as u64,
        })
    });
    json!({
        "state_dir": c.state_dir.display().to_string(),
        "last_complete": last,
        "failure": c.failure,
        "restored_from": c.restored_from,
        "awaiting_nodes": c.awaiting,
        "completed": c.completed,
        "failed": c.failed,
        "written_bytes": c.written,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::node::coordinator::CheckpointInfo;
    use crate::node::status::NodeInfo;

    #[test]
    fn status_reads_back_as_json_with_every_checkpoint_fact() {
        let taken = UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        let status = Status {
            epoch: 3,
            n_slots: 64,
            nodes: vec![NodeInfo {
                name: "w1 \"lead\"".into(),
                data_addr: "127.0.0.1:7000".into(),
                http: Some("127.0.0.1:6001".into()),
                coordinator: true,
            }],
            cores: vec![CoreStatus {
                node: "w1".into(),
                core: 1,
                files: vec![("text".into(), 42, Some("read to its end".into()))],
                latency_p99: Some(1500),
                ..CoreStatus::default()
            }],
            lost: Vec::new(),
            silent: vec![2],
            migration: None,
            retired: 1,
            checkpoints: Some(CheckpointStatus {
                state_dir: PathBuf::from("/var/lib/q"),
                last: Some(CheckpointInfo {
                    checkpoint: 9,
                    taken,
                    written: 100,
                    state_bytes: 1000,
                    duration: Duration::from_millis(12),
                }),
                failure: Some("disk full".into()),
                restored_from: Some(8),
                awaiting: vec!["w2".into()],
                completed: 4,
                failed: 1,
                written: 400,
            }),
            recovery: Some(super::super::coordinator::RecoveryStatus {
                node: "w3".into(),
                checkpoint: 9,
                slots: 1365,
                started: std::time::Instant::now(),
                took: Some(Duration::from_millis(250)),
                failed: None,
                lost_streams: vec!["b".into()],
            }),
            autoscale: AutoscaleStatus::default(),
            changes: ChangeTally {
                done: 2,
                bytes_moved: 1 << 20,
                ..ChangeTally::default()
            },
        };
        let v: Value = serde_json::from_str(&status.to_json()).unwrap();
        assert_eq!(v["epoch"], 3);
        assert_eq!(v["nodes"][0]["name"], "w1 \"lead\"");
        assert_eq!(v["cores"][0]["core"], 1);
        assert_eq!(v["cores"][0]["latency_p99_ns"], 1500);
        assert_eq!(v["cores"][0]["latency_p50_ns"], Value::Null);
        assert_eq!(v["cores"][0]["files"][0]["offset"], 42);
        assert_eq!(v["silent_cores"][0], 2);
        let r = &v["recovery"];
        assert_eq!(
            (r["node"].as_str(), r["slots"].as_u64()),
            (Some("w3"), Some(1365))
        );
        assert_eq!(
            (r["running"].as_bool(), r["took_ms"].as_u64()),
            (Some(false), Some(250))
        );
        let c = &v["checkpoints"];
        assert_eq!(c["last_complete"]["checkpoint"], 9);
        assert_eq!(c["last_complete"]["taken_ms"], 1_800_000_000_000u64);
        assert_eq!(c["last_complete"]["duration_ms"], 12);
        assert_eq!(c["failure"], "disk full");
        assert_eq!(c["restored_from"], 8);
        assert_eq!(c["awaiting_nodes"][0], "w2");
        assert_eq!(
            (c["completed"].as_u64(), c["failed"].as_u64()),
            (Some(4), Some(1))
        );
        assert_eq!(v["changes"]["done"], 2);
        assert_eq!(v["changes"]["bytes_moved"], 1 << 20);
        assert_eq!(v["nodes"][0]["http"], "127.0.0.1:6001");
    }
}
