//! Run requests: bytes → `RunRequest` → `validate`, and what a validated request promises.

fn main() {
    afl::fuzz!(|data: &[u8]| specrun_fuzz::request(data));
}
