//! The loader against the S3 test server on loopback (SigV4, real HTTP), with faults.

use std::collections::BTreeMap;
use std::sync::Arc;

use pai_loader::{
    Dataset, DatasetOptions, Layout, LoadError, LoadOptions, Loader, Order, Shuffle, State,
};
use pai_store::object::credentials::CredentialFlags;
use pai_store::object::StoreOptions;
use pai_test_s3::{
    BackgroundServer, ServerConfig, TestServer, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY,
};

fn body(i: usize) -> Vec<u8> {
    (0..1000 + i * 37).map(|j| (j * 7 + i) as u8).collect()
}

fn setup(n: usize) -> (BackgroundServer, DatasetOptions) {
    let s = TestServer::start_background(ServerConfig::default()).unwrap();
    s.backend().create_bucket("bkt");
    for i in 0..n {
        s.backend()
            .put("bkt", &format!("ds/shard{}/{i:05}.jpg", i % 4), body(i));
        s.backend().put(
            "bkt",
            &format!("ds/shard{}/{i:05}.txt", i % 4),
            format!("label {i}"),
        );
    }
    let options = DatasetOptions {
        store: StoreOptions {
            endpoint: Some(s.endpoint()),
            path_style: true,
            credentials: CredentialFlags {
                access_key_id: Some(DEFAULT_ACCESS_KEY.into()),
                secret_access_key: Some(DEFAULT_SECRET_KEY.into()),
                session_token: None,
            },
            ..Default::default()
        },
        suffixes: vec![".jpg".into()],
        tar_shards: false,
        glob: None,
    };
    (s, options)
}

fn index_of(key: &str) -> usize {
    key.rsplit('/').next().unwrap()[..5].parse().unwrap()
}

#[test]
fn every_rank_and_worker_together_read_the_epoch_exactly_once() {
    let (_s, options) = setup(103);
    let ds = Arc::new(Dataset::open("s3://bkt/ds", options).unwrap());
    assert_eq!(ds.len(), 103, "only .jpg samples");
    let order = Order {
        seed: 42,
        shuffle: Shuffle::Global,
        drop_last: false,
        interleave: 4,
    };
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for rank in 0..2 {
        for worker in 0..2 {
            let layout = Layout {
                world_size: 2,
                rank,
                workers: 2,
                worker,
            };
            let loader = Loader::new(
                &ds,
                layout,
                order,
                State {
                    seed: 42,
                    ..State::default()
                },
                LoadOptions::default(),
            )
            .unwrap();
            for s in loader {
                let s = s.unwrap();
                let i = index_of(&s.key);
                assert_eq!(s.data.to_vec(), body(i), "{}", s.key);
                *seen.entry(i).or_default() += 1;
            }
        }
    }
    assert_eq!(seen.len(), 103);
    assert_eq!(
        seen.values().sum::<usize>(),
        104,
        "one sample of padding for 2 ranks"
    );
    // Random access.
    let k = ds.key(5).unwrap();
    assert_eq!(ds.get(5).unwrap().data.to_vec(), body(index_of(&k)));
    assert!(matches!(ds.get(1000), Err(LoadError::OutOfRange { .. })));
}

#[test]
fn a_resumed_loader_continues_exactly_where_it_stopped() {
    let (_s, options) = setup(60);
    let ds = Arc::new(Dataset::open("s3://bkt/ds", options).unwrap());
    let order = Order {
        seed: 7,
        shuffle: Shuffle::Block { block: 8 },
        ..Order::default()
    };
    let start = State {
        seed: 7,
        epoch: 3,
        consumed: 0,
    };
    let all: Vec<String> = Loader::new(&ds, Layout::single(), order, start, LoadOptions::default())
        .unwrap()
        .map(|s| s.unwrap().key)
        .collect();
    let mut first =
        Loader::new(&ds, Layout::single(), order, start, LoadOptions::default()).unwrap();
    let head: Vec<String> = first.by_ref().take(23).map(|s| s.unwrap().key).collect();
    let state = first.state();
    assert_eq!(
        state,
        State {
            seed: 7,
            epoch: 3,
            consumed: 23
        },
        "prefetched samples do not count"
    );
    drop(first);
    let tail: Vec<String> =
        Loader::new(&ds, Layout::single(), order, state, LoadOptions::default())
            .unwrap()
            .map(|s| s.unwrap().key)
            .collect();
    assert_eq!([head, tail].concat(), all);
}

