//! `copy_prefix` and the loader over an in-process store with injected faults (no server): cut
//! bodies are resumed, failed reads retried, a failing object is counted and named, and a
//! rerun finishes a copy.

use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use pai_loader::copy::{copy_prefix, CopyOptions, NoProgress};
use pai_store::metrics::Metrics;
use pai_store::object::faulty::{Fault, FaultyStore, Op};
use pai_store::object::{ObjectSource, Source};

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j * 13 + i * 7) as u8).collect()
}

#[tokio::test]
async fn cut_bodies_resume_a_failing_object_is_named_and_a_rerun_finishes() {
    let store = Arc::new(InMemory::new());
    let mut want = Vec::new();
    for i in 0..12 {
        let len = if i % 3 == 0 { 3 << 20 } else { 100_000 + i };
        let key = format!("ds/{i:02}.bin");
        store
            .put(&Path::from(key.as_str()), body(i, len).into())
            .await
            .unwrap();
        want.push((format!("{i:02}.bin"), body(i, len)));
    }
    let faulty = FaultyStore::new(store);
    let source = ObjectSource::from_store(
        Source::parse("s3://bkt/ds").unwrap(),
        faulty.clone() as Arc<dyn ObjectStore>,
        Arc::new(Metrics::default()),
    );
    let dest = tempfile::tempdir().unwrap();
    let options = CopyOptions {
        jobs: 4,
        part_size: 1 << 20,
        ..Default::default()
    };
    faulty.inject(Op::Get, Fault::Cut { after: 300_000 }, Some(3));
    faulty.inject_for(Op::Get, "07.bin", Fault::Fail, None);
    let report = copy_prefix(&source, "s3://bkt/ds", dest.path(), &options, &NoProgress)
        .await
        .unwrap();
    assert_eq!((report.objects, report.failed), (12, 1), "{report:?}");
    assert_eq!(report.copied, 11);
    assert!(report.errors[0].contains("07.bin"), "{:?}", report.errors);
    assert!(
        !dest.path().join("07.bin").exists(),
        "no partial file under its name"
    );
    faulty.clear();
    let again = copy_prefix(&source, "s3://bkt/ds", dest.path(), &options, &NoProgress)
        .await
        .unwrap();
    assert_eq!((again.copied, again.skipped, again.failed), (1, 11, 0));
    for (name, data) in want {
        assert!(
            std::fs::read(dest.path().join(&name)).unwrap() == data,
            "{name}"
        );
    }
}

/// The loader over the same in-process fault seam: failed and cut reads of a sample are
/// retried, and a gone object is an error that names its key.
#[test]
fn the_loader_retries_failed_and_cut_samples_and_names_a_gone_one() {
    use pai_loader::{Dataset, DatasetOptions, Layout, LoadOptions, Loader, Order, State};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Arc::new(InMemory::new());
    let mut want = std::collections::BTreeMap::new();
    rt.block_on(async {
        for i in 0..30 {
            let key = format!("ds/{i:02}.bin");
            store
                .put(&Path::from(key.as_str()), body(i, 5000 + i * 100).into())
                .await
                .unwrap();
            want.insert(format!("{i:02}.bin"), body(i, 5000 + i * 100));
        }
    });
    let faulty = FaultyStore::new(store);
    let source = ObjectSource::from_store(
        Source::parse("s3://bkt/ds").unwrap(),
        faulty.clone() as Arc<dyn ObjectStore>,
        Arc::new(Metrics::default()),
    );
    let options = DatasetOptions {
        store: Default::default(),
        suffixes: vec![],
        tar_shards: false,
        glob: None,
    };
    let ds = Arc::new(Dataset::open_on("s3://bkt/ds", source, options).unwrap());
    faulty.inject_for(Op::Get, "07.bin", Fault::Fail, Some(2));
    faulty.inject(Op::Get, Fault::Cut { after: 1000 }, Some(5));
    let loader = |ds: &Arc<Dataset>| {
        Loader::new(
            ds,
            Layout::single(),
            Order::default(),
            State::default(),
            LoadOptions::default(),
        )
        .unwrap()
    };
    for s in loader(&ds) {
        let s = s.unwrap();
        assert!(want[&*s.key] == s.data, "{}", s.key);
    }
    assert_eq!(faulty.injected(), 7);
    faulty.inject_for(Op::Get, "12.bin", Fault::Gone, None);
    let err = loader(&ds)
        .find_map(Result::err)
        .expect("the gone object is an error");
    assert!(err.to_string().contains("12.bin"), "{err}");
}

/// `ObjectReader` (what `pai_mount.open(url, "rb")` runs on) checks an object read front to
/// back against the store's checksum at its end: damaged bytes fail the read that reaches the
/// end, and every later one; a new reader reads it right.
#[tokio::test]
async fn a_reader_that_reads_a_whole_object_checks_it_at_the_end() {
    use pai_loader::object_io::{ObjectReader, ReadOptions};
    use pai_store::object::checksum::FullChecksum;
    let store = Arc::new(InMemory::new());
    let data = body(1, 5 << 20);
    store
        .put(&Path::from("ds/model.pt"), data.clone().into())
        .await
        .unwrap();
    let faulty = FaultyStore::new(store);
    faulty.state_checksums(FullChecksum::Crc64Nvme(0));
    let metrics = Arc::new(Metrics::default());
    let source = ObjectSource::from_store(
        Source::parse("s3://bkt/ds").unwrap(),
        faulty.clone() as Arc<dyn ObjectStore>,
        metrics.clone(),
    );
    let options = ReadOptions {
        chunk: 1 << 20,
        ahead: 2,
    };
    let read_all = |mut r: ObjectReader| async move {
        let mut out = Vec::new();
        loop {
            match r.read_into(300_000, &mut out).await {
                Ok(0) => return (Ok(out), r),
                Ok(_) => {}
                Err(e) => return (Err(e), r),
            }
        }
    };
    let r = ObjectReader::open(source.clone(), "s3://bkt/ds/model.pt", "model.pt", options)
        .await
        .unwrap();
    let (got, _) = read_all(r).await;
    assert!(got.unwrap() == data);

    faulty.inject(Op::Get, Fault::Corrupt { at: 2_500_000 }, None);
    let r = ObjectReader::open(source.clone(), "s3://bkt/ds/model.pt", "model.pt", options)
        .await
        .unwrap();
    let (got, mut r) = read_all(r).await;
    match got {
        Err(pai_loader::LoadError::Corrupt { why, .. }) => {
            assert!(why.contains("checksum"), "{why}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("damaged bytes read to the end without an error"),
    }
    assert!(
        r.read_into(10, &mut Vec::new()).await.is_err(),
        "and stays failed"
    );
    assert_eq!(
        metrics
            .checksum_mismatches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    faulty.clear();
    let r = ObjectReader::open(source, "s3://bkt/ds/model.pt", "model.pt", options)
        .await
        .unwrap();
    assert!(read_all(r).await.0.unwrap() == data);
}
