//! `/metrics`: what this node knows, in the Prometheus (OpenMetrics) text format, written by
//! `prometheus-client`. Per core (labels `node`, `core`): what the core last published on the
//! board. Per node: its role and the nodes it knows; on the coordinator also the changes of
//! cores and the checkpoints. Counters end in `_total`, units are base units (seconds, bytes).

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::coordinator::CheckpointStatus;
use super::status::{ChangeTally, MigrationProgress};
use super::AutoscaleStatus;
use crate::metrics::{latency_bounds_ns, CoreStatus, Published};

/// What the node knows of itself and, on the coordinator, of the cluster's changes.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub node: String,
    pub app: String,
    pub coordinator: bool,
    /// Nodes in the cluster as this node knows them (itself included).
    pub nodes: usize,
    pub lost_nodes: usize,
    pub retired_cores: usize,
    /// Whether the app's stages keep event time (then late events and timers are exposed).
    pub event_time: bool,
    /// On the coordinator: the changes so far, and the one running.
    pub changes: Option<ChangeTally>,
    pub migration: Option<MigrationProgress>,
    pub checkpoints: Option<CheckpointStatus>,
    pub recovering: bool,
    /// On the coordinator: what the autoscaler did.
    pub autoscale: Option<AutoscaleStatus>,
}

