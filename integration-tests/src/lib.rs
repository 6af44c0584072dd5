//! Cross-crate tests of tidings; see the `tests/` folder.
