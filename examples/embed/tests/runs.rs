//! The embedding example runs to the end and programs what it should.

#[test]
fn the_embedded_agent_programs_two_peers_then_drops_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twill-embed"))
        .output()
        .expect("running twill-embed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("our subnet: 10.5."), "{stdout}");
    for line in [
        "route add 10.5.7.0/24 via 192.0.2.7",
        "route add 10.5.9.0/24 via 192.0.2.9",
        "route del 10.5.7.0/24 via 192.0.2.7",
    ] {
        assert_eq!(stdout.matches(line).count(), 1, "{line:?} in {stdout}");
    }
    assert!(!stdout.contains("route del 10.5.9.0/24"), "{stdout}");
}
