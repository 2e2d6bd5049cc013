//! Replays every committed fuzz corpus (`fuzz/corpus/TARGET/*`) through its target: a crash
//! that a fuzzing run found, once its input is committed, stays fixed.

use std::path::Path;

#[test]
fn every_corpus_input_runs_through_its_target_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut total = 0;
    for name in pai_fuzz_targets::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| pai_fuzz_targets::run(name, &data));
            assert!(r.is_ok(), "{name}: {} panics", path.display());
            n += 1;
        }
        assert!(n > 0, "{name}: the corpus is empty");
        total += n;
    }
    assert!(total >= pai_fuzz_targets::TARGETS.len());
}

#[test]
fn the_seeds_are_valid_inputs_and_can_be_written_to_the_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let write = std::env::var_os("PAI_FUZZ_WRITE_SEEDS").is_some();
    for (name, file, data) in pai_fuzz_targets::seeds() {
        pai_fuzz_targets::run(name, &data);
        if write {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), &data).unwrap();
        }
    }
}
