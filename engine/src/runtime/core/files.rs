//! A core's file sources: a task per file that reads it from its checkpointed offset, decodes,
//! routes and applies in bounded steps like a connection, and records after each step the
//! offset of the first message not routed yet (what a checkpoint's barrier notes). At the end
//! of the file it finishes, or with `follow` waits for more, like `tail -f`. A file source is
//! read by its node's first core, which no shrink removes.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use quokka_io::file::FileReader;

use super::replay::Replay;
use super::sources::{is_cut, FRAMES_PER_STEP};
use super::Core;
use crate::dataflow::SourcePipeline;
use crate::metrics::now_ns;
use crate::runtime::messages::FileSource;

/// How often a followed file is looked at again once read to its end.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

pub(super) async fn read_file(core: Rc<Core>, file: FileSource) {
    let sources = &core.sources;
    sources
        .file_inputs
        .borrow_mut()
        .insert(file.source as u32, file.clone());
    let FileSource {
        source,
        input,
        offset,
    } = file;
    sources
        .file_offsets
        .borrow_mut()
        .insert(source as u32, offset);
    // Where a recovery to the checkpoint this run started from rewinds it.
    sources.note_start(core.durable.get(), source as u32, offset);
    let mut reader =
        match FileReader::open(&input.path, offset, input.format, core.config.max_frame) {
            Ok(r) if input.follow => r.follow(),
            Ok(r) => r,
            Err(e) => {
                tracing::error!(core = core.id, "file source: {e}");
                core.report.borrow_mut().connection_errors += 1;
                sources
                    .file_ended
                    .borrow_mut()
                    .insert(source as u32, format!("stopped: {e}"));
                return;
            }
        };
    sources.files_open.set(sources.files_open.get() + 1);
    core.report.borrow_mut().connections += 1;
    let key = sources.next_key();
    let mut pipeline = core.dataflow.source_pipeline(source);
    tracing::info!(core = core.id, path = %input.path.display(), offset, "reading file source");
    let ended = loop {
        if is_cut(&core) {
            break Ok(());
        }
        let now = now_ns();
        let step = step(&core, source as u32, &mut reader, &mut *pipeline, now).await;
        if let Ok(Stepped::Rewind(to)) = step {
            tracing::info!(core = core.id, path = %input.path.display(), from = reader.offset(), to, "file source rewound for a recovery");
            match FileReader::open(&input.path, to, input.format, core.config.max_frame) {
                Ok(r) => reader = if input.follow { r.follow() } else { r },
                Err(e) => break Err(e.to_string()),
            }
            continue;
        }
        let replayed = (sources.file_replays.borrow().get(&(source as u32)))
            .is_some_and(|r| !r.replays(reader.offset()));
        if replayed {
            tracing::info!(core = core.id, path = %input.path.display(), "file source replayed what a recovery needed");
            sources.file_replays.borrow_mut().remove(&(source as u32));
        }
        sources
            .file_offsets
            .borrow_mut()
            .insert(source as u32, reader.offset());
        core.source_mark(key, pipeline.watermark(), now);
        match step {
            Ok(Stepped::More) => {
                core.poke_inbox();
                future::yield_now().await;
            }
            Ok(Stepped::AtEnd) if input.follow => {
                if !core.sleep_unless_done(FOLLOW_POLL).await {
                    break Ok(());
                }
            }
            Ok(Stepped::AtEnd) => break reader.finish().map_err(|e| e.to_string()),
            Ok(Stepped::Rewind(_)) => unreachable!("handled above"),
            Err(e) => break Err(e),
        }
    };
    core.source_mark(key, None, now_ns());
    let end = match &ended {
        Ok(()) if !input.follow && !is_cut(&core) => "read to its end".to_string(),
        Ok(()) => "stopped with the engine".to_string(),
        Err(e) => format!("stopped: {e}"),
    };
    sources.file_ended.borrow_mut().insert(source as u32, end);
    match ended {
        Ok(()) => {
            tracing::info!(core = core.id, path = %input.path.display(), offset = reader.offset(), "file source read")
        }
        Err(e) => {
            tracing::error!(core = core.id, "file source: {e}");
            core.report.borrow_mut().connection_errors += 1;
        }
    }
    sources.files_open.set(sources.files_open.get() - 1);
    sources.task_ended();
}

enum Stepped {
    /// More messages may be waiting.
    More,
    /// The file is read to its end (for now).
    AtEnd,
    /// A recovery asks to read it again from this offset (nothing was routed).
    Rewind(u64),
}

/// One bounded step: up to [`FRAMES_PER_STEP`] messages decoded, routed and dispatched in one
/// synchronous action.
async fn step(
    core: &Core,
    source: u32,
    reader: &mut FileReader,
    pipeline: &mut dyn SourcePipeline,
    ingress_ns: u64,
) -> Result<Stepped, String> {
    core.wait_room().await;
    let mut replays = core.sources.file_replays.borrow_mut();
    // After the last wait: a recovery's switch came before anything this step routes.
    if let Some(r) = core.sources.take_file_rewind(source) {
        // A replay under way here (an earlier recovery's) has given some slots more.
        let (position, older) = (reader.offset(), replays.get(&source));
        let replay = Replay::rewound(position, &r.restored, r.n_slots, older);
        replays.insert(source, replay);
        return Ok(Stepped::Rewind(r.to));
    }
    let mut replay = replays.get_mut(&source);
    let table = core.table.borrow().clone();
    let mut frames = 0;
    let mut read_nothing = false;
    let start = reader.offset();
    let result = loop {
        if frames == FRAMES_PER_STEP {
            break Ok(Stepped::More);
        }
        let at = reader.offset();
        let routes = match replay.as_deref_mut() {
            Some(r) => r.routes(at, &table),
            None => &table,
        };
        match reader.next_message() {
            Ok(Some(message)) => match pipeline.push(message, ingress_ns, routes) {
                Ok(()) => frames += 1,
                // A file cannot be sent again: the message is skipped (and counted), the rest
                // read; a restart skips it the same way.
                Err(e) => {
                    let at = reader.offset();
                    tracing::error!(core = core.id, "{} before byte {at}: a message was rejected by the decoder and skipped: {e}", reader.path().display());
                    core.report.borrow_mut().connection_errors += 1;
                }
            },
            Ok(None) if read_nothing => break Ok(Stepped::AtEnd),
            Ok(None) => match reader.read_more() {
                Ok(0) => read_nothing = true,
                Ok(_) => {}
                Err(e) => break Err(e.to_string()),
            },
            Err(e) => break Err(e.to_string()),
        }
    };
    drop(replays);
    let mut report = core.report.borrow_mut();
    report.frames += frames as u64;
    report.bytes_in += reader.offset().saturating_sub(start);
    drop(report);
    core.dispatch(pipeline);
    result
}
