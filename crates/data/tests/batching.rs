//! Batching: order depends only on (seed, epoch), every example once per epoch, drop_last,
//! length bucketing, dynamic and fixed padding, labels of each kind, exact resume from a saved
//! position, and the prefetch thread giving the same batches as the synchronous path.
//! Causal-LM data: token labels padded with -100 on the right or the left, position ids
//! collated, resume unchanged, subsets, and the padding fraction.

use std::collections::BTreeSet;
use std::sync::Arc;

use loraplus_data::{
    padding_fraction, Batch, DataLoader, Labels, LmExample, LoaderConfig, Padding, PaddingSide,
    Position, TokenizedDataset, IGNORE_INDEX,
};
use tch::{Kind, Tensor};

const PAD: u32 = 0;

/// 103 examples of lengths 3..=40: `[101, 1000+i, ..., 102]`, second segment in the last third.
fn dataset(labels: fn(usize) -> Labels) -> Arc<TokenizedDataset> {
    let n = 103;
    let examples = (0..n)
        .map(|i| {
            let len = 3 + (i * 37) % 38;
            let mut ids = vec![101u32];
            ids.extend((1..len - 1).map(|k| 1000 + (i * 50 + k) as u32));
            ids.push(102);
            let types = (0..len).map(|k| u32::from(k >= 2 * len / 3)).collect();
            (ids, types)
        })
        .collect();
    Arc::new(TokenizedDataset::from_examples(examples, labels(n)).unwrap())
}

fn classes(n: usize) -> Labels {
    Labels::Classes((0..n).map(|i| (i % 3) as i64).collect())
}

fn loader(cfg: LoaderConfig) -> DataLoader {
    DataLoader::new(dataset(classes), PAD, cfg).unwrap()
}

fn collect(it: impl Iterator<Item = anyhow::Result<Batch>>) -> Vec<Batch> {
    it.map(|b| b.unwrap()).collect()
}

fn same_batch(a: &Batch, b: &Batch) {
    assert_eq!(a.indices, b.indices);
    assert_eq!(a.position, b.position);
    assert!(a.input_ids.equal(&b.input_ids));
    assert!(a.attention_mask.equal(&b.attention_mask));
    assert!(a.token_type_ids.equal(&b.token_type_ids));
    match (&a.labels, &b.labels) {
        (Some(x), Some(y)) => assert!(x.equal(y)),
        (None, None) => {}
        _ => panic!("labels differ"),
    }
    match (&a.position_ids, &b.position_ids) {
        (Some(x), Some(y)) => assert!(x.equal(y)),
        (None, None) => {}
        _ => panic!("position ids differ"),
    }
}

/// 23 causal-LM examples of lengths 2..=12: ids `10*i + k`, the first half of each masked;
/// with `packed`, position ids of two documents per example.
fn lm_dataset(packed: bool) -> Arc<TokenizedDataset> {
    let examples = (0..23)
        .map(|i| {
            let len = 2 + (i * 7) % 11;
            let input_ids: Vec<u32> = (0..len).map(|k| (10 * i + k) as u32).collect();
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(k, &id)| {
                    if k < len / 2 {
                        IGNORE_INDEX
                    } else {
                        i64::from(id)
                    }
                })
                .collect();
            let position_ids = packed.then(|| {
                (0..len)
                    .map(|k| if k < len / 2 { k } else { k - len / 2 } as u32)
                    .collect()
            });
            LmExample {
                input_ids,
                labels,
                position_ids,
            }
        })
        .collect();
    Arc::new(TokenizedDataset::from_lm_examples(examples).unwrap())
}

fn i64s(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).unwrap()
}

