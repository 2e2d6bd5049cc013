//! Every parser of bytes that come from outside this process, as a fuzz target: each function
//! takes arbitrary bytes and must return (an `Err` is fine) without panicking, looping or
//! allocating without bound. libFuzzer drives them through the cargo-fuzz crate in
//! `fuzz/libfuzzer/` (a nightly toolchain and `cargo install cargo-fuzz`):
//!
//! ```sh
//! cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer NAME fuzz/corpus/NAME -- -max_total_time=1800
//! ```
//!
//! `tests/corpus.rs` replays the committed corpora (`fuzz/corpus/NAME/`) in every test run, on
//! the stable toolchain.
//!
//! | name | parser | input comes from |
//! |---|---|---|
//! | `manifest` | `manifest::Manifest::parse` and its entries | the bucket, a local file |
//! | `framing` | `framing::decode` | any framed document (status, tar index) |
//! | `journal` | the write-back journal record | the staging directory |
//! | `tar_index` | `tar_index::TarIndex::decode` | the bucket |
//! | `cache_block` | `cache::decode` (a disk-cache block file) | the cache directory |
//! | `list_xml` | `list::parse_list_page` (ListObjectsV2 XML) | the store |
//! | `source_url` | `Source::parse` | the command line, fstab, Python |
//! | `ossfs_passwd` | `credentials::parse_passwd` | `~/.passwd-ossfs`, `/etc/passwd-ossfs` |
//! | `ecs_json` | `credentials::parse_role_response` | the ECS metadata service |

/// The names of all targets, as `run` takes them.
pub const TARGETS: &[&str] = &[
    "manifest",
    "framing",
    "journal",
    "tar_index",
    "cache_block",
    "list_xml",
    "source_url",
    "ossfs_passwd",
    "ecs_json",
];

/// Runs target `name` on `data`. Panics on an unknown name.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "manifest" => manifest(data),
        "framing" => framing(data),
        "journal" => journal(data),
        "tar_index" => tar_index(data),
        "cache_block" => cache_block(data),
        "list_xml" => list_xml(data),
        "source_url" => source_url(data),
        "ossfs_passwd" => ossfs_passwd(data),
        "ecs_json" => ecs_json(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

pub fn manifest(data: &[u8]) {
    if let Ok(m) = pai_store::manifest::Manifest::parse(data) {
        let mut n = 0u64;
        let _ = m.for_each(|_, _, _, _, _| n += 1);
    }
}

pub fn framing(data: &[u8]) {
    let _ = pai_store::framing::decode(b"PAIFUZZ1", 1, data);
}

pub fn journal(data: &[u8]) {
    let _ = pai_mount_fs::write::journal::decode(data);
}

pub fn tar_index(data: &[u8]) {
    let _ = pai_loader::tar_index::TarIndex::decode(data);
}

pub fn cache_block(data: &[u8]) {
    let _ = pai_mount_fs::cache::decode(bytes::Bytes::copy_from_slice(data), b"obj@etag#7");
}

pub fn list_xml(data: &[u8]) {
    let _ = pai_store::object::list::parse_list_page(data);
}

pub fn source_url(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(src) = pai_store::object::Source::parse(s) {
            let _ = src.display_root();
        }
    }
}

pub fn ossfs_passwd(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = pai_store::object::credentials::parse_passwd(s, "bucket");
    }
}

pub fn ecs_json(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = pai_store::object::credentials::parse_role_response("role", s);
    }
}

/// Valid inputs for every target, made by the real encoders: the seeds of the corpora
/// (`PAI_FUZZ_WRITE_SEEDS=1 cargo test -p pai-fuzz-targets` writes them to `fuzz/corpus/`).
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use pai_store::manifest::{self, Entry, Etag, Header};
    let header = Header {
        source: "oss://bucket/prefix".into(),
        built_at_ms: 1_700_000_000_000,
        object_count: 4,
        total_bytes: 1_234_567,
        list_requests: 2,
        builder: "pai-mount fuzz seed".into(),
    };
    let entries = vec![
        Entry {
            key: (*b"a/b.jpg").into(),
            size: 1000,
            mtime_ms: 1_700_000_000_001,
            etag: Etag::Md5([7; 16]),
            attrs: pai_store::attrs::Attrs {
                mode: Some(0o100_755),
                uid: Some(1000),
                gid: None,
                target: None,
                atime_ms: Some(1_600_000_000_000),
            },
        },
        Entry {
            key: (*b"a/c/").into(),
            size: 0,
            mtime_ms: 0,
            etag: Etag::None,
            attrs: Default::default(),
        },
        Entry {
            key: (*b"big.bin").into(),
            size: 1_233_567,
            mtime_ms: -5,
            etag: Etag::Multipart([9; 16], 12),
            attrs: Default::default(),
        },
        Entry {
            key: (*b"z").into(),
            size: 0,
            mtime_ms: 3,
            etag: Etag::Other("weird-etag".into()),
            attrs: pai_store::attrs::Attrs::symlink(b"a/b.jpg", 0, 0),
        },
    ];
    let record: pai_mount_fs::write::journal::Record = serde_json::from_value(serde_json::json!({
        "id": 42, "source": "oss://bucket/prefix/", "key": "dir/file.txt", "size": 12345,
        "mtime_ms": 1_700_000_000_000i64, "state": "pending", "error": "HTTP 503", "attempts": 2
    }))
    .expect("a record");
    let index: pai_loader::tar_index::TarIndex = serde_json::from_value(serde_json::json!({
        "shards": [{"key": "shard-0000.tar", "etag": "\"abc\"", "size": 10240, "samples": []}]
    }))
    .unwrap_or_default();
    vec![
        ("manifest", "seed-4-entries", manifest::encode(&header, &entries)),
        ("manifest", "seed-empty", manifest::encode(&Header { object_count: 0, total_bytes: 0, ..header.clone() }, &[])),
        ("framing", "seed", pai_store::framing::encode(b"PAIFUZZ1", 1, b"{\"k\": [1, 2, 3]}")),
        ("journal", "seed", pai_mount_fs::write::journal::encode(&record)),
        ("tar_index", "seed", index.encode()),
        ("tar_index", "seed-empty", pai_loader::tar_index::TarIndex::default().encode()),
        ("cache_block", "seed", pai_mount_fs::cache::encode(b"obj@etag#7", &[5u8; 3000]).to_vec()),
        ("cache_block", "seed-empty", pai_mount_fs::cache::encode(b"obj@etag#7", &[]).to_vec()),
        ("list_xml", "seed-page", br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextContinuationToken>tok%2B1</NextContinuationToken><Contents><Key>p/a%20b.jpg</Key><LastModified>2026-01-02T03:04:05.000Z</LastModified><ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag><Size>1000</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>p/%00odd</Key><Size>0</Size></Contents><CommonPrefixes><Prefix>p/dir/</Prefix></CommonPrefixes></ListBucketResult>"#.to_vec()),
        ("list_xml", "seed-empty", b"<ListBucketResult></ListBucketResult>".to_vec()),
        ("source_url", "oss", b"oss://my-bucket/datasets/imagenet/".to_vec()),
        ("source_url", "s3", b"s3://bkt".to_vec()),
        ("source_url", "file", b"file:///srv/data".to_vec()),
        ("ossfs_passwd", "seed", b"# comment\nbucket:AKID:SECRET\nAKID2:SECRET2\n".to_vec()),
        ("ecs_json", "seed", br#"{"AccessKeyId":"STS.x","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2026-12-07T12:00:00Z","Code":"Success"}"#.to_vec()),
    ]
}
