//! Frees pages set aside (a receiver's old pages), on a thread of its own.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};

use super::Aside;

/// Past this many bytes waiting to be freed, a receiver frees its old
/// pages itself: resident memory stays bounded however fast calls come.
pub(super) const MAX_WAITING: usize = 256 << 20;

static WAITING: AtomicUsize = AtomicUsize::new(0);

fn reaper() -> Option<&'static Sender<Aside>> {
    static REAPER: OnceLock<Option<Sender<Aside>>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            let (send, receive) = mpsc::channel::<Aside>();
            let started = crate::threads::spawn("cwasi-page-reaper", move || {
                for aside in receive {
                    let len = aside.len;
                    aside.free();
                    WAITING.fetch_sub(len, Ordering::Relaxed);
                }
            });
            started.ok().map(|_| send)
        })
        .as_ref()
}

pub(super) fn free(aside: Aside) {
    let len = aside.len;
    let Some(reaper) = reaper() else { return aside.free() };
    let aside = if WAITING.fetch_add(len, Ordering::Relaxed) + len <= MAX_WAITING {
        match reaper.send(aside) {
            Ok(()) => return,
            Err(mpsc::SendError(aside)) => aside,
        }
    } else {
        aside
    };
    WAITING.fetch_sub(len, Ordering::Relaxed);
    aside.free();
}
