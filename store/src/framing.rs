//! One small on-disk (and in-bucket) framing for versioned, checksummed JSON documents:
//! an 8-byte magic, a format version (u32 LE), the body length (u32 LE), the body, and the
//! CRC-32 of the body (u32 LE). Used by the write-back journal and the loader's tar index.
//! (The manifest has a binary format of its own.)

/// Why framed bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic")]
    BadMagic,
    #[error("format version {found} is not supported (this build reads {supported})")]
    Version { found: u32, supported: u32 },
    #[error("truncated")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
}

/// Frames `body`.
pub fn encode(magic: &[u8; 8], version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out
}

/// Checks magic, version, length and checksum, and returns the body.
pub fn decode<'a>(magic: &[u8; 8], version: u32, bytes: &'a [u8]) -> Result<&'a [u8], FrameError> {
    if bytes.len() >= 8 && &bytes[..8] != magic {
        return Err(FrameError::BadMagic);
    }
    if bytes.len() < 16 {
        return Err(FrameError::Truncated);
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if found != version {
        return Err(FrameError::Version {
            found,
            supported: version,
        });
    }
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    if bytes.len() != 16 + len + 4 {
        return Err(FrameError::Truncated);
    }
    let body = &bytes[16..16 + len];
    let crc = u32::from_le_bytes(bytes[16 + len..].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Checksum);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_every_kind_of_damage_is_refused() {
        let f = encode(b"TESTMAGC", 3, b"{\"a\":1}");
        assert_eq!(decode(b"TESTMAGC", 3, &f).unwrap(), b"{\"a\":1}");
        for cut in [0, 7, 15, f.len() - 1] {
            assert!(decode(b"TESTMAGC", 3, &f[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = f.clone();
        flipped[18] ^= 1;
        assert_eq!(decode(b"TESTMAGC", 3, &flipped), Err(FrameError::Checksum));
        assert_eq!(
            decode(b"TESTMAGC", 4, &f),
            Err(FrameError::Version {
                found: 3,
                supported: 4
            })
        );
        assert_eq!(decode(b"OTHERMAG", 3, &f), Err(FrameError::BadMagic));
    }
}
