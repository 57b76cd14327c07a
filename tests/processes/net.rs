//! Where a test's nodes live: on loopback, or each in a network namespace of its own (veth
//! pairs on a bridge in the test's namespace, which holds the sinks and drives the nodes).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::quokka;

/// Where a test's nodes live: the address of node `i` (each node binds it with port 0 and
/// reports the ports it got), and the command prefix that runs a program there.
pub(crate) trait Net {
    fn host(&self, i: usize) -> String;
    fn sink_host(&self) -> String;
    fn command(&self, i: usize) -> Command;
}

pub(crate) struct Loopback;

impl Net for Loopback {
    fn host(&self, _: usize) -> String {
        "127.0.0.1".into()
    }
    fn sink_host(&self) -> String {
        "127.0.0.1".into()
    }
    fn command(&self, _: usize) -> Command {
        Command::new(quokka())
    }
}

/// Network namespaces, one per node, each with a veth pair whose other end is on a bridge in
/// the test's namespace (which holds the sink and drives the nodes). Removed on drop.
pub(crate) struct Namespaces {
    names: Vec<String>,
    bridge: String,
    subnet: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Namespaces {
    pub(crate) fn create(n: usize) -> Result<Namespaces, String> {
        // Tests of one process run at once: each set of namespaces is named apart.
        static SETS: AtomicU32 = AtomicU32::new(0);
        let set = SETS.fetch_add(1, Ordering::Relaxed) % 50;
        let tag = format!("{}{set}", std::process::id() % 100_000);
        let ns = Namespaces {
            names: (0..n).map(|i| format!("quokka-{tag}-{i}")).collect(),
            bridge: format!("qkbr{tag}"),
            subnet: format!("10.{}.{}", 200 + set, 20 + std::process::id() % 200),
        };
        ip(&["link", "add", &ns.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", ns.subnet),
            "dev",
            &ns.bridge,
        ])?;
        ip(&["link", "set", &ns.bridge, "up"])?;
        for (i, name) in ns.names.iter().enumerate() {
            let (outer, inner) = (format!("qkv{tag}x{i}"), format!("qkv{tag}y{i}"));
            ip(&["netns", "add", name])?;
            ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", name])?;
            ip(&["link", "set", &outer, "master", &ns.bridge, "up"])?;
            let addr = format!("{}/24", ns.host(i));
            ip(&[
                "netns", "exec", name, "ip", "addr", "add", &addr, "dev", &inner,
            ])?;
            ip(&["netns", "exec", name, "ip", "link", "set", &inner, "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Net for Namespaces {
    fn host(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }
    fn sink_host(&self) -> String {
        format!("{}.254", self.subnet)
    }
    fn command(&self, i: usize) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i]]).arg(quokka());
        c
    }
}
