//! Queue message bodies: Celery task messages and specrun's own formats.

fn main() {
    afl::fuzz!(|data: &[u8]| specrun_fuzz::queue_message(data));
}
