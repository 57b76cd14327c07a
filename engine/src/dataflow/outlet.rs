//! Where a stage's outputs go after its stateless steps: the next stage's `key_by` (batches per
//! owner core), a sink, or taps that copy some outputs to other sinks on the way. The source's
//! side of the same: a connection's pipeline up to the first stage.

use std::sync::Arc;

use super::{
    Batch, Chain, Decode, Encode, KeyFn, KeyedMsg, Meta, Out, SourcePipeline, Stamp, NO_TIME,
};
use crate::hash::{slot_of, stable_hash};
use crate::routing::{CoreId, RoutingTable, NOWHERE};
use crate::sink_buffer::SinkBuffer;
use crate::step::DecodeError;

/// Takes a stage's outputs on one core.
pub(crate) trait Outlet<O> {
    fn push(&mut self, o: O, meta: Meta, out: &mut Out);
    /// Takes the batches waiting for the next stage, with the core each is for.
    fn take_batches(&mut self, each: &mut dyn FnMut(CoreId, Batch));
}

/// Makes an [`Outlet`] per core.
pub(crate) trait OutletDef<O>: Send + Sync {
    fn outlet(&self) -> Box<dyn Outlet<O>>;
}

/// Outputs keyed for stage `stage`, in batches per owner core.
pub(crate) struct ToStage<O> {
    pub stage: u32,
    pub key: KeyFn<O>,
}

impl<O: Send + 'static> OutletDef<O> for ToStage<O> {
    fn outlet(&self) -> Box<dyn Outlet<O>> {
        Box::new(Router {
            stage: self.stage,
            key: self.key.clone(),
            batches: Vec::new(),
        })
    }
}

pub(crate) struct Router<O> {
    stage: u32,
    key: KeyFn<O>,
    /// Waiting messages, indexed by owner core.
    batches: Vec<Vec<KeyedMsg<O>>>,
}

impl<O: Send + 'static> Router<O> {
    fn route(&mut self, value: O, meta: Meta, routes: &RoutingTable) {
        let hash = stable_hash((self.key)(&value));
        let owner = routes.owner(slot_of(hash, routes.n_slots()));
        if owner == NOWHERE {
            // A replayed message for a slot that has applied it already.
            return;
        }
        let owner = usize::from(owner);
        if owner >= self.batches.len() {
            self.batches.resize_with(owner + 1, Vec::new);
        }
        self.batches[owner].push(KeyedMsg {
            hash,
            ingress_ns: meta.ingress_ns,
            event: meta.event,
            value,
        });
    }
}

impl<O: Send + 'static> Outlet<O> for Router<O> {
    fn push(&mut self, o: O, meta: Meta, out: &mut Out) {
        self.route(o, meta, out.routes)
    }

    fn take_batches(&mut self, each: &mut dyn FnMut(CoreId, Batch)) {
        for (core, batch) in self.batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                let msgs = Box::new(std::mem::take(batch));
                each(
                    core as CoreId,
                    Batch {
                        stage: self.stage,
                        from: 0,
                        msgs,
                    },
                );
            }
        }
    }
}

/// Outputs encoded into sink `sink`.
pub(crate) struct ToSink<O> {
    pub sink: usize,
    pub encode: Encode<O>,
}

impl<O: 'static> OutletDef<O> for ToSink<O> {
    fn outlet(&self) -> Box<dyn Outlet<O>> {
        Box::new(ToSink {
            sink: self.sink,
            encode: self.encode.clone(),
        })
    }
}

impl<O> Outlet<O> for ToSink<O> {
    fn push(&mut self, o: O, meta: Meta, out: &mut Out) {
        let encode = &self.encode;
        out.sinks[self.sink].push(meta.ingress_ns, |bytes| encode(&o, bytes));
    }

    fn take_batches(&mut self, _: &mut dyn FnMut(CoreId, Batch)) {}
}

/// Drops outputs (the pipeline's sinks are its taps).
pub(crate) struct Discard;

