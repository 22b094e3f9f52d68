//! `flannel`: the CNI plugin binary (see the `twill_cni` crate docs).

#![deny(missing_docs)]

fn main() {
    let code = twill_cni::plugin::run(
        |k| std::env::var(k).ok(),
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
