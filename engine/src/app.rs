//! The app API: how a pipeline is written, once, with no notion of cores, nodes or slots.
//!
//! ```
//! use quokka_engine::{App, DecodeError};
//!
//! let app = App::source("text", |frame: &[u8]| {
//!         std::str::from_utf8(frame).map(str::to_owned).map_err(|_| DecodeError::new("not UTF-8"))
//!     })
//!     .flat_map(|line: String, out| line.split(' ').for_each(|w| out.emit(w.to_owned())))
//!     .key_by(|word: &String| word.as_bytes())
//!     .stateful(|count: &mut u64, word: String, out| {
//!         *count += 1;
//!         out.emit((word, *count));
//!     })
//!     .sink(|(word, count): &(String, u64), bytes: &mut Vec<u8>| {
//!         bytes.extend_from_slice(format!("{word} => {count}\n").as_bytes())
//!     })
//!     .named("word_count");
//! assert_eq!(app.sources(), ["text"]);
//! ```
//!
//! The typed builder is a thin generic layer; it erases its closures into the `Dataflow`
//! objects the runtime drives (see `dataflow.rs`), so the engine is not monomorphised per app.

use std::sync::Arc;

use crate::dataflow::{Chain, Dataflow, Decode, KeyFn, StepFn, Typed};
pub use crate::step::{DecodeError, Emit, Message, State};

struct Source<I> {
    name: String,
    decode: Decode<I>,
}

/// Extends a chain of stateless steps by one step.
fn then<I: 'static, T: 'static, U: 'static>(
    chain: Chain<I, T>,
    step: impl Fn(T, &mut Emit<U>) + Send + Sync + 'static,
) -> Chain<I, U> {
    Arc::new(move |input, out| chain(input, &mut |t| step(t, &mut Emit(out))))
}

/// Messages decoded from one or more sources, before `key_by`.
pub struct Stream<I, T> {
    sources: Vec<Source<I>>,
    chain: Chain<I, T>,
}

impl App {
    /// Starts a pipeline at a source whose frames `decode` turns into messages.
    pub fn source<I: Send + 'static>(
        name: impl Into<String>,
        decode: impl Fn(&[u8]) -> Result<I, DecodeError> + Send + Sync + 'static,
    ) -> Stream<I, I> {
        let first = Source {
            name: name.into(),
            decode: Arc::new(decode),
        };
        Stream {
            sources: vec![first],
            chain: Arc::new(|i, out| out(i)),
        }
    }
}

impl<I: Send + 'static> Stream<I, I> {
    /// Merges one more source into the pipeline; its decoder yields the same message type.
    pub fn source(
        mut self,
        name: impl Into<String>,
        decode: impl Fn(&[u8]) -> Result<I, DecodeError> + Send + Sync + 'static,
    ) -> Self {
        self.sources.push(Source {
            name: name.into(),
            decode: Arc::new(decode),
        });
        self
    }
}

impl<I: 'static, T: 'static> Stream<I, T> {
    pub fn map<U: 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<I, U> {
        let chain = then(self.chain, move |t, out| out.emit(f(t)));
        Stream {
            sources: self.sources,
            chain,
        }
    }

    pub fn filter(self, keep: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<I, T> {
        let chain = then(self.chain, move |t, out| {
            if keep(&t) {
                out.emit(t)
            }
        });
        Stream {
            sources: self.sources,
            chain,
        }
    }

    pub fn flat_map<U: 'static>(
        self,
        f: impl Fn(T, &mut Emit<U>) + Send + Sync + 'static,
    ) -> Stream<I, U> {
        Stream {
            sources: self.sources,
            chain: then(self.chain, f),
        }
    }

    /// Names the key of each message: all messages with equal key bytes see one state entity.
    pub fn key_by(self, key: impl Fn(&T) -> &[u8] + Send + Sync + 'static) -> Keyed<I, T> {
        Keyed {
            stream: self,
            key: Arc::new(key),
        }
    }
}

/// A stream with a key, ready for its stateful step.
pub struct Keyed<I, T> {
    stream: Stream<I, T>,
    key: KeyFn<T>,
}

impl<I: 'static, T: Message> Keyed<I, T> {
    /// The stateful step: runs on the core that owns the message's key, with that key's state.
    pub fn stateful<S: State, R: 'static>(
        self,
        step: impl Fn(&mut S, T, &mut Emit<R>) + Send + Sync + 'static,
    ) -> Outputs<I, T, S, R, R> {
        Outputs {
            keyed: self,
            step: Arc::new(step),
            chain: Arc::new(|r, out| out(r)),
        }
    }
}

/// What the stateful step emits, through further stateless steps.
pub struct Outputs<I, T, S, R, O> {
    keyed: Keyed<I, T>,
    step: StepFn<S, T, R>,
    chain: Chain<R, O>,
}

impl<I, T, S, R: 'static, O: 'static> Outputs<I, T, S, R, O> {
    pub fn map<U: 'static>(
        self,
        f: impl Fn(O) -> U + Send + Sync + 'static,
    ) -> Outputs<I, T, S, R, U> {
        let chain = then(self.chain, move |o, out| out.emit(f(o)));
        Outputs {
            keyed: self.keyed,
            step: self.step,
            chain,
        }
    }

    pub fn filter(
        self,
        keep: impl Fn(&O) -> bool + Send + Sync + 'static,
    ) -> Outputs<I, T, S, R, O> {
        let chain = then(self.chain, move |o, out| {
            if keep(&o) {
                out.emit(o)
            }
        });
        Outputs {
            keyed: self.keyed,
            step: self.step,
            chain,
        }
    }

    pub fn flat_map<U: 'static>(
        self,
        f: impl Fn(O, &mut Emit<U>) + Send + Sync + 'static,
    ) -> Outputs<I, T, S, R, U> {
        Outputs {
            keyed: self.keyed,
            step: self.step,
            chain: then(self.chain, f),
        }
    }
}

impl<I: Send + 'static, T: Message, S: State, R: 'static, O: 'static> Outputs<I, T, S, R, O> {
    /// Ends the pipeline at a sink; `encode` appends one output's bytes.
    pub fn sink(self, encode: impl Fn(&O, &mut Vec<u8>) + Send + Sync + 'static) -> Pipeline {
        let Stream {
            sources,
            chain: pre,
        } = self.keyed.stream;
        let names = sources.iter().map(|s| s.name.clone()).collect();
        let dataflow = Typed {
            decoders: sources.into_iter().map(|s| s.decode).collect(),
            pre,
            key: self.keyed.key,
            step: self.step,
            post: self.chain,
            encode: Arc::new(encode),
        };
        Pipeline {
            sources: names,
            dataflow: Arc::new(dataflow),
        }
    }
}

/// A finished pipeline, to be given a name.
pub struct Pipeline {
    sources: Vec<String>,
    dataflow: Arc<dyn Dataflow>,
}

impl Pipeline {
    pub fn named(self, name: impl Into<String>) -> App {
        App {
            name: name.into(),
            sources: self.sources,
            dataflow: self.dataflow,
        }
    }
}

/// An app: a named pipeline the engine can run on any number of cores.
#[derive(Clone)]
pub struct App {
    name: String,
    sources: Vec<String>,
    pub(crate) dataflow: Arc<dyn Dataflow>,
}

impl App {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source names, in the order they were added.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }
}
