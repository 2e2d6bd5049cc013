//! Full-object checksums that stores send with an object, and their verification.
//!
//! An ETag proves nothing about the bytes of a multipart object, and a ranged GET proves
//! nothing at all. Where the store sends a checksum of the whole object, a read of the whole
//! object is checked against it:
//! - OSS sends `x-oss-hash-crc64ecma` (CRC-64/XZ, the ECMA-182 polynomial reflected, as
//!   decimal) with every object;
//! - S3 sends `x-amz-checksum-crc64nvme` (base64 of the big-endian CRC-64/NVME) when the GET
//!   asks with `x-amz-checksum-mode: ENABLED`, which the transport adds to S3 GETs.
//!
//! The transport parses these headers into a [`FullChecksum`] in the response's extensions
//! (`object_store` hands them on in `GetResult::extensions`); [`super::ObjectSource`] hashes
//! the bytes of a whole-object read as they arrive and compares at the end. A mismatch is
//! counted (`object.checksum_mismatches`), the read is retried, and then it is an error:
//! wrong bytes are never returned where a checksum exists.

use base64::Engine as _;
use crc_fast::{CrcAlgorithm, Digest};

/// The OSS response header with the object's CRC-64/XZ (decimal).
pub const OSS_CRC64: &str = "x-oss-hash-crc64ecma";
/// The S3 response header with the object's CRC-64/NVME (base64, big-endian).
pub const S3_CRC64NVME: &str = "x-amz-checksum-crc64nvme";
/// The request header that makes S3 send its checksums.
pub const S3_CHECKSUM_MODE: &str = "x-amz-checksum-mode";

/// A checksum of a whole object, as the store stated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullChecksum {
    /// OSS `x-oss-hash-crc64ecma`.
    Crc64Xz(u64),
    /// S3 `x-amz-checksum-crc64nvme`.
    Crc64Nvme(u64),
}

impl FullChecksum {
    /// The checksum the headers state, if any (OSS's first).
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        if let Some(v) = headers.get(OSS_CRC64).and_then(|v| v.to_str().ok()) {
            return v.trim().parse().ok().map(Self::Crc64Xz);
        }
        let v = headers.get(S3_CRC64NVME)?.to_str().ok()?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .ok()?;
        Some(Self::Crc64Nvme(u64::from_be_bytes(raw.try_into().ok()?)))
    }

    fn algorithm(self) -> CrcAlgorithm {
        match self {
            Self::Crc64Xz(_) => CrcAlgorithm::Crc64Xz,
            Self::Crc64Nvme(_) => CrcAlgorithm::Crc64Nvme,
        }
    }

    /// The checksum's value.
    pub fn value(self) -> u64 {
        match self {
            Self::Crc64Xz(v) | Self::Crc64Nvme(v) => v,
        }
    }

    /// The same kind of checksum, with value `v`.
    pub fn with_value(self, v: u64) -> Self {
        match self {
            Self::Crc64Xz(_) => Self::Crc64Xz(v),
            Self::Crc64Nvme(_) => Self::Crc64Nvme(v),
        }
    }

    /// Whether `other` is a checksum of the same kind.
    pub fn same_kind(self, other: Self) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }

    /// The CRC of this kind of the bytes `a ++ b`, from the CRC of `a`, the CRC of `b`, and the
    /// length of `b`.
    pub fn combine(self, crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
        crc_fast::checksum_combine(self.algorithm(), crc_a, crc_b, len_b)
    }

    /// A hasher for the bytes this checksum covers.
    pub fn hasher(self) -> Hasher {
        Hasher {
            want: self,
            digest: Digest::new(self.algorithm()),
        }
    }

    /// The same kind of checksum, computed over `data`.
    pub fn of(self, data: &[u8]) -> Self {
        self.with_value(crc_fast::checksum(self.algorithm(), data))
    }
}