#[test]
fn token_labels_are_padded_with_ignore_index_on_either_side() {
    for packed in [false, true] {
        let data = lm_dataset(packed);
        let Labels::Tokens(labels) = data.labels() else {
            panic!("token labels expected")
        };
        for side in [PaddingSide::Right, PaddingSide::Left] {
            let cfg = LoaderConfig {
                padding_side: side,
                ..LoaderConfig::train(5, 9)
            };
            let l = DataLoader::new(data.clone(), 3, cfg).unwrap();
            for b in collect(l.iter(Position::start_of(1)).unwrap()) {
                let ids = i64s(&b.input_ids);
                let mask = i64s(&b.attention_mask);
                let lab = i64s(b.labels.as_ref().unwrap());
                assert_eq!(b.labels.as_ref().unwrap().kind(), Kind::Int64);
                assert_eq!(b.position_ids.is_some(), packed);
                let pos = b.position_ids.as_ref().map(i64s);
                let width = ids[0].len();
                assert_eq!(
                    width,
                    b.indices.iter().map(|&i| data.seq_len(i)).max().unwrap()
                );
                for (r, &i) in b.indices.iter().enumerate() {
                    let ex = data.get(i);
                    let n = ex.input_ids.len();
                    let pad = width - n;
                    let (real, padding) = match side {
                        PaddingSide::Right => (0..n, n..width),
                        PaddingSide::Left => (pad..width, 0..pad),
                    };
                    let want: Vec<i64> = ex.input_ids.iter().map(|&x| i64::from(x)).collect();
                    assert_eq!(ids[r][real.clone()], want[..]);
                    // A row's first token is never a target; the rest are the example's labels.
                    assert_eq!(lab[r][real.start], IGNORE_INDEX);
                    assert_eq!(lab[r][real.start + 1..real.end], labels[i][1..]);
                    assert!(mask[r][real.clone()].iter().all(|&m| m == 1));
                    for k in padding {
                        assert_eq!((ids[r][k], mask[r][k], lab[r][k]), (3, 0, IGNORE_INDEX));
                        if let Some(p) = &pos {
                            assert_eq!(p[r][k], 0);
                        }
                    }
                    if let (Some(p), Some(want)) = (&pos, ex.position_ids) {
                        let want: Vec<i64> = want.iter().map(|&x| i64::from(x)).collect();
                        assert_eq!(p[r][real], want[..]);
                    }
                }
            }
        }
    }
}

#[test]
fn lm_resume_and_prefetch_are_exact() {
    let cfg = LoaderConfig {
        bucket_multiplier: Some(2),
        padding_side: PaddingSide::Left,
        ..LoaderConfig::train(4, 3)
    };
    let l = DataLoader::new(lm_dataset(true), 0, cfg).unwrap();
    let full = collect(l.iter(Position::start_of(2)).unwrap());
    let saved = full[2].next_position();
    let resumed = collect(l.prefetch(saved).unwrap());
    assert_eq!(resumed.len(), full.len() - 3);
    for (a, b) in full[3..].iter().zip(&resumed) {
        same_batch(a, b);
    }
}

#[test]
fn lm_dataset_checks_and_subsets() {
    let ex = |ids: Vec<u32>, labels: Vec<i64>, pos: Option<Vec<u32>>| LmExample {
        input_ids: ids,
        labels,
        position_ids: pos,
    };
    // Labels must match ids; position ids all or none.
    assert!(TokenizedDataset::from_lm_examples(vec![ex(vec![1, 2], vec![1], None)]).is_err());
    assert!(TokenizedDataset::from_lm_examples(vec![
        ex(vec![1, 2], vec![1, 2], Some(vec![0, 1])),
        ex(vec![1, 2], vec![1, 2], None)
    ])
    .is_err());
    assert!(TokenizedDataset::from_lm_examples(vec![ex(vec![], vec![], None)]).is_err());
    let data = lm_dataset(true);
    let sub = data.select(&[4, 1]).unwrap();
    assert_eq!(sub.len(), 2);
    assert_eq!(sub.get(0), data.get(4));
    assert_eq!(sub.get(1), data.get(1));
    assert_eq!(sub.labels(), &data.labels().select(&[4, 1]));
    assert!(data.select(&[23]).is_err());
    let total: usize = (0..data.len()).map(|i| data.get(i).input_ids.len()).sum();
    assert_eq!(data.num_tokens(), total);
    assert!(data.num_target_tokens() > 0 && data.num_target_tokens() < total);
}

#[test]
fn padding_fraction_counts_pad_tokens() {
    let data = TokenizedDataset::from_examples(
        vec![
            (vec![1, 2, 3, 4], vec![0; 4]),
            (vec![1, 2], vec![0; 2]),
            (vec![5], vec![0]),
        ],
        Labels::None,
    )
    .unwrap();
    // [4, 2] -> 2 pads of 8; [1] -> none.
    let f = padding_fraction(&data, &[vec![0, 1], vec![2]], None);
    assert!((f - 2.0 / 9.0).abs() < 1e-12, "{f}");
    // Fixed at 4: 2 + 3 pads of 12.
    let f = padding_fraction(&data, &[vec![0, 1], vec![2]], Some(4));
    assert!((f - 5.0 / 12.0).abs() < 1e-12, "{f}");
    let l = DataLoader::new(Arc::new(data), 0, LoaderConfig::eval(3)).unwrap();
    // One batch of all three, width 4: 5 pads of 12.
    assert!((l.padding_fraction(0) - 5.0 / 12.0).abs() < 1e-12);
}

