//! Every preset in data/presets parses and validates (unknown keys would be rejected).

#[test]
fn every_preset_parses_and_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/presets");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml" || x == "json") {
            let cfg = loraplus_train::TrainConfig::from_file(&p)
                .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            assert!(cfg.lora.r >= 1);
            n += 1;
        }
    }
    assert!(
        n >= 4,
        "expected the CPU default and the paper's presets, found {n}"
    );
}
