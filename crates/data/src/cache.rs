//! The on-disk format of a tokenized split (see [`crate::tokenize::Encoder::encode_cached`]).
//!
//! Little-endian, in this order: magic `LPTOK\0\0\0`, format version (u32), cache key (32
//! bytes), number of examples n (u64), number of tokens (u64), label kind (u8: 0 none,
//! 1 classes, 2 scores, 3 token labels), position ids flag (u8: 0 absent, 1 present),
//! n example lengths (u32), the input ids (u32), the token type ids (u32), the position ids
//! (u32, when present), the labels (n i64 classes, n f32 scores, one i64 per token for token
//! labels, absent for none), and the sha256 of everything before it. A file that fails any
//! check is treated as absent.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::tokenize::{Labels, TokenizedDataset};

/// Bumped whenever the format or the tokenization changes meaning.
pub(crate) const FORMAT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"LPTOK\0\0\0";

pub(crate) fn encode(key: &[u8; 32], t: &TokenizedDataset) -> Vec<u8> {
    let n = t.len();
    let tokens = t.input_ids.len();
    let mut out = Vec::with_capacity(8 + 4 + 32 + 17 + 4 * n + 8 * tokens + 8 * n + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend_from_slice(&(tokens as u64).to_le_bytes());
    out.push(match t.labels {
        Labels::None => 0,
        Labels::Classes(_) => 1,
        Labels::Scores(_) => 2,
        Labels::Tokens(_) => 3,
    });
    out.push(u8::from(t.position_ids.is_some()));
    for w in t.offsets.windows(2) {
        out.extend_from_slice(&((w[1] - w[0]) as u32).to_le_bytes());
    }
    for &id in &t.input_ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    for &ty in &t.token_type_ids {
        out.extend_from_slice(&ty.to_le_bytes());
    }
    for &p in t.position_ids.iter().flatten() {
        out.extend_from_slice(&p.to_le_bytes());
    }
    match &t.labels {
        Labels::None => {}
        Labels::Classes(v) => v
            .iter()
            .for_each(|c| out.extend_from_slice(&c.to_le_bytes())),
        Labels::Scores(v) => v
            .iter()
            .for_each(|s| out.extend_from_slice(&s.to_le_bytes())),
        Labels::Tokens(v) => v
            .iter()
            .flatten()
            .for_each(|l| out.extend_from_slice(&l.to_le_bytes())),
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!("truncated at byte {} (wanted {n} more bytes)", self.pos);
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into()?))
    }
    fn i64s(&mut self, n: usize) -> Result<Vec<i64>> {
        let b = self.take(n.checked_mul(8).context("size overflow")?)?;
        Ok(b.chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
    fn u32s(&mut self, n: usize) -> Result<Vec<u32>> {
        let b = self.take(n.checked_mul(4).context("size overflow")?)?;
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

pub(crate) fn decode(bytes: &[u8], key: &[u8; 32]) -> Result<TokenizedDataset> {
    ensure!(bytes.len() >= 32, "too short");
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    ensure!(Sha256::digest(body).as_slice() == sum, "checksum mismatch");
    let mut c = Cursor {
        bytes: body,
        pos: 0,
    };
    ensure!(c.take(8)? == MAGIC, "not a tokenization cache file");
    let version = u32::from_le_bytes(c.take(4)?.try_into()?);
    ensure!(
        version == FORMAT_VERSION,
        "format version {version}, expected {FORMAT_VERSION}"
    );
    ensure!(c.take(32)? == key, "cache key mismatch");
    let n = usize::try_from(c.u64()?)?;
    let tokens = usize::try_from(c.u64()?)?;
    let kind = c.take(1)?[0];
    let has_positions = match c.take(1)?[0] {
        0 => false,
        1 => true,
        f => bail!("position ids flag {f}, expected 0 or 1"),
    };
    let lengths = c.u32s(n)?;
    let input_ids = c.u32s(tokens)?;
    let token_type_ids = c.u32s(tokens)?;
    let position_ids = if has_positions {
        Some(c.u32s(tokens)?)
    } else {
        None
    };
    let labels = match kind {
        0 => Labels::None,
        1 => Labels::Classes(c.i64s(n)?),
        2 => Labels::Scores(c.u32s(n)?.into_iter().map(f32::from_bits).collect()),
        3 => {
            let flat = c.i64s(tokens)?;
            let mut per_example = Vec::with_capacity(n);
            let mut start = 0usize;
            for &l in &lengths {
                let end = start + l as usize;
                ensure!(end <= flat.len(), "token labels shorter than the examples");
                per_example.push(flat[start..end].to_vec());
                start = end;
            }
            Labels::Tokens(per_example)
        }
        k => bail!("unknown label kind {k}"),
    };
    ensure!(c.pos == body.len(), "{} trailing bytes", body.len() - c.pos);
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0usize);
    for l in lengths {
        let last = offsets[offsets.len() - 1];
        offsets.push(last + l as usize);
    }
    ensure!(
        offsets[n] == tokens,
        "lengths add up to {}, not {tokens}",
        offsets[n]
    );
    Ok(TokenizedDataset {
        input_ids,
        token_type_ids,
        offsets,
        labels,
        position_ids,
    })
}

pub(crate) fn load(path: &Path, key: &[u8; 32]) -> Result<TokenizedDataset> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode(&bytes, key).with_context(|| format!("{}", path.display()))
}

/// Write atomically: a temporary file in the same folder, renamed into place.
pub(crate) fn save(path: &Path, key: &[u8; 32], t: &TokenizedDataset) -> Result<()> {
    let dir = path.parent().context("cache path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(&encode(key, t))
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: Labels) -> TokenizedDataset {
        TokenizedDataset::from_examples(
            vec![
                (vec![101, 7, 8, 102], vec![0, 0, 0, 0]),
                (vec![101, 102, 9, 102], vec![0, 0, 1, 1]),
            ],
            labels,
        )
        .unwrap()
    }

    #[test]
    fn roundtrip_all_label_kinds() {
        let key = [7u8; 32];
        for labels in [
            Labels::None,
            Labels::Classes(vec![0, 2]),
            Labels::Scores(vec![0.5, 4.75]),
            Labels::Tokens(vec![vec![-100, 7, 8, 102], vec![-100, -100, 9, 102]]),
        ] {
            let t = sample(labels);
            let bytes = encode(&key, &t);
            assert_eq!(decode(&bytes, &key).unwrap(), t);
        }
        let mut packed = sample(Labels::Tokens(vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]));
        packed.position_ids = Some(vec![0, 1, 0, 1, 0, 1, 2, 0]);
        let bytes = encode(&key, &packed);
        assert_eq!(decode(&bytes, &key).unwrap(), packed);
    }

    #[test]
    fn damage_is_detected() {
        let key = [7u8; 32];
        let bytes = encode(&key, &sample(Labels::Classes(vec![0, 1])));
        assert!(decode(&bytes, &[8u8; 32]).is_err(), "wrong key");
        for cut in [0, 1, 31, 32, 40, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], &key).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, &key).is_err(), "flip at {i}");
        }
    }
}