impl<O: 'static> OutletDef<O> for Discard {
    fn outlet(&self) -> Box<dyn Outlet<O>> {
        Box::new(Discard)
    }
}

impl<O> Outlet<O> for Discard {
    fn push(&mut self, _: O, _: Meta, _: &mut Out) {}

    fn take_batches(&mut self, _: &mut dyn FnMut(CoreId, Batch)) {}
}

/// Copies some outputs to their own sink (encoding writes them; `None` skips one).
pub(crate) type Tap<O> = Arc<dyn Fn(&O, u64, &mut [SinkBuffer]) + Send + Sync>;

/// Taps, then the outlet every output goes on to.
pub(crate) struct Taps<O> {
    pub taps: Vec<Tap<O>>,
    pub then: Arc<dyn OutletDef<O>>,
}

impl<O: 'static> OutletDef<O> for Taps<O> {
    fn outlet(&self) -> Box<dyn Outlet<O>> {
        Box::new(TapsOnCore {
            taps: self.taps.clone(),
            then: self.then.outlet(),
        })
    }
}

struct TapsOnCore<O> {
    taps: Vec<Tap<O>>,
    then: Box<dyn Outlet<O>>,
}

impl<O> Outlet<O> for TapsOnCore<O> {
    fn push(&mut self, o: O, meta: Meta, out: &mut Out) {
        for tap in &self.taps {
            tap(&o, meta.ingress_ns, out.sinks);
        }
        self.then.push(o, meta, out)
    }

    fn take_batches(&mut self, each: &mut dyn FnMut(CoreId, Batch)) {
        self.then.take_batches(each)
    }
}

/// A source's decoder and event time, the stateless steps after it, and the first stage's key.
pub(crate) struct SourceDef<I, T> {
    pub decode: Decode<I>,
    pub stamp: Option<(Stamp<I>, u64)>,
    pub pre: Chain<I, T>,
    pub key: KeyFn<T>,
}

impl<I: 'static, T: Send + 'static> SourceDef<I, T> {
    pub fn pipeline(&self) -> Box<dyn SourcePipeline> {
        Box::new(TypedSource {
            decode: self.decode.clone(),
            stamp: self.stamp.clone(),
            pre: self.pre.clone(),
            router: Router {
                stage: 0,
                key: self.key.clone(),
                batches: Vec::new(),
            },
            latest: None,
        })
    }
}

struct TypedSource<I, T> {
    decode: Decode<I>,
    stamp: Option<(Stamp<I>, u64)>,
    pre: Chain<I, T>,
    router: Router<T>,
    /// The largest event time read so far.
    latest: Option<u64>,
}

impl<I, T: Send + 'static> SourcePipeline for TypedSource<I, T> {
    fn push(
        &mut self,
        frame: &[u8],
        ingress_ns: u64,
        routes: &RoutingTable,
    ) -> Result<(), DecodeError> {
        let input = (self.decode)(frame)?;
        let event = match &self.stamp {
            Some((stamp, _)) => {
                // The end of time is the "no event time" mark: a stamp there is one tick less.
                let t = stamp(&input).min(NO_TIME - 1);
                self.latest = self.latest.max(Some(t));
                t
            }
            None => NO_TIME,
        };
        let meta = Meta { ingress_ns, event };
        let Self { pre, router, .. } = self;
        pre(input, &mut |value| router.route(value, meta, routes));
        Ok(())
    }

    fn take_batches(&mut self, each: &mut dyn FnMut(CoreId, Batch)) {
        self.router.take_batches(each)
    }

    fn watermark(&self) -> Option<u64> {
        let (_, lateness) = self.stamp.as_ref()?;
        Some(self.latest?.saturating_sub(*lateness))
    }

    fn latest(&self) -> Option<u64> {
        self.latest
    }

    fn resume(&mut self, latest: Option<u64>) {
        self.latest = self.latest.max(latest);
    }
}
