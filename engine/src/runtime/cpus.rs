//! Which CPUs this process may use, and how many cores that makes: its CPU affinity (a
//! `taskset` or a container's cpuset) among the online CPUs, capped by its cgroup's CPU quota
//! (`cpu.max`, what `docker --cpus` and Kubernetes limits set). Pure parsing with unit tests;
//! the reads at the edges.

/// The online CPUs this process may run on, lowest first (every online CPU if the affinity
/// cannot be read; `[0]` if nothing can). The affinity read is the calling thread's: call it
/// before anything pins that thread (the benchmarks pin theirs), as `quokka run` does at start.
pub fn usable_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = glommio::CpuSet::online()
        .map(|set| set.into_iter().map(|l| l.cpu).collect())
        .unwrap_or_default();
    if let Some(allowed) = affinity() {
        cpus.retain(|c| allowed.contains(c));
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// One core per usable CPU, but no more than the cgroup's CPU quota allows (rounded up: a
/// quota of 1.5 CPUs runs 2 cores), at least 1.
pub fn auto_cores() -> usize {
    let cpus = usable_cpus().len();
    quota_cpus().map_or(cpus, |q| q.min(cpus)).max(1)
}

/// The process's CPU affinity mask, as CPU ids.
fn affinity() -> Option<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its
    // size, which it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect(),
        )
    }
}

/// The tightest CPU quota on this process's cgroup v2 path (its own and its parents'), in
/// whole CPUs rounded up; `None` without a quota (or without cgroup v2).
fn quota_cpus() -> Option<usize> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut path = std::path::PathBuf::from("/sys/fs/cgroup");
    path.push(cgroup_path(&membership)?.trim_start_matches('/'));
    let mut tightest = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(path.join("cpu.max")) {
            if let Some(q) = parse_cpu_max(&text) {
                tightest = Some(tightest.map_or(q, |t: usize| t.min(q)));
            }
        }
        if path == std::path::Path::new("/sys/fs/cgroup") || !path.pop() {
            return tightest;
        }
    }
}

/// The cgroup v2 path in `/proc/self/cgroup` (its `0::PATH` line).
fn cgroup_path(membership: &str) -> Option<&str> {
    membership.lines().find_map(|l| l.strip_prefix("0::"))
}

/// `cpu.max` (`QUOTA PERIOD`, or `max PERIOD` for none) in whole CPUs, rounded up.
fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut fields = text.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next().unwrap_or("100000").parse().ok()?;
    (period > 0).then(|| quota.div_ceil(period).max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_reads_as_whole_cpus_rounded_up() {
        assert_eq!(parse_cpu_max("max 100000\n"), None, "no quota");
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(
            parse_cpu_max("150000 100000"),
            Some(2),
            "1.5 CPUs run 2 cores"
        );
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("1000 100000"), Some(1), "at least one");
        assert_eq!(
            parse_cpu_max("400000"),
            Some(4),
            "the period defaults to 100 ms"
        );
        assert_eq!(parse_cpu_max("100000 0"), None);
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn the_cgroup_v2_path_is_the_unified_line() {
        assert_eq!(
            cgroup_path("0::/system.slice/q.service\n"),
            Some("/system.slice/q.service")
        );
        assert_eq!(
            cgroup_path("12:cpu,cpuacct:/docker/abc\n0::/docker/abc\n"),
            Some("/docker/abc")
        );
        assert_eq!(
            cgroup_path("12:cpu,cpuacct:/docker/abc\n"),
            None,
            "cgroup v1 only"
        );
    }

    #[test]
    fn this_process_has_usable_cpus_and_at_least_one_core() {
        let cpus = usable_cpus();
        assert!(
            !cpus.is_empty() && cpus.windows(2).all(|w| w[0] < w[1]),
            "{cpus:?}"
        );
        assert!((1..=cpus.len()).contains(&auto_cores()));
    }
}