/// The text `/metrics` serves: `facts` and the cores' last published copies.
pub fn render(facts: NodeFacts, cores: Vec<Published>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot { facts, cores }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

#[derive(Debug)]
struct Snapshot {
    facts: NodeFacts,
    cores: Vec<Published>,
}

type Labels = [(&'static str, String); 2];

/// A label value as the text format writes it: `prometheus-client` writes values as given, so
/// a node named `a"b` would end the value early.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// A node-wide value: a counter of things or of seconds, a gauge of things or of a reading.
enum Value {
    Count(u64),
    Seconds(f64),
    Level(i64),
    Reading(f64),
}

impl Value {
    fn kind(&self) -> MetricType {
        match self {
            Value::Count(_) | Value::Seconds(_) => MetricType::Counter,
            Value::Level(_) | Value::Reading(_) => MetricType::Gauge,
        }
    }
}

impl Snapshot {
    fn labels(&self, c: &CoreStatus) -> Labels {
        [
            ("node", label(&self.facts.node)),
            ("core", c.core.to_string()),
        ]
    }

    /// One family with a sample per core.
    fn per_core<M: EncodeMetric>(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help, kind): (&str, &str, MetricType),
        value: impl Fn(&CoreStatus) -> M,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for p in &self.cores {
            let labels = self.labels(&p.status);
            value(&p.status).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn latency(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "quokka_latency_seconds",
            "Source-to-sink latency of outputs: from reading the input to the completed write of the output to the sink socket.",
            None,
            MetricType::Histogram,
        )?;
        let bounds = latency_bounds_ns();
        for p in &self.cores {
            let l = &p.latency;
            let mut buckets: Vec<(f64, u64)> = (bounds.iter().zip(&l.per_bucket))
                .map(|(&b, &n)| (b as f64 / 1e9, n))
                .collect();
            let beyond = l.count - l.per_bucket.iter().sum::<u64>();
            buckets.push((f64::MAX, beyond));
            let labels = self.labels(&p.status);
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(l.sum_ns / 1e9, l.count, &buckets, None)?;
        }
        Ok(())
    }

    fn node_families(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = &self.facts;
        let role = if f.coordinator {
            "coordinator"
        } else {
            "member"
        };
        let labels = [
            ("node", label(&f.node)),
            ("role", role.to_string()),
            ("app", label(&f.app)),
        ];
        let mut info = encoder.encode_descriptor(
            "quokka_node",
            "This node: its name, role and app.",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&labels)?;
        let node = [("node", label(&f.node))];
        let mut one = |name: &str, help: &str, value: Value| {
            let mut family = encoder.encode_descriptor(name, help, None, value.kind())?;
            let sample = family.encode_family(&node)?;
            match value {
                Value::Count(v) => ConstCounter::new(v).encode(sample),
                Value::Seconds(v) => ConstCounter::new(v).encode(sample),
                Value::Level(v) => ConstGauge::new(v).encode(sample),
                Value::Reading(v) => ConstGauge::new(v).encode(sample),
            }
        };
        use Value::{Count, Level, Reading, Seconds};
        let flag = |on: bool| Level(i64::from(on));
        one(
            "quokka_cluster_nodes",
            "Nodes in the cluster as this node knows them (itself included).",
            Level(f.nodes as i64),
        )?;
        one(
            "quokka_lost_nodes",
            "Nodes lost (gone without leaving) that this node knows of.",
            Level(f.lost_nodes as i64),
        )?;
        one(
            "quokka_retired_cores",
            "Cores of this node stopped by shrinks since it started.",
            Count(f.retired_cores as u64),
        )?;
        one(
            "quokka_recovery_running",
            "1 while the slots of a lost node are being recovered.",
            flag(f.recovering),
        )?;
        if let Some(c) = &f.changes {
            let m = f.migration.as_ref();
            for (name, help, value) in [
                ("quokka_migrations", "Changes of cores (grow, shrink, join, remove-node) that completed.", Count(c.done)),
                ("quokka_migration_failures", "Changes of cores that ended early.", Count(c.failed)),
                ("quokka_migration_slots_moved", "Slots moved by completed changes.", Count(c.slots_moved)),
                ("quokka_migration_entities_moved", "State entities moved by completed changes.", Count(c.entities_moved)),
                ("quokka_migration_bytes_moved", "Bytes of state moved by completed changes.", Count(c.bytes_moved)),
                ("quokka_migration_moving_seconds", "Time completed changes spent moving slots (first switch to last slot adopted).", Seconds(c.moving.as_secs_f64())),
                (
                    "quokka_migration_last_moving_seconds",
                    "The last completed change's time moving slots.",
                    Reading(c.last_moving.as_secs_f64()),
                ),
                ("quokka_migration_running", "1 while a change of cores runs.", flag(m.is_some())),
                ("quokka_migration_slots", "Slots the running change moves (0: none runs).", Level(m.map_or(0, |m| m.slots) as i64)),
                ("quokka_migration_slots_done", "Slots the running change has moved so far.", Level(m.map_or(0, |m| m.slots_moved) as i64)),
            ] {
                one(name, help, value)?;
            }
        }
        if let Some(a) = &f.autoscale {
            let (min, max) = a.range.unwrap_or((0, 0));
            for (name, help, value) in [
                (
                    "quokka_autoscale_on",
                    "1 while autoscaling is on.",
                    flag(a.range.is_some()),
                ),
                (
                    "quokka_autoscale_min_cores",
                    "The fewest cores autoscaling keeps (0: off).",
                    Level(min as i64),
                ),
                (
                    "quokka_autoscale_max_cores",
                    "The most cores autoscaling grows to (0: off).",
                    Level(max as i64),
                ),
                (
                    "quokka_autoscale_grows",
                    "Grows the autoscaler carried out.",
                    Count(a.grows),
                ),
                (
                    "quokka_autoscale_shrinks",
                    "Shrinks the autoscaler carried out.",
                    Count(a.shrinks),
                ),
                (
                    "quokka_autoscale_nodes_asked",
                    "Nodes the autoscaler asked for (--on-scale-out).",
                    Count(a.nodes_asked),
                ),
                (
                    "quokka_autoscale_nodes_let_go",
                    "Members the autoscaler let go (--on-scale-in).",
                    Count(a.nodes_let_go),
                ),
                (
                    "quokka_autoscale_failures",
                    "Changes the autoscaler asked for that failed, and node requests refused.",
                    Count(a.failed),
                ),
            ] {
                one(name, help, value)?;
            }
        }
        if let Some(c) = &f.checkpoints {
            let last = c.last.as_ref();
            let unix = |t: SystemTime| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
            };
            for (name, help, value) in [
                (
                    "quokka_checkpoints",
                    "Checkpoints completed (durable) since this node started.",
                    Count(c.completed),
                ),
                (
                    "quokka_checkpoint_failures",
                    "Checkpoints that failed since this node started.",
                    Count(c.failed),
                ),
                (
                    "quokka_checkpoint_written_bytes",
                    "Bytes written by completed checkpoints.",
                    Count(c.written),
                ),
                (
                    "quokka_checkpoint_last",
                    "The number of the last durable checkpoint (0: none).",
                    Level(last.map_or(0, |l| l.checkpoint) as i64),
                ),
                (
                    "quokka_checkpoint_last_timestamp_seconds",
                    "When the last durable checkpoint was taken, Unix time (0: none).",
                    Reading(last.map_or(0.0, |l| unix(l.taken))),
                ),
                (
                    "quokka_checkpoint_last_duration_seconds",
                    "From the last checkpoint's barriers to its manifest being durable.",
                    Reading(last.map_or(0.0, |l| l.duration.as_secs_f64())),
                ),
                (
                    "quokka_checkpoint_last_state_bytes",
                    "Bytes of state the last checkpoint holds in all.",
                    Level(last.map_or(0, |l| l.state_bytes) as i64),
                ),
            ] {
                one(name, help, value)?;
            }
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.node_families(&mut encoder)?;
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        let n = |v: usize| ConstGauge::new(v as i64);
        self.per_core(
            e,
            (
                "quokka_busy_seconds",
                "Time the core's executor ran tasks (not parked); its rate is the busy fraction.",
                Counter,
            ),
            |c| ConstCounter::new(c.busy_seconds),
        )?;
        self.per_core(
            e,
            (
                "quokka_busy_ratio",
                "The fraction of the last second the core's executor ran tasks.",
                Gauge,
            ),
            |c| ConstGauge::new(c.busy),
        )?;
        self.per_core(
            e,
            ("quokka_source_frames", "Frames read from sources.", Counter),
            |c| ConstCounter::new(c.frames),
        )?;
        self.per_core(
            e,
            (
                "quokka_source_bytes",
                "Bytes read from sources: TCP frames with their length prefixes, a file's bytes.",
                Counter,
            ),
            |c| ConstCounter::new(c.bytes_in),
        )?;
        self.per_core(e, ("quokka_source_errors", "Source connections closed on bad framing, a frame the decoder rejected or a read error; file messages skipped for those.", Counter), |c| ConstCounter::new(c.source_errors))?;
        self.per_core(
            e,
            (
                "quokka_source_connections",
                "Source connections open.",
                Gauge,
            ),
            |c| n(c.connections),
        )?;
        self.per_core(
            e,
            (
                "quokka_applied_messages",
                "Keyed messages applied by the stateful steps (every stage's).",
                Counter,
            ),
            |c| ConstCounter::new(c.applied),
        )?;
        self.per_core(
            e,
            ("quokka_outputs", "Outputs written to the sinks.", Counter),
            |c| ConstCounter::new(c.outputs),
        )?;
        self.per_core(e, ("quokka_entities", "State entities held.", Gauge), |c| {
            n(c.entities)
        })?;
        self.per_core(e, ("quokka_slots", "Routing slots owned.", Gauge), |c| {
            n(c.slots)
        })?;
        self.per_core(
            e,
            (
                "quokka_state_bytes",
                "Bytes of the slots owned (as a move carries them).",
                Gauge,
            ),
            |c| ConstGauge::new(c.state_bytes as i64),
        )?;
        self.per_core(
            e,
            (
                "quokka_inbox_messages",
                "Messages waiting in the core's inbox.",
                Gauge,
            ),
            |c| n(c.inbox),
        )?;
        self.per_core(
            e,
            (
                "quokka_outbox_messages",
                "Messages queued for other cores, not yet in their inboxes.",
                Gauge,
            ),
            |c| n(c.outbox),
        )?;
        self.per_core(
            e,
            (
                "quokka_source_unread_bytes",
                "Bytes waiting in the core's source sockets, not read yet.",
                Gauge,
            ),
            |c| ConstGauge::new(c.unread as i64),
        )?;
        self.per_core(
            e,
            (
                "quokka_buffered_messages",
                "Messages held for slots on their way to this core.",
                Gauge,
            ),
            |c| n(c.buffered),
        )?;
        self.per_core(
            e,
            (
                "quokka_sink_up",
                "0 while the last attempt to reach a sink failed and outputs wait for it, else 1.",
                Gauge,
            ),
            |c| ConstGauge::new(i64::from(!c.sink_down)),
        )?;
        self.per_core(
            e,
            (
                "quokka_sink_failed_attempts",
                "Failed connection attempts to the sinks.",
                Counter,
            ),
            |c| ConstCounter::new(c.sink_failures),
        )?;
        self.per_core(e, ("quokka_sink_outputs_at_risk", "Outputs written to sink connections that then failed (the sink may not have them).", Counter), |c| ConstCounter::new(c.at_risk))?;
        if self.facts.event_time {
            self.per_core(e, ("quokka_late_events", "Messages later than their stage's watermark (dropped, or written to the app's sink for them).", Counter), |c| ConstCounter::new(c.late))?;
            self.per_core(
                e,
                (
                    "quokka_timers",
                    "Timers pending on the core's entities.",
                    Gauge,
                ),
                |c| n(c.timers),
            )?;
        }
        self.latency(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{latency_histogram, LatencyBuckets};

    fn facts(coordinator: bool) -> NodeFacts {
        NodeFacts {
            node: "w1".into(),
            app: "word_count".into(),
            coordinator,
            nodes: 2,
            lost_nodes: 0,
            retired_cores: 1,
            event_time: false,
            changes: coordinator.then(|| ChangeTally {
                done: 3,
                slots_moved: 256,
                ..ChangeTally::default()
            }),
            migration: None,
            checkpoints: None,
            recovering: false,
            autoscale: None,
        }
    }

    fn core(id: u16, outputs: u64, latencies_ns: &[u64]) -> Published {
        let mut h = latency_histogram();
        for &ns in latencies_ns {
            h.record(ns).unwrap();
        }
        Published {
            status: CoreStatus {
                core: id,
                outputs,
                frames: outputs,
                ..CoreStatus::default()
            },
            latency: LatencyBuckets::of(&h),
        }
    }

    /// The samples of `name` (without `# ` lines), as `labels value`.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .map(|l| &l[name.len()..])
            .collect()
    }

    #[test]
    fn counters_per_core_end_in_total_and_carry_node_and_core() {
        let text = render(facts(true), vec![core(0, 5, &[]), core(1, 7, &[])]);
        assert!(text.contains("# TYPE quokka_outputs counter"), "{text}");
        assert_eq!(
            samples(&text, "quokka_outputs_total"),
            [r#"{node="w1",core="0"} 5"#, r#"{node="w1",core="1"} 7"#]
        );
        assert_eq!(
            samples(&text, "quokka_migrations_total"),
            [r#"{node="w1"} 3"#]
        );
        assert!(
            text.contains(r#"quokka_node_info{node="w1",role="coordinator",app="word_count"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert!(
            samples(&text, "quokka_late_events_total").is_empty(),
            "no event time, no late events"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut f = facts(false);
        f.node = "a\"b\\c\nd".into();
        let text = render(f, vec![]);
        assert!(
            text.contains(r#"quokka_lost_nodes{node="a\"b\\c\nd"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn a_member_shows_no_changes_and_event_time_shows_late_events() {
        let mut f = facts(false);
        f.event_time = true;
        let text = render(f, vec![core(3, 1, &[])]);
        assert!(
            samples(&text, "quokka_migrations_total").is_empty(),
            "{text}"
        );
        assert_eq!(
            samples(&text, "quokka_late_events_total"),
            [r#"{node="w1",core="3"} 0"#]
        );
    }

    #[test]
    fn latency_is_a_cumulative_histogram_in_seconds() {
        let text = render(
            facts(true),
            vec![core(0, 3, &[2_000, 2_000, 40_000_000_000])],
        );
        let buckets = samples(&text, "quokka_latency_seconds_bucket");
        assert_eq!(buckets.len(), latency_bounds_ns().len() + 1, "{text}");
        assert_eq!(buckets[0], r#"{le="0.000001",node="w1",core="0"} 0"#);
        assert!(
            buckets[4].ends_with(" 2"),
            "2 us falls at 2.51 us: {}",
            buckets[4]
        );
        assert_eq!(buckets[70], r#"{le="10.0",node="w1",core="0"} 2"#);
        assert_eq!(buckets[71], r#"{le="+Inf",node="w1",core="0"} 3"#);
        assert_eq!(
            samples(&text, "quokka_latency_seconds_count"),
            [r#"{node="w1",core="0"} 3"#]
        );
    }
}
