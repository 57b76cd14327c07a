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
//!     .sink("counts", |(word, count): &(String, u64), bytes: &mut Vec<u8>| {
//!         bytes.extend_from_slice(format!("{word} => {count}\n").as_bytes())
//!     })
//!     .named("word_count");
//! assert_eq!(app.sources(), ["text"]);
//! assert_eq!(app.sinks(), ["counts"]);
//! ```
//!
//! A pipeline may chain keyed stages (`key_by(..).stateful(..)` again after a stage's outputs,
//! with stateless steps between), copy some outputs to further sinks on the way
//! ([`Outputs::also_sink`]), stamp event times at its sources ([`Stream::event_time`]), and
//! set timers ([`Keyed::process`]); windows ([`Keyed::window`]) are built on those timers.
//!
//! The typed builder is a thin generic layer; it erases its closures into the `Dataflow`
//! objects the runtime drives (see `dataflow/`), so the engine is not monomorphised per app.

use std::sync::Arc;

use crate::dataflow::{
    then, Chain, Dataflow, Decode, Discard, KeyFn, Late, OutletDef, SourceDef, StageDef, StageFns,
    Stamp, StepFn, Tap, Taps, TimerFn, ToSink, ToStage, Typed,
};
pub use crate::step::{Context, DecodeError, Emit, Message, State, Time};
pub use crate::window::{Open, Window, Windows};

struct Source<I> {
    name: String,
    decode: Decode<I>,
}

/// Messages decoded from one or more sources, before the first `key_by`.
pub struct Stream<I, T> {
    sources: Vec<Source<I>>,
    stamp: Option<(Stamp<I>, u64)>,
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
            stamp: None,
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

    /// Stamps each decoded message with its event time (in the app's own units), for every
    /// source of this stream. The engine derives each connection's watermark as the largest
    /// time it has read minus `lateness`, carries the minimum through every stage, and counts
    /// a message older than its stage's watermark as late (see [`Keyed::late_to`]). Messages
    /// after a stage carry the time of the message (or timer) they came from.
    pub fn event_time(
        mut self,
        stamp: impl Fn(&I) -> u64 + Send + Sync + 'static,
        lateness: u64,
    ) -> Self {
        self.stamp = Some((Arc::new(stamp), lateness));
        self
    }
}

impl<I: Send + 'static, T: 'static> Stream<I, T> {
    pub fn map<U: 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<I, U> {
        self.flat_map(move |t, out| out.emit(f(t)))
    }

    pub fn filter(self, keep: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<I, T> {
        self.flat_map(move |t, out| {
            if keep(&t) {
                out.emit(t)
            }
        })
    }

    pub fn flat_map<U: 'static>(
        self,
        f: impl Fn(T, &mut Emit<U>) + Send + Sync + 'static,
    ) -> Stream<I, U> {
        Stream {
            sources: self.sources,
            stamp: self.stamp,
            chain: then(self.chain, f),
        }
    }
}

impl<I: Send + 'static, T: Message> Stream<I, T> {
    /// Names the key of each message: all messages with equal key bytes see one state entity.
    pub fn key_by(self, key: impl Fn(&T) -> &[u8] + Send + Sync + 'static) -> Keyed<T> {
        let key: KeyFn<T> = Arc::new(key);
        let event_time = self.stamp.is_some();
        let names = self.sources.iter().map(|s| s.name.clone()).collect();
        let sources = (self.sources.into_iter())
            .map(|s| {
                let def = SourceDef {
                    decode: s.decode,
                    stamp: self.stamp.clone(),
                    pre: self.chain.clone(),
                    key: key.clone(),
                };
                Arc::new(move || def.pipeline()) as _
            })
            .collect();
        Keyed {
            built: Built {
                source_names: names,
                dataflow: Dataflow {
                    sources,
                    stages: Vec::new(),
                    sinks: Vec::new(),
                },
                event_time,
            },
            key,
            late: None,
        }
    }
}

/// What the builder has erased so far: the sources and the stages before the open one.
struct Built {
    source_names: Vec<String>,
    dataflow: Dataflow,
    event_time: bool,
}

impl Built {
    /// The index of sink `name` (a new one, or one named before).
    fn sink(&mut self, name: &str) -> usize {
        let sinks = &mut self.dataflow.sinks;
        sinks.iter().position(|s| s == name).unwrap_or_else(|| {
            sinks.push(name.to_owned());
            sinks.len() - 1
        })
    }
}

/// A stream with a key, ready for its stateful step.
pub struct Keyed<T> {
    built: Built,
    key: KeyFn<T>,
    late: Late<T>,
}

