//! Cross-core channel choice: flume against glommio's shared channel, between two pinned
//! executors, for single messages and for batches.

use std::time::Instant;

use anyhow::{anyhow, Result};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};

use crate::util::median;

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Messages per run.
    #[arg(long, default_value_t = 4_000_000)]
    messages: usize,
}

type Batch = Vec<u64>;

pub fn run(args: Args) -> Result<()> {
    println!(
        "# cross-core channel, producer on CPU 0, consumer on CPU 1, capacity 64 ({} runs)",
        args.runs
    );
    for batch in [1usize, 64, 512] {
        let batches = args.messages / batch;
        let mut flume_ns = Vec::new();
        let mut glommio_ns = Vec::new();
        for _ in 0..args.runs {
            flume_ns.push(time_flume(batches, batch)? / args.messages as f64);
            glommio_ns.push(time_glommio(batches, batch)? / args.messages as f64);
        }
        println!(
            "batch {batch:>3}: flume {:.1} ns/msg, glommio shared_channel {:.1} ns/msg",
            median(&flume_ns),
            median(&glommio_ns)
        );
    }
    Ok(())
}

fn batch_of(size: usize, i: usize) -> Batch {
    vec![i as u64; size]
}

/// Nanoseconds to move `batches` batches of `size` through flume.
fn time_flume(batches: usize, size: usize) -> Result<f64> {
    let (tx, rx) = flume::bounded::<Batch>(64);
    let started = Instant::now();
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(1))
        .spawn(move || async move {
            let mut sum = 0u64;
            while let Ok(b) = rx.recv_async().await {
                sum += b.iter().sum::<u64>();
            }
            sum
        })
        .map_err(|e| anyhow!("{e}"))?;
    let producer = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            for i in 0..batches {
                tx.send_async(batch_of(size, i))
                    .await
                    .expect("consumer alive");
            }
        })
        .map_err(|e| anyhow!("{e}"))?;
    producer.join().map_err(|e| anyhow!("{e}"))?;
    std::hint::black_box(consumer.join().map_err(|e| anyhow!("{e}"))?);
    Ok(started.elapsed().as_nanos() as f64)
}

/// Nanoseconds to move `batches` batches of `size` through a glommio shared channel.
fn time_glommio(batches: usize, size: usize) -> Result<f64> {
    let (tx, rx) = shared_channel::new_bounded::<Batch>(64);
    let started = Instant::now();
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(1))
        .spawn(move || async move {
            let rx = rx.connect().await;
            let mut sum = 0u64;
            while let Some(b) = rx.recv().await {
                sum += b.iter().sum::<u64>();
            }
            sum
        })
        .map_err(|e| anyhow!("{e}"))?;
    let producer = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let tx = tx.connect().await;
            for i in 0..batches {
                tx.send(batch_of(size, i)).await.expect("consumer alive");
            }
        })
        .map_err(|e| anyhow!("{e}"))?;
    producer.join().map_err(|e| anyhow!("{e}"))?;
    std::hint::black_box(consumer.join().map_err(|e| anyhow!("{e}"))?);
    Ok(started.elapsed().as_nanos() as f64)
}
