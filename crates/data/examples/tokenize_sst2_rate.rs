//! Throughput of the data pipeline on all 67,349 SST-2 training sentences: tokenize (rayon,
//! max_seq_len 128, no cache) and build every batch of 32 as padded i64 tensors (ids, mask, type
//! ids, labels). Prints one line that `benches/side_by_side.sh` reads:
//! `rust sentences=67349 seconds=... sentences_per_s=... (tokenize ... s, batch ... s)`.
//!
//! usage: cargo run --release -p loraplus-data --example tokenize_sst2_rate [-- BATCH_SIZE]

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use loraplus_data::paths::{glue_dir, model_dir};
use loraplus_data::{
    read_split, DataLoader, Encoder, LoaderConfig, Position, ReadOptions, Split, Task,
};

fn main() -> Result<()> {
    let batch_size: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().context("BATCH_SIZE must be a number")?,
        None => 32,
    };
    let task = Task::from_name("sst2")?;
    let ds = read_split(&glue_dir(), task, Split::Train, ReadOptions::default())?;
    let encoder = Encoder::from_model_dir(&model_dir(), 128)?;

    // Warm-up: rayon pool, allocator, page cache.
    encoder.encode_dataset(&ds)?;

    let t0 = Instant::now();
    let data = Arc::new(encoder.encode_dataset(&ds)?);
    let t1 = Instant::now();
    let loader = DataLoader::new(data, encoder.pad_id(), LoaderConfig::train(batch_size, 42))?;
    let mut rows = 0usize;
    for batch in loader.iter(Position::default())? {
        rows += batch?.size();
    }
    let t2 = Instant::now();

    let total = (t2 - t0).as_secs_f64();
    println!(
        "rust sentences={rows} seconds={total:.4} sentences_per_s={:.0} (tokenize {:.4} s, batch {:.4} s, {} threads)",
        rows as f64 / total,
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        rayon::current_num_threads()
    );
    Ok(())
}