impl<T: Message> Keyed<T> {
    /// Sends messages later than the stage's watermark to sink `name` (by default they are
    /// dropped; either way status counts them).
    pub fn late_to(
        mut self,
        name: &str,
        encode: impl Fn(&T, &mut Vec<u8>) + Send + Sync + 'static,
    ) -> Self {
        let sink = self.built.sink(name);
        self.late = Some(Arc::new(move |t, ingress_ns, sinks| {
            sinks[sink].push(ingress_ns, |bytes| encode(t, bytes))
        }));
        self
    }

    /// The stateful step: runs on the core that owns the message's key, with that key's state.
    pub fn stateful<S: State, R: 'static>(
        self,
        step: impl Fn(&mut S, T, &mut Emit<R>) + Send + Sync + 'static,
    ) -> Outputs<T, S, R, R> {
        self.outputs(StepFn::Plain(Arc::new(step)), None)
    }

    /// A stateful step with timers: `step` may ask for a callback ([`Context::timer_at`]), and
    /// `on_timer` runs when the stage's watermark (event time) or the wall clock (processing
    /// time) passes it, with the entity's state. Timers are part of the entity: they move
    /// with it and fire once, on whichever core owns it then. On stop, once every source is
    /// read, the watermark passes the end of time and every event-time timer fires;
    /// processing-time timers still pending then do not.
    pub fn process<S: State, R: 'static>(
        self,
        step: impl Fn(&mut S, T, &mut Context<R>) + Send + Sync + 'static,
        on_timer: impl Fn(&mut S, Time, &mut Context<R>) + Send + Sync + 'static,
    ) -> Outputs<T, S, R, R> {
        self.outputs(StepFn::Timed(Arc::new(step)), Some(Arc::new(on_timer)))
    }

    /// Event-time windows per key: `fold` adds a message to its window's accumulator, `merge`
    /// joins two (sessions merge as they grow; tumbling and sliding windows never call it).
    /// Once the watermark passes a window's end it is emitted, as a [`Windowed`], and dropped.
    ///
    /// # Panics
    /// If the pipeline's sources stamp no event time (see [`Stream::event_time`]).
    pub fn window<A: State>(
        self,
        windows: Windows,
        fold: impl Fn(&mut A, &T) + Send + Sync + 'static,
        merge: impl Fn(&mut A, A) + Send + Sync + 'static,
    ) -> Outputs<T, Open<A>, Windowed<A>, Windowed<A>> {
        assert!(
            self.built.event_time,
            "window needs event time: call .event_time(..) on the sources"
        );
        let step = move |open: &mut Open<A>, t: T, ctx: &mut Context<Windowed<A>>| {
            // Messages from stamped sources, and from event-time timers, carry an event time;
            // outputs of processing-time timers do not, and no window takes them.
            let Some(ts) = ctx.event_time() else { return };
            open.add(
                &windows,
                ts,
                |a| fold(a, &t),
                &merge,
                |end| ctx.timer_at(Time::Event(end)),
            );
        };
        let on_timer = |open: &mut Open<A>, at: Time, ctx: &mut Context<Windowed<A>>| {
            let Time::Event(watermark) = at else { return };
            for w in open.close(watermark) {
                let key = ctx.key().to_vec();
                ctx.emit(Windowed {
                    key,
                    start: w.start,
                    end: w.end,
                    value: w.acc,
                });
            }
        };
        self.process(step, on_timer)
    }

    fn outputs<S: State, R: 'static>(
        self,
        step: StepFn<S, T, R>,
        on_timer: Option<TimerFn<S, R>>,
    ) -> Outputs<T, S, R, R> {
        Outputs {
            built: self.built,
            key: self.key,
            late: self.late,
            step,
            on_timer,
            post: Arc::new(|r, out| out(r)),
            taps: Vec::new(),
        }
    }
}

/// A closed window of one key, as [`Keyed::window`] emits it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Windowed<A> {
    pub key: Vec<u8>,
    pub start: u64,
    pub end: u64,
    pub value: A,
}

/// What a stateful step emits, through further stateless steps.
pub struct Outputs<T, S, R, O> {
    built: Built,
    key: KeyFn<T>,
    late: Late<T>,
    step: StepFn<S, T, R>,
    on_timer: Option<TimerFn<S, R>>,
    post: Chain<R, O>,
    taps: Vec<Tap<O>>,
}

