//! `seed TARGET DIR`: writes target TARGET's seed corpus into DIR (`seed-N` files), for
//! `cargo xtask fuzz`. Run with the same `STRATA_FUZZ_SCRATCH` as the target, so that seeds
//! naming the scratch directory name the one the target uses.

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, dir] = args.as_slice() else {
        return Err("usage: seed TARGET DIR".into());
    };
    let t = strata_fuzz::TARGETS
        .iter()
        .find(|t| t.name == target)
        .ok_or_else(|| format!("no fuzz target {target}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    for (i, s) in (t.seeds)().iter().enumerate() {
        let path = std::path::Path::new(dir).join(format!("seed-{i}"));
        std::fs::write(&path, s).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