impl std::fmt::Display for FullChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Crc64Xz(v) => write!(f, "crc64ecma {v}"),
            Self::Crc64Nvme(v) => write!(f, "crc64nvme {v:016x}"),
        }
    }
}

impl FullChecksum {
    /// A CRC of one range of the object, of this checksum's kind (for [`Self::combine`]).
    pub fn range_hasher(self) -> Digest {
        Digest::new(self.algorithm())
    }

    /// Whether the CRCs of consecutive ranges `(crc, len)` that cover the whole object, in
    /// order, combine to this checksum. `Err((stated, computed))` when not.
    pub fn check_ranges(self, ranges: &[(u64, u64)]) -> Result<(), (Self, Self)> {
        let alg = self.algorithm();
        let mut iter = ranges.iter();
        let Some(&(mut crc, _)) = iter.next() else {
            return Ok(());
        };
        for &(next, len) in iter {
            crc = crc_fast::checksum_combine(alg, crc, next, len);
        }
        let computed = self.with_value(crc);
        if computed == self {
            Ok(())
        } else {
            Err((self, computed))
        }
    }
}

/// Hashes a whole object as it arrives.
pub struct Hasher {
    want: FullChecksum,
    digest: Digest,
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// `Err((stated, computed))` when the bytes do not match the stated checksum.
    pub fn verify(&self) -> Result<(), (FullChecksum, FullChecksum)> {
        let got = self.digest.finalize();
        if got == self.want.value() {
            return Ok(());
        }
        Err((self.want, self.want.with_value(got)))
    }
}

/// The headers a store would send for `data`: OSS's decimal CRC-64/XZ and S3's base64
/// CRC-64/NVME (for test servers).
pub fn header_values(data: &[u8]) -> (String, String) {
    let xz = crc_fast::checksum(CrcAlgorithm::Crc64Xz, data);
    let nvme = crc_fast::checksum(CrcAlgorithm::Crc64Nvme, data);
    (
        xz.to_string(),
        base64::engine::general_purpose::STANDARD.encode(nvme.to_be_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_of_both_crcs() {
        // The check values of the CRC catalogue: the CRC of "123456789".
        assert_eq!(
            FullChecksum::Crc64Xz(0).of(b"123456789"),
            FullChecksum::Crc64Xz(0x995d_c9bb_df19_39fa)
        );
        assert_eq!(
            FullChecksum::Crc64Nvme(0).of(b"123456789"),
            FullChecksum::Crc64Nvme(0xae8b_1486_0a79_9888)
        );
    }

    #[test]
    fn crcs_of_consecutive_ranges_combine_to_the_whole_objects() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 13) as u8).collect();
        for want in [
            FullChecksum::Crc64Xz(0).of(&data),
            FullChecksum::Crc64Nvme(0).of(&data),
        ] {
            let ranges: Vec<(u64, u64)> = data
                .chunks(300_000)
                .map(|c| {
                    let mut d = want.range_hasher();
                    d.update(c);
                    (d.finalize(), c.len() as u64)
                })
                .collect();
            assert!(want.check_ranges(&ranges).is_ok());
            let mut bad = ranges.clone();
            bad[2].0 ^= 1;
            assert!(want.check_ranges(&bad).is_err());
        }
    }

    #[test]
    fn headers_round_trip_and_a_flipped_bit_is_caught() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let (xz, nvme) = header_values(&data);
        for (name, value) in [(OSS_CRC64, xz), (S3_CRC64NVME, nvme)] {
            let mut h = http::HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            let want = FullChecksum::from_headers(&h).unwrap();
            let mut ok = want.hasher();
            ok.update(&data[..500]);
            ok.update(&data[500..]);
            assert!(ok.verify().is_ok(), "{name}");
            let mut bad = data.clone();
            bad[77_777] ^= 0x10;
            let mut hasher = want.hasher();
            hasher.update(&bad);
            assert!(hasher.verify().is_err(), "{name}");
        }
    }
}
