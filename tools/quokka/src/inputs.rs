//! `--in` and `--out` arguments: `NAME@HOST:PORT` (Wallaroo's form) or, for an app with one
//! source (or sink), `HOST:PORT`; a source may be a file instead: `NAME@file:PATH` (frames) or
//! `NAME@lines:PATH` (one message per line).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{anyhow, bail, Context, Result};
use quokka_engine::{FileFormat, FileInput, Input};

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

/// Orders the `--in` arguments by the app's sources; every source needs exactly one. File
/// sources are followed as they grow if `follow`.
pub fn resolve(sources: &[String], args: &[String], follow: bool) -> Result<Vec<Input>> {
    let file = |text: &str| -> Option<FileInput> {
        let (format, path) = match text.split_once(':')? {
            ("file", path) => (FileFormat::Frames, path),
            ("lines", path) => (FileFormat::Lines, path),
            _ => return None,
        };
        Some(FileInput {
            path: path.into(),
            format,
            follow,
        })
    };
    resolve_with(INPUTS, sources, args, |text| match file(text) {
        Some(f) if f.path.as_os_str().is_empty() => bail!("`{text}` names no file"),
        Some(f) => Ok(Input::File(f)),
        None => Ok(Input::Tcp(parse_addr(text)?)),
    })
}

/// Orders a flag's arguments by the app's `names` (sources or sinks); each needs exactly one.
pub fn resolve_endpoints(
    kind: Endpoints,
    names: &[String],
    args: &[String],
) -> Result<Vec<SocketAddr>> {
    resolve_with(kind, names, args, parse_addr)
}

fn resolve_with<T: Clone>(
    kind: Endpoints,
    names: &[String],
    args: &[String],
    parse: impl Fn(&str) -> Result<T>,
) -> Result<Vec<T>> {
    let Endpoints { flag, noun } = kind;
    let list = names.join(", ");
    if args.is_empty() {
        bail!("no {flag} given; this app has {noun}s: {list}");
    }
    let mut addrs: Vec<Option<T>> = vec![None; names.len()];
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
        addrs[index] = Some(parse(addr).with_context(|| format!("{flag} {arg}"))?);
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

    fn sock(a: &str) -> Input {
        Input::Tcp(a.parse().unwrap())
    }

    fn resolve(sources: &[String], args: &[String]) -> Result<Vec<Input>> {
        super::resolve(sources, args, false)
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
    fn a_source_may_be_a_file_of_frames_or_lines() {
        let srcs = names(&["orders", "nbbo"]);
        let got = super::resolve(
            &srcs,
            &args(&["orders@file:a/b.bin", "nbbo@lines:c.txt"]),
            true,
        );
        let file = |path: &str, format| {
            Input::File(FileInput {
                path: path.into(),
                format,
                follow: true,
            })
        };
        assert_eq!(
            got.unwrap(),
            vec![
                file("a/b.bin", FileFormat::Frames),
                file("c.txt", FileFormat::Lines)
            ]
        );
        let one = resolve(&names(&["text"]), &args(&["lines:words.txt"])).unwrap();
        assert!(matches!(&one[0], Input::File(f) if f.format == FileFormat::Lines && !f.follow));
        let err = format!(
            "{:#}",
            resolve(&names(&["text"]), &args(&["file:"])).unwrap_err()
        );
        assert!(err.contains("names no file"), "{err}");
    }

    #[test]
    fn sinks_resolve_like_sources() {
        let sinks = names(&["counts", "late"]);
        let got = resolve_endpoints(
            OUTPUTS,
            &sinks,
            &args(&["late@127.0.0.1:2", "counts@127.0.0.1:1"]),
        );
        let addr = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert_eq!(got.unwrap(), vec![addr("127.0.0.1:1"), addr("127.0.0.1:2")]);
        let err = resolve_endpoints(OUTPUTS, &sinks, &args(&["127.0.0.1:1"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("--out 127.0.0.1:1: this app has several sinks"),
            "{err:#}"
        );
    }
}
