//! `dfs-fuzz TARGET`: runs one of `dfs_core::fuzz::TARGETS` under AFL (inputs on stdin, many per
//! process). `dfs-fuzz seeds DIR` writes each target's starting inputs to `DIR/<target>/`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir] if cmd == "seeds" => {
            for (name, seeds) in dfs_core::fuzz::seeds() {
                let dir = std::path::Path::new(dir).join(name);
                std::fs::create_dir_all(&dir).expect("seed dir");
                for (i, seed) in seeds.iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i}")), seed).expect("seed file");
                }
            }
        }
        [name] => {
            let Some((_, target)) = dfs_core::fuzz::TARGETS.iter().find(|(n, _)| n == name) else {
                let names: Vec<&str> = dfs_core::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
                eprintln!("dfs-fuzz: no target {name:?}; the targets: {}", names.join(", "));
                std::process::exit(2);
            };
            afl::fuzz!(|data: &[u8]| target(data));
        }
        _ => {
            eprintln!("usage: dfs-fuzz TARGET | dfs-fuzz seeds DIR");
            std::process::exit(2);
        }
    }
}
