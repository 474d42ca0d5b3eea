//! Benchmarks for `geo`: building the embedded gazetteer index (`load`, paid once per process on
//! first use) and resolving typed places (`resolve`), including the fuzzy "did you mean" path.
//! Run: `cargo bench -p firstmile-geo`.

use geo::gazetteer::Gazetteer;

fn main() {
    divan::main();
}

/// Index the embedded file from scratch (what `Gazetteer::embedded()` does once).
#[divan::bench]
fn load() -> Gazetteer {
    Gazetteer::load_embedded_uncached()
}

#[divan::bench(args = ["Paris", "sao paulo", "Austin, TX", "SFO", "Germany", "48.8566,2.3522", "Frankfrut"])]
fn resolve(input: &str) {
    let g = Gazetteer::embedded();
    let _ = divan::black_box(g.resolve(divan::black_box(input)));
}