#[test]
fn order_depends_only_on_seed_and_epoch() {
    let a = loader(LoaderConfig::train(8, 5));
    let b = loader(LoaderConfig::train(8, 5));
    assert_eq!(a.epoch_batches(3), b.epoch_batches(3));
    assert_ne!(a.epoch_batches(3), a.epoch_batches(4));
    let c = loader(LoaderConfig::train(8, 6));
    assert_ne!(a.epoch_batches(3), c.epoch_batches(3));
    // Evaluation order is the file order.
    let e = loader(LoaderConfig::eval(10));
    let flat: Vec<usize> = e.epoch_batches(7).concat();
    assert_eq!(flat, (0..103).collect::<Vec<_>>());
}

#[test]
fn every_example_once_per_epoch_and_drop_last() {
    for bucket in [None, Some(4)] {
        let cfg = LoaderConfig {
            bucket_multiplier: bucket,
            ..LoaderConfig::train(8, 1)
        };
        let l = loader(cfg.clone());
        let batches = l.epoch_batches(0);
        assert_eq!(batches.len(), 13);
        assert_eq!(l.batches_per_epoch(), 13);
        assert_eq!(
            batches.last().unwrap().len(),
            103 % 8,
            "the short batch is last"
        );
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());

        let d = loader(LoaderConfig {
            drop_last: true,
            ..cfg
        });
        let batches = d.epoch_batches(0);
        assert_eq!(batches.len(), 12);
        assert_eq!(d.batches_per_epoch(), 12);
        assert!(batches.iter().all(|b| b.len() == 8));
        assert_eq!(
            batches.concat().into_iter().collect::<BTreeSet<_>>().len(),
            96
        );
    }
}

fn padded_tokens(l: &DataLoader) -> i64 {
    collect(l.iter(Position::default()).unwrap())
        .iter()
        .map(|b| b.input_ids.numel() as i64)
        .sum()
}

#[test]
fn length_bucketing_pads_less() {
    let plain = loader(LoaderConfig::train(8, 2));
    let bucketed = loader(LoaderConfig {
        bucket_multiplier: Some(4),
        ..LoaderConfig::train(8, 2)
    });
    let real = plain.data().num_tokens() as i64;
    let (b, p) = (
        padded_tokens(&bucketed) - real,
        padded_tokens(&plain) - real,
    );
    assert!(b * 2 < p, "padding: bucketed {b} vs plain {p} tokens");
    // Within a window of 4 batches, lengths never increase from one batch to the next in
    // the sorted order (checked on the unshuffled batch order: no shuffle).
    let sorted = loader(LoaderConfig {
        bucket_multiplier: Some(4),
        ..LoaderConfig::eval(8)
    });
    let data = sorted.data().clone();
    for window in sorted.epoch_batches(0).concat().chunks(32) {
        assert!(window
            .windows(2)
            .all(|w| data.seq_len(w[0]) >= data.seq_len(w[1])));
    }
}

