//! `--in` and `--out` arguments: `NAME@HOST:PORT` (Wallaroo's form) or, for an app with one
//! source (or sink), `HOST:PORT`.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{anyhow, bail, Context, Result};

/// Resolves `HOST:PORT` to one socket address.
pub fn parse_addr(text: &str) -> Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("`{text}` is not a HOST:PORT address"))?
        .next()
        .ok_or_else(|| anyhow!("`{text}` resolves to no address"))
}

/// Which flag's arguments, naming what.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub flag: &'static str,
    pub noun: &'static str,
}

pub const INPUTS: Endpoints = Endpoints {
    flag: "--in",
    noun: "source",
};
pub const OUTPUTS: Endpoints = Endpoints {
    flag: "--out",
    noun: "sink",
};

/// Orders the `--in` arguments by the app's sources; every source needs exactly one.
pub fn resolve(sources: &[String], args: &[String]) -> Result<Vec<SocketAddr>> {
    resolve_endpoints(INPUTS, sources, args)
}

/// Orders a flag's arguments by the app's `names` (sources or sinks); each needs exactly one.
pub fn resolve_endpoints(
    kind: Endpoints,
    names: &[String],
    args: &[String],
) -> Result<Vec<SocketAddr>> {
    let Endpoints { flag, noun } = kind;
    let list = names.join(", ");
    if args.is_empty() {
        bail!("no {flag} given; this app has {noun}s: {list}");
    }
    let mut addrs: Vec<Option<SocketAddr>> = vec![None; names.len()];
    for arg in args {
        let (index, addr) = match arg.split_once('@') {
            Some((name, addr)) => {
                let i = names.iter().position(|s| s == name).ok_or_else(|| {
                    anyhow!("{flag} {arg}: the app has no {noun} `{name}` (it has: {list})")
                })?;
                (i, addr)
            }
            None if names.len() == 1 => (0, arg.as_str()),
            None => {
                bail!("{flag} {arg}: this app has several {noun}s ({list}); write NAME@HOST:PORT")
            }
        };
        if addrs[index].is_some() {
            bail!("{flag}: {noun} `{}` is given twice", names[index]);
        }
        addrs[index] = Some(parse_addr(addr).with_context(|| format!("{flag} {arg}"))?);
    }
    names
        .iter()
        .zip(addrs)
        .map(|(name, a)| a.ok_or_else(|| anyhow!("{flag}: no address for {noun} `{name}`")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn args(a: &[&str]) -> Vec<String> {
        names(a)
    }

    fn sock(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    #[test]
    fn bare_address_for_one_source() {
        let got = resolve(&names(&["text"]), &args(&["127.0.0.1:7000"])).unwrap();
        assert_eq!(got, vec![sock("127.0.0.1:7000")]);
        let got = resolve(&names(&["text"]), &args(&["text@127.0.0.1:7001"])).unwrap();
        assert_eq!(got, vec![sock("127.0.0.1:7001")]);
    }

    #[test]
    fn named_addresses_follow_source_order() {
        let srcs = names(&["orders", "nbbo"]);
        let got = resolve(&srcs, &args(&["nbbo@127.0.0.1:2", "orders@127.0.0.1:1"])).unwrap();
        assert_eq!(got, vec![sock("127.0.0.1:1"), sock("127.0.0.1:2")]);
    }

    #[test]
    fn mistakes_are_explained() {
        let srcs = names(&["orders", "nbbo"]);
        let err = |a: &[&str]| format!("{:#}", resolve(&srcs, &args(a)).unwrap_err());
        assert!(err(&[]).contains("no --in"));
        assert!(err(&["127.0.0.1:1"]).contains("NAME@HOST:PORT"));
        assert!(err(&["trades@127.0.0.1:1"]).contains("no source `trades`"));
        assert!(err(&["orders@127.0.0.1:1"]).contains("no address for source `nbbo`"));
        assert!(err(&["orders@127.0.0.1:1", "orders@127.0.0.1:2"]).contains("twice"));
        assert!(err(&["orders@nonsense", "nbbo@127.0.0.1:2"]).contains("not a HOST:PORT"));
    }

    #[test]
    fn sinks_resolve_like_sources() {
        let sinks = names(&["counts", "late"]);
        let got = resolve_endpoints(
            OUTPUTS,
            &sinks,
            &args(&["late@127.0.0.1:2", "counts@127.0.0.1:1"]),
        );
        assert_eq!(got.unwrap(), vec![sock("127.0.0.1:1"), sock("127.0.0.1:2")]);
        let err = resolve_endpoints(OUTPUTS, &sinks, &args(&["127.0.0.1:1"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("--out 127.0.0.1:1: this app has several sinks"),
            "{err:#}"
        );
    }
}
