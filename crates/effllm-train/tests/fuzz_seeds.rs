//! The token-file fuzz body (`effllm_train::token_file::fuzz_parse`) over the committed seeds of the `token_file`
//! fuzz target: valid, truncated, trailing-byte, hostile-count, bad-magic/version/vocabulary/UTF-8 files.

use std::path::Path;

use effllm_train::TokenFile;
use effllm_train::token_file::fuzz_parse;

#[test]
fn every_seed_parses_or_fails_typed_and_the_valid_one_is_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus-seeds/token_file");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        fuzz_parse(&bytes);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let ok = TokenFile::parse(&bytes).is_ok();
        assert_eq!(ok, name == "valid" || name == "empty_streams", "{name}: accepted = {ok}");
        seen += 1;
    }
    assert!(seen >= 10, "{seen} seeds in {}", dir.display());
}
