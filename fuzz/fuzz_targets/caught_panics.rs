//! For the targets that evaluate conditions (shared through `mod caught_panics;`).

/// Like production: the CEL library's panics are caught (`catch_unwind` in
/// `choreography::cel`) and become errors. libfuzzer-sys's panic hook would
/// abort on those too; a panic that escapes still aborts (libfuzzer-sys catches
/// it at the target's boundary).
pub fn quiet() {
    std::panic::set_hook(Box::new(|_| {}));
}
