//! `--in` arguments: `NAME@HOST:PORT` (Wallaroo's form) or, for a one-source app, `HOST:PORT`.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{anyhow, bail, Context, Result};

/// Resolves `HOST:PORT` to one socket address.
pub fn parse_addr(text: &str) -> Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("`{text}` is not a HOST:PORT address"))?
        .next()
        .ok_or_else(|| anyhow!("`{text}` resolves to no address"))
}

/// Orders the `--in` arguments by the app's sources; every source needs exactly one.
pub fn resolve(sources: &[String], args: &[String]) -> Result<Vec<SocketAddr>> {
    let names = sources.join(", ");
    if args.is_empty() {
        bail!("no --in given; this app reads sources: {names}");
    }
    let mut addrs: Vec<Option<SocketAddr>> = vec![None; sources.len()];
    for arg in args {
        let (index, addr) = match arg.split_once('@') {
            Some((name, addr)) => {
                let i = sources.iter().position(|s| s == name).ok_or_else(|| {
                    anyhow!("--in {arg}: the app has no source `{name}` (it has: {names})")
                })?;
                (i, addr)
            }
            None if sources.len() == 1 => (0, arg.as_str()),
            None => {
                bail!("--in {arg}: this app has several sources ({names}); write NAME@HOST:PORT")
            }
        };
        if addrs[index].is_some() {
            bail!("--in: source `{}` is given twice", sources[index]);
        }
        addrs[index] = Some(parse_addr(addr).with_context(|| format!("--in {arg}"))?);
    }
    sources
        .iter()
        .zip(addrs)
        .map(|(name, a)| a.ok_or_else(|| anyhow!("--in: no address for source `{name}`")))
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
}
