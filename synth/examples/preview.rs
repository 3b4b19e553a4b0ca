//! Write the contact sheets of a world: `cargo run -p perceptio-synth --release --example preview -- DIR [SEED] [SIZE]`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: preview DIR [SEED] [SIZE]")?;
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let size: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let cfg = perceptio_synth::SynthConfig { size, ..Default::default() };
    for p in perceptio_synth::preview::write_contact_sheets(std::path::Path::new(&dir), &cfg, seed, 16)? {
        println!("{}", p.display());
    }
    Ok(())
}
