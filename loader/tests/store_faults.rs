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
