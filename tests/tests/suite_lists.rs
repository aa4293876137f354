//! Every public case of a conformance suite is in that suite's case list,
//! so the one list both adapter test files expand never forgets a case
//! (a case left out of the list would silently never run anywhere).

fn cases_and_list(source: &str, macro_name: &str) -> (Vec<String>, Vec<String>) {
    let cases: Vec<String> = source
        .lines()
        .filter_map(|l| l.strip_prefix("pub async fn "))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    let start = source
        .find(&format!("macro_rules! {macro_name}"))
        .unwrap_or_else(|| panic!("no macro {macro_name}"));
    let open = start + source[start..].find('[').expect("case list");
    let close = open + source[open..].find(']').expect("end of case list");
    let list = source[open + 1..close]
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    (cases, list)
}

/// A suite's source: `src/NAME.rs`, or every file of `src/NAME/` (a suite
/// split per port keeps its one case list in `mod.rs`).
fn suite_source(name: &str) -> String {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let file = src.join(format!("{name}.rs"));
    if file.exists() {
        return std::fs::read_to_string(file).unwrap();
    }
    let mut files: Vec<_> = std::fs::read_dir(src.join(name))
        .unwrap_or_else(|e| panic!("suite {name}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_suite_case_is_in_its_case_list() {
    for (suite, macro_name) in [
        ("store_suite", "store_cases"),
        ("quota_suite", "quota_cases"),
        ("queue_suite", "queue_cases"),
    ] {
        let source = suite_source(suite);
        let (mut cases, mut list) = cases_and_list(&source, macro_name);
        assert!(
            cases.len() >= 5,
            "{macro_name}: found only {cases:?}; is the parser blind?"
        );
        cases.sort();
        list.sort();
        assert_eq!(
            cases, list,
            "{macro_name}: the case list and the suite's `pub async fn`s differ"
        );
    }
}

#[test]
fn the_check_sees_a_missing_case() {
    let source = "macro_rules! x_cases {\n ($m:expr) => { suite!(p, $m, [a, b,]); };\n}\npub async fn a() {}\npub async fn b() {}\npub async fn c() {}\n";
    let (cases, list) = cases_and_list(source, "x_cases");
    assert_eq!(cases, ["a", "b", "c"]);
    assert_eq!(list, ["a", "b"]);
}
