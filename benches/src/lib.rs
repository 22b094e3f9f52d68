//! twill's benchmarks: `cargo bench -p twill-benches` runs the criterion
//! benches under `benches/`; `scripts/` holds end-to-end benchmark scripts.