impl<T: Message, S: State, R: 'static, O: 'static> Outputs<T, S, R, O> {
    pub fn map<U: 'static>(
        self,
        f: impl Fn(O) -> U + Send + Sync + 'static,
    ) -> Outputs<T, S, R, U> {
        self.flat_map(move |o, out| out.emit(f(o)))
    }

    pub fn filter(self, keep: impl Fn(&O) -> bool + Send + Sync + 'static) -> Outputs<T, S, R, O> {
        self.flat_map(move |o, out| {
            if keep(&o) {
                out.emit(o)
            }
        })
    }

    /// # Panics
    /// After [`Self::also_sink`]: copy outputs to another sink after the stateless steps.
    pub fn flat_map<U: 'static>(
        self,
        f: impl Fn(O, &mut Emit<U>) + Send + Sync + 'static,
    ) -> Outputs<T, S, R, U> {
        assert!(
            self.taps.is_empty(),
            "also_sink comes after a stage's stateless steps"
        );
        Outputs {
            built: self.built,
            key: self.key,
            late: self.late,
            step: self.step,
            on_timer: self.on_timer,
            post: then(self.post, f),
            taps: Vec::new(),
        }
    }

    /// Also writes the outputs `select` picks to sink `name` (as `encode` writes them); every
    /// output still goes on.
    pub fn also_sink<U>(
        mut self,
        name: &str,
        select: impl Fn(&O) -> Option<U> + Send + Sync + 'static,
        encode: impl Fn(&U, &mut Vec<u8>) + Send + Sync + 'static,
    ) -> Self {
        let sink = self.built.sink(name);
        self.taps.push(Arc::new(move |o, ingress_ns, sinks| {
            if let Some(u) = select(o) {
                sinks[sink].push(ingress_ns, |bytes| encode(&u, bytes))
            }
        }));
        self
    }

    /// Ends the pipeline at sink `name`; `encode` appends one output's bytes.
    pub fn sink(
        mut self,
        name: &str,
        encode: impl Fn(&O, &mut Vec<u8>) + Send + Sync + 'static,
    ) -> Pipeline {
        let sink = self.built.sink(name);
        let encode = Arc::new(encode);
        let built = self.close(Arc::new(ToSink { sink, encode }));
        Pipeline { built }
    }

    /// Ends the pipeline at the sinks of its [`Self::also_sink`]s: outputs none of them picks
    /// go nowhere.
    ///
    /// # Panics
    /// Without an `also_sink`: the pipeline would write nothing.
    pub fn end(self) -> Pipeline {
        assert!(
            !self.taps.is_empty(),
            "end() closes a pipeline whose outputs go to its also_sinks; it has none"
        );
        let built = self.close(Arc::new(Discard));
        Pipeline { built }
    }

    fn close(mut self, outlet: Arc<dyn OutletDef<O>>) -> Built {
        let outlet: Arc<dyn OutletDef<O>> = if self.taps.is_empty() {
            outlet
        } else {
            Arc::new(Taps {
                taps: self.taps,
                then: outlet,
            })
        };
        let stages = &mut self.built.dataflow.stages;
        let fns = StageFns {
            stage: stages.len() as u32,
            key: self.key,
            step: self.step,
            on_timer: self.on_timer,
            post: self.post,
            outlet,
            late: self.late,
        };
        stages.push(Arc::new(Typed(Arc::new(fns))) as Arc<dyn StageDef>);
        self.built
    }
}

impl<T: Message, S: State, R: 'static, O: Message> Outputs<T, S, R, O> {
    /// Keys the outputs for another stateful stage.
    pub fn key_by(self, key: impl Fn(&O) -> &[u8] + Send + Sync + 'static) -> Keyed<O> {
        let key: KeyFn<O> = Arc::new(key);
        let stage = self.built.dataflow.stages.len() as u32 + 1;
        let next = key.clone();
        let built = self.close(Arc::new(ToStage { stage, key: next }));
        Keyed {
            built,
            key,
            late: None,
        }
    }
}

/// A finished pipeline, to be given a name.
pub struct Pipeline {
    built: Built,
}

impl Pipeline {
    pub fn named(self, name: impl Into<String>) -> App {
        App {
            name: name.into(),
            sources: self.built.source_names,
            dataflow: Arc::new(self.built.dataflow),
        }
    }
}

/// An app: a named pipeline the engine can run on any number of cores.
#[derive(Clone)]
pub struct App {
    name: String,
    sources: Vec<String>,
    pub(crate) dataflow: Arc<Dataflow>,
}

impl App {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source names, in the order they were added.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The sink names, in the order they were first named.
    pub fn sinks(&self) -> &[String] {
        &self.dataflow.sinks
    }

    /// How many keyed stages the pipeline has.
    pub fn stages(&self) -> usize {
        self.dataflow.stages.len()
    }
}
