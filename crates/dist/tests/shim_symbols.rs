//! The shim compiles against Debian's Gloo headers, older than the Gloo inside libtorch, so it
//! must not contain or call any Gloo code itself: only c10d's exported functions, with Gloo
//! objects behind pointers. Checked on the built archive with `nm` (the dev profile builds the
//! shim without optimisation, so an inline Gloo function used by the shim would show up as a
//! weak symbol).

use std::process::Command;

/// Demangled symbol prefixes that would mean Gloo code or data on our side.
const GLOO_PREFIXES: [&str; 4] = [
    "gloo::",
    "vtable for gloo::",
    "typeinfo for gloo::",
    "typeinfo name for gloo::",
];

#[test]
fn the_shim_defines_and_calls_no_gloo_code() {
    let archive = env!("LORAPLUS_DIST_SHIM_ARCHIVE");
    let out = Command::new("nm")
        .args(["-C", archive])
        .output()
        .unwrap_or_else(|e| panic!("running nm on {archive}: {e} (binutils is needed)"));
    assert!(out.status.success(), "nm {archive}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut gloo = Vec::new();
    let mut c10d_calls = 0;
    for line in text.lines() {
        // "<address> <type> <name>" for defined symbols, "<spaces> U <name>" for undefined ones.
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, name) = match fields.as_slice() {
            ["U", rest @ ..] => ("U", rest.join(" ")),
            [_, kind, rest @ ..] if !rest.is_empty() => (*kind, rest.join(" ")),
            _ => continue,
        };
        // Local read-only data ('r'): namespace-scope constants that Gloo's headers define
        // (timeouts, slot prefixes), private copies in our object that libtorch never sees.
        if kind == "r" {
            continue;
        }
        if GLOO_PREFIXES.iter().any(|p| name.starts_with(p)) {
            gloo.push(line.to_string());
        }
        if name.starts_with("c10d::ProcessGroupGloo::") {
            c10d_calls += 1;
        }
    }
    assert!(
        gloo.is_empty(),
        "the shim defines or calls Gloo symbols itself:\n{}",
        gloo.join("\n")
    );
    assert!(
        c10d_calls > 0,
        "no c10d::ProcessGroupGloo symbol in {archive}: is this the shim?\n{text}"
    );
}
