//! The index of WebDataset tar shards: where every sample's members are inside its shard, so
//! one sample is one ranged GET.
//!
//! WebDataset convention: members are grouped into samples by basename, the member path up to
//! the first `.` of its file name (`train/000123.jpg` and `train/000123.cls` are sample
//! `train/000123` with members `jpg` and `cls`); a sample's members are consecutive in the tar.
//!
//! Stored at `<prefix>/.pai-mount/tar-index.v1`: a JSON body framed by
//! [`pai_store::framing`] with the magic `PAITARIX`. Each shard records the ETag it was
//! indexed at; a shard whose ETag in the manifest differs makes the index stale, which is an
//! error, never a misread.

use std::io::Read;

use serde::{Deserialize, Serialize};

pub const INDEX_KEY: &str = ".pai-mount/tar-index.v1";
const MAGIC: &[u8; 8] = b"PAITARIX";
pub const FORMAT_VERSION: u32 = 1;

/// One sample of a shard: the byte span of its members' data, and each member's place in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarSample {
    /// The basename (`train/000123`).
    pub name: String,
    /// Start of the first member's data in the shard.
    pub start: u64,
    /// End of the last member's data.
    pub end: u64,
    /// (extension, offset from `start`, length) per member.
    pub members: Vec<(String, u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Key relative to the prefix.
    pub key: String,
    pub etag: Option<String>,
    pub size: u64,
    pub samples: Vec<TarSample>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarIndex {
    pub shards: Vec<ShardIndex>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Frame(#[from] pai_store::framing::FrameError),
    #[error("bad tar index body: {0}")]
    Body(String),
    #[error("shard {key} is not a readable tar: {why}")]
    BadTar { key: String, why: String },
}

impl TarIndex {
    pub fn encode(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("the index serializes");
        pai_store::framing::encode(MAGIC, FORMAT_VERSION, &body)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let body = pai_store::framing::decode(MAGIC, FORMAT_VERSION, bytes)?;
        serde_json::from_slice(body).map_err(|e| IndexError::Body(e.to_string()))
    }
}

/// Splits a member path into (basename, extension) by the WebDataset rule.
pub fn split_name(path: &str) -> (&str, &str) {
    let file_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[file_start..].find('.') {
        Some(dot) => (&path[..file_start + dot], &path[file_start + dot + 1..]),
        None => (path, ""),
    }
}

/// Indexes one shard from any reader of its bytes (read once, front to back).
pub fn index_shard(
    key: &str,
    etag: Option<String>,
    size: u64,
    tar: impl Read,
) -> Result<ShardIndex, IndexError> {
    let bad = |e: std::io::Error| IndexError::BadTar {
        key: key.to_string(),
        why: e.to_string(),
    };
    let mut archive = tar::Archive::new(tar);
    let mut samples: Vec<TarSample> = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?.to_string_lossy().to_string();
        let (base, ext) = split_name(&path);
        let (offset, len) = (entry.raw_file_position(), entry.size());
        match samples.last_mut() {
            Some(s) if s.name == base => {
                s.members.push((ext.to_string(), offset - s.start, len));
                s.end = offset + len;
            }
            _ => samples.push(TarSample {
                name: base.to_string(),
                start: offset,
                end: offset + len,
                members: vec![(ext.to_string(), 0, len)],
            }),
        }
    }
    Ok(ShardIndex {
        key: key.to_string(),
        etag,
        size,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_by_the_first_dot_of_the_file_name() {
        assert_eq!(
            split_name("a/b.c/000123.seg.png"),
            ("a/b.c/000123", "seg.png")
        );
        assert_eq!(split_name("x.jpg"), ("x", "jpg"));
        assert_eq!(split_name("dir/noext"), ("dir/noext", ""));
    }

    #[test]
    fn a_shard_is_indexed_by_sample_and_the_index_round_trips() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("s/0.jpg", &b"JPEGDATA"[..]),
            ("s/0.cls", b"7"),
            ("s/1.jpg", b"MORE"),
            ("s/1.cls", b"3"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let idx = index_shard("shard.tar", None, bytes.len() as u64, &bytes[..]).unwrap();
        assert_eq!(idx.samples.len(), 2);
        let s = &idx.samples[0];
        assert_eq!(s.name, "s/0");
        let span = &bytes[s.start as usize..s.end as usize];
        let (ext, off, len) = &s.members[0];
        assert_eq!(
            (ext.as_str(), &span[*off as usize..(*off + *len) as usize]),
            ("jpg", &b"JPEGDATA"[..])
        );
        let (ext, off, len) = &s.members[1];
        assert_eq!(
            (ext.as_str(), &span[*off as usize..(*off + *len) as usize]),
            ("cls", &b"7"[..])
        );
        let all = TarIndex { shards: vec![idx] };
        let enc = all.encode();
        assert_eq!(TarIndex::decode(&enc).unwrap(), all);
        let mut bad = enc.clone();
        bad[20] ^= 1;
        assert!(matches!(
            TarIndex::decode(&bad),
            Err(IndexError::Frame(pai_store::framing::FrameError::Checksum))
        ));
        assert!(TarIndex::decode(&enc[..enc.len() - 1]).is_err());
    }
}