#[test]
fn faults_are_retried_and_a_lost_object_is_an_error_naming_it() {
    let (s, options) = setup(40);
    let ds = Arc::new(Dataset::open("s3://bkt/ds", options).unwrap());
    s.backend().faults.fail_next(10);
    s.backend().faults.cut_next_gets(5, 100);
    let n = Loader::new(
        &ds,
        Layout::single(),
        Order::default(),
        State::default(),
        LoadOptions::default(),
    )
    .unwrap()
    .filter(|r| r.as_ref().map_err(|e| panic!("{e}")).is_ok())
    .count();
    assert_eq!(n, 40);
    // One object deleted after the manifest was made.
    let victim = ds.key(3).unwrap();
    s.backend().delete("bkt", &format!("ds/{victim}"));
    let results: Vec<_> = Loader::new(
        &ds,
        Layout::single(),
        Order::default(),
        State::default(),
        LoadOptions::default(),
    )
    .unwrap()
    .collect();
    let err = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("an error");
    assert!(err.to_string().contains(&victim), "{err}");
    // Opt-in skipping counts what it skips.
    let mut skipping = Loader::new(
        &ds,
        Layout::single(),
        Order::default(),
        State::default(),
        LoadOptions {
            skip_errors: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(skipping.by_ref().filter(|r| r.is_ok()).count(), 39);
    assert_eq!(skipping.skipped(), 1);
}

fn shard(first: usize, count: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in first..first + count {
        for (ext, data) in [
            ("jpg", body(i)),
            ("cls", format!("{}", i % 10).into_bytes()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("train/{i:06}.{ext}"), &data[..])
                .unwrap();
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn tar_shards_are_read_one_ranged_get_per_sample() {
    let (s, mut options) = setup(0);
    for k in 0..5 {
        s.backend()
            .put("bkt", &format!("ds/shard-{k:03}.tar"), shard(k * 20, 20));
    }
    options.suffixes = vec![];
    options.tar_shards = true;
    // No index yet: a clear error that says how to build it.
    let err = Dataset::open("s3://bkt/ds", options.clone()).unwrap_err();
    assert!(err.to_string().contains("manifest tar-index"), "{err}");
    let (shards, samples) = Dataset::build_tar_index("s3://bkt/ds", &options, 2).unwrap();
    assert_eq!((shards, samples), (5, 100));
    let ds = Arc::new(Dataset::open("s3://bkt/ds", options.clone()).unwrap());
    assert_eq!(ds.len(), 100);
    s.backend().faults.cut_next_gets(3, 500);
    s.backend().faults.fail_next(4);
    let gets = s.backend().counters.get();
    let order = Order {
        seed: 3,
        shuffle: Shuffle::Block { block: 20 },
        ..Order::default()
    };
    let mut seen = 0;
    for sample in Loader::new(
        &ds,
        Layout::single(),
        order,
        State {
            seed: 3,
            ..State::default()
        },
        LoadOptions::default(),
    )
    .unwrap()
    {
        let sample = sample.unwrap();
        let i: usize = sample.key.trim_start_matches("train/").parse().unwrap();
        assert_eq!(sample.member("jpg").unwrap().to_vec(), body(i));
        assert_eq!(
            sample.member("cls").unwrap().to_vec(),
            format!("{}", i % 10).into_bytes()
        );
        seen += 1;
    }
    assert_eq!(seen, 100);
    let used = s.backend().counters.get() - gets;
    assert!(
        (100..=120).contains(&used),
        "one GET per sample plus a few retries: {used}"
    );
    // A shard rewritten after indexing: the index is stale, which is an error, not a misread.
    s.backend().put("bkt", "ds/shard-002.tar", shard(500, 20));
    let err = Dataset::open("s3://bkt/ds", options).unwrap_err();
    assert!(
        err.to_string().contains("stale for shard shard-002.tar"),
        "{err}"
    );
}

#[test]
fn a_dataset_keeps_working_in_a_forked_child() {
    let (_s, options) = setup(5);
    let ds = Dataset::open("s3://bkt/ds", options).unwrap();
    let want = ds.get(2).unwrap().data;
    // SAFETY: the child only uses the dataset (which builds a new runtime for itself) and
    // leaves with _exit, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = ds.get(2).map(|s| s.data == want).unwrap_or(false);
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child we just forked; `status` is valid for writes.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child read the sample"
    );
    assert_eq!(ds.get(2).unwrap().data, want, "the parent still works");
}