#[test]
fn padding_masks_and_type_ids() {
    let l = loader(LoaderConfig::eval(8));
    let data = l.data().clone();
    for b in collect(l.iter(Position::default()).unwrap()) {
        let longest = b.indices.iter().map(|&i| data.seq_len(i)).max().unwrap();
        assert_eq!(b.input_ids.size(), vec![b.size() as i64, longest as i64]);
        assert_eq!(b.input_ids.kind(), Kind::Int64);
        assert_eq!(b.attention_mask.kind(), Kind::Int64);
        assert_eq!(b.token_type_ids.kind(), Kind::Int64);
        let ids: Vec<Vec<i64>> = Vec::try_from(&b.input_ids).unwrap();
        let mask: Vec<Vec<i64>> = Vec::try_from(&b.attention_mask).unwrap();
        let types: Vec<Vec<i64>> = Vec::try_from(&b.token_type_ids).unwrap();
        for (row, &i) in b.indices.iter().enumerate() {
            let ex = data.get(i);
            let n = ex.input_ids.len();
            let want: Vec<i64> = ex.input_ids.iter().map(|&x| i64::from(x)).collect();
            assert_eq!(&ids[row][..n], want.as_slice());
            assert!(ids[row][n..].iter().all(|&x| x == i64::from(PAD)));
            assert!(
                mask[row][..n].iter().all(|&x| x == 1) && mask[row][n..].iter().all(|&x| x == 0)
            );
            let want_t: Vec<i64> = ex.token_type_ids.iter().map(|&x| i64::from(x)).collect();
            assert_eq!(&types[row][..n], want_t.as_slice());
            assert!(types[row][n..].iter().all(|&x| x == 0));
        }
        let labels: Vec<i64> = Vec::try_from(b.labels.as_ref().unwrap()).unwrap();
        assert_eq!(
            labels,
            b.indices
                .iter()
                .map(|&i| (i % 3) as i64)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn fixed_padding_and_label_kinds() {
    let fixed = loader(LoaderConfig {
        padding: Padding::Fixed(48),
        ..LoaderConfig::eval(16)
    });
    for b in collect(fixed.iter(Position::default()).unwrap()) {
        assert_eq!(b.input_ids.size()[1], 48);
    }
    let err = DataLoader::new(
        dataset(classes),
        PAD,
        LoaderConfig {
            padding: Padding::Fixed(20),
            ..LoaderConfig::eval(16)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("longest example (40"), "{err}");

    let scores = DataLoader::new(
        dataset(|n| Labels::Scores((0..n).map(|i| i as f32 / 10.0).collect())),
        PAD,
        LoaderConfig::eval(4),
    )
    .unwrap();
    let b = scores
        .iter(Position::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let l = b.labels.unwrap();
    assert_eq!(l.kind(), Kind::Float);
    assert!(l.allclose(
        &Tensor::from_slice(&[0.0f32, 0.1, 0.2, 0.3]),
        0.0,
        0.0,
        false
    ));

    let none = DataLoader::new(dataset(|_| Labels::None), PAD, LoaderConfig::eval(4)).unwrap();
    assert!(none
        .iter(Position::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .labels
        .is_none());
}

#[test]
fn resume_from_a_saved_position_is_exact() {
    let cfg = LoaderConfig {
        bucket_multiplier: Some(2),
        ..LoaderConfig::train(8, 9)
    };
    let l = loader(cfg.clone());
    let epoch2 = collect(l.iter(Position::start_of(2)).unwrap());
    assert_eq!(epoch2.len(), 13);

    // Train on 5 batches of epoch 2, save the position, "restart" with a fresh loader.
    let mut it = l.prefetch(Position::start_of(2)).unwrap();
    let mut saved = Position::default();
    for _ in 0..5 {
        saved = it.next().unwrap().unwrap().next_position();
    }
    drop(it);
    let json = serde_json::to_string(&saved).unwrap();
    let restored: Position = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, Position { epoch: 2, index: 5 });

    let fresh = loader(cfg);
    let rest = collect(fresh.prefetch(restored).unwrap());
    assert_eq!(rest.len(), 8);
    for (a, b) in rest.iter().zip(&epoch2[5..]) {
        same_batch(a, b);
    }

    // The position after an epoch's last batch is the start of the next epoch.
    let end = epoch2.last().unwrap().next_position();
    assert_eq!(fresh.normalize(end).unwrap(), Position::start_of(3));
    let next = collect(fresh.iter(end).unwrap());
    assert_eq!(next[0].position, Position::start_of(3));
    assert!(fresh
        .iter(Position {
            epoch: 0,
            index: 14
        })
        .is_err());
}

#[test]
fn prefetch_equals_the_synchronous_path() {
    let l = loader(LoaderConfig {
        prefetch: 2,
        ..LoaderConfig::train(7, 3)
    });
    let sync = collect(l.iter(Position::start_of(1)).unwrap());
    let it = l.prefetch(Position::start_of(1)).unwrap();
    assert_eq!(it.size_hint(), (sync.len(), Some(sync.len())));
    let pre = collect(it);
    assert_eq!(pre.len(), sync.len());
    for (a, b) in pre.iter().zip(&sync) {
        same_batch(a, b);
    }
    // Dropping an iterator whose thread is blocked on a full channel neither hangs nor leaks.
    for _ in 0..20 {
        let mut it = l.prefetch(Position::default()).unwrap();
        it.next().unwrap().unwrap();
        drop(it);
    }
}

#[test]
fn bad_settings_are_errors() {
    let d = dataset(classes);
    for cfg in [
        LoaderConfig {
            batch_size: 0,
            ..LoaderConfig::default()
        },
        LoaderConfig {
            bucket_multiplier: Some(0),
            ..LoaderConfig::default()
        },
        LoaderConfig {
            prefetch: 0,
            ..LoaderConfig::default()
        },
        LoaderConfig {
            drop_last: true,
            ..LoaderConfig::train(200, 0)
        },
    ] {
        assert!(
            DataLoader::new(d.clone(), PAD, cfg.clone()).is_err(),
            "{cfg:?}"
        );
    }
    let l = loader(LoaderConfig::eval(8));
    assert!(l.build_batch(&[], Position::default()).is_err());
    assert!(l.build_batch(&[103], Position::default()).is_err());
}
