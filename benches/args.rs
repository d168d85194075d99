//! Command-line options of the bench binaries: `--name value` and `--flag`.

/// The value after `name`, or `default`; a value that does not parse stops the bench with a message naming it.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, not {v}")))
        .unwrap_or(default)
}

/// Whether `name` was given.
#[allow(dead_code)]
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Every value given after `name` (the option may be repeated).
#[allow(dead_code)]
pub fn all(name: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).filter(|pair| pair[0] == name).map(|pair| pair[1].clone()).collect()
}
