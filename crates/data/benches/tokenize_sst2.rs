//! Criterion benchmark of the data pipeline on all 67,349 SST-2 training sentences
//! (max_seq_len 128, batches of 32): tokenize, batch, and both. `cargo bench -p loraplus-data`.
//! For the side-by-side comparison with HuggingFace in Python see `side_by_side.sh`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loraplus_data::paths::{glue_dir, model_dir};
use loraplus_data::{
    read_split, DataLoader, Encoder, LoaderConfig, Position, ReadOptions, Split, Task,
};

fn bench(c: &mut Criterion) {
    let task = Task::from_name("sst2").expect("task");
    let ds =
        read_split(&glue_dir(), task, Split::Train, ReadOptions::default()).expect("SST-2 train");
    let encoder = Encoder::from_model_dir(&model_dir(), 128).expect("tokenizer");
    let data = Arc::new(encoder.encode_dataset(&ds).expect("tokenize"));
    let loader =
        DataLoader::new(data, encoder.pad_id(), LoaderConfig::train(32, 42)).expect("loader");

    let mut g = c.benchmark_group("sst2_train");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ds.len() as u64));
    g.bench_function("tokenize", |b| {
        b.iter(|| black_box(encoder.encode_dataset(&ds).expect("tokenize")))
    });
    g.bench_function("batch_32", |b| {
        b.iter(|| {
            for batch in loader.iter(Position::default()).expect("iter") {
                black_box(batch.expect("batch"));
            }
        })
    });
    g.bench_function("tokenize_and_batch_32", |b| {
        b.iter(|| {
            let data = Arc::new(encoder.encode_dataset(&ds).expect("tokenize"));
            let loader = DataLoader::new(data, encoder.pad_id(), LoaderConfig::train(32, 42))
                .expect("loader");
            for batch in loader.iter(Position::default()).expect("iter") {
                black_box(batch.expect("batch"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
