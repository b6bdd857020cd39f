//! Fuzz target bodies. Each target is a plain function that `cargo test -p fuzz` runs over a
//! committed corpus; cargo-fuzz binaries call the same functions. Targets arrive with the fuzz issue.
