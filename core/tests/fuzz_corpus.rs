//! Every committed input of every fuzz target (`fuzz/corpus/<target>/`), and every regression
//! a campaign found (`fuzz/regressions/<target>/`), run through the targets of
//! `dfs_core::fuzz`, which panic on a broken promise. The corpus is what the fuzzer kept:
//! inputs that reach distinct code. Runs without AFL, in every `cargo test`.

use std::path::Path;

#[test]
fn fuzz_corpus_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut ran = 0;
    for (name, target) in dfs_core::fuzz::TARGETS {
        let mut of_target = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
            for entry in dir.flatten() {
                let input = std::fs::read(entry.path()).expect("corpus file");
                target(&input);
                of_target += 1;
            }
        }
        // The corpus is committed: none for a target means the replay looks in the wrong place.
        assert!(of_target > 0, "no corpus input for target {name} under {}", root.display());
        ran += of_target;
    }
    eprintln!("{ran} corpus inputs replayed");
}
