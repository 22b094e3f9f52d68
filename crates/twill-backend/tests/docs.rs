//! docs/custom-backend.md shows the `Backend` trait as this crate declares it.

/// `text` without whitespace and without trailing commas before `)`, so a
/// signature compares equal however rustfmt wraps it.
fn normalized(text: &str) -> String {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    compact.replace(",)", ")")
}

#[test]
fn docs_show_the_real_trait() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let doc = std::fs::read_to_string(format!("{root}/docs/custom-backend.md")).expect("doc");
    let lib =
        std::fs::read_to_string(format!("{root}/crates/twill-backend/src/lib.rs")).expect("lib.rs");
    let start = doc
        .find("pub trait Backend")
        .expect("the doc shows the trait");
    let block = &doc[start..];
    let block = &block[..block.find("\n}").expect("end of the trait")];
    let methods: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("fn ") || l.starts_with("async fn "))
        .collect();
    let trait_src = lib
        .split("pub trait Backend: Send {")
        .nth(1)
        .and_then(|t| t.split("\n}").next())
        .expect("the trait in lib.rs");
    let declared = trait_src
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("fn ") || l.starts_with("async fn "))
        .count();
    assert_eq!(
        declared,
        methods.len(),
        "the doc shows every method: {methods:?}"
    );
    let lib = normalized(&lib);
    for m in &methods {
        assert!(
            lib.contains(&normalized(m)),
            "docs/custom-backend.md shows `{m}`, which lib.rs does not declare"
        );
    }
}
