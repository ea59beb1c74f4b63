//! A message's record and its state machine: the one place that says which state may
//! follow which.
//!
//! Every change of a message's state is one of the transitions below, a pure function
//! from the state the record is in now to the state it goes to, or `None` when the
//! record is not in a state the transition starts from. The spool applies them inside a
//! sled transaction on the record as it is at that moment (see `messages.rs`), so a
//! transition never undoes a change made by someone else meanwhile: the source changes
//! only a record's flags, the upstream only its state, and neither writes a record whole.
//!
//! ```text
//!            source                     upstream
//!  (none) ──record_new──▶ Spooled ──claim──▶ Appending ──settle──▶ Appended
//!                    ▲     ▲  ▲                 │  │                  │
//!                    │     │  └────settle(unsent)┘  └─settle(refused)─▶ Failed ──claim (when due)──▶ Appending
//!                    │     └───────resolve (not at the destination)───┘           │
//!                    │                                                              └─▶ Skipped (refused for good)
//!  source expunge:  Appended ─▶ Expunging ──deleted_at_dest──▶ Expunged
//!                   Spooled / Failed / Skipped ─▶ Expunged
//! ```
//!
//! This file does no I/O, so the rules are unit-tested as they are.

use serde::{Deserialize, Serialize};

/// Content hash of a message body: 32 bytes over the exact bytes, by the spool's
/// [`super::BodyHasher`].
pub type BodyHash = [u8; 32];

/// What the spool knows of one source message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub uid: u32,
    pub hash: BodyHash,
    pub size: u64,
    /// INTERNALDATE exactly as the source sent it ("dd-Mon-yyyy hh:mm:ss +zzzz").
    pub internal_date: String,
    /// Unix seconds of the INTERNALDATE, for newest-first ordering.
    pub internal_ts: i64,
    /// Flags as the source reports them now (system flags with backslash, keywords as is),
    /// without \Recent.
    pub flags: Vec<String>,
    pub state: MessageState,
}

/// Where a message is on its way to the destination.
///
/// Records are bincode-encoded, which stores a variant's index and its fields in order,
/// with no names. So that records written by an older version still decode: new variants
/// go at the end, and a variant may only gain fields at its end (each takes at least one
/// byte, so an old record then ends too early to decode as the new layout and is decoded
/// by [`MessageStateV1`] instead; see `decode_message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// In the spool, not yet sent.
    Spooled,
    /// Claimed by the upstream for an APPEND, which was (or may have been) sent.
    /// `dest_uidnext` is the destination folder's UIDNEXT observed before the batch that
    /// holds this message, so a restart can look for it above that UID before it appends
    /// it again; `marked_ms` is when it was claimed (Unix milliseconds; 0 for a record of
    /// an older version), which tells a restart whether the session that sent it might
    /// still be at work at the server; `attempts` counts the refusals before this claim.
    Appending {
        dest_folder: String,
        dest_uidvalidity: u32,
        dest_uidnext: u32,
        marked_ms: i64,
        attempts: u32,
    },
    /// At the destination. `dest_uid` is 0 when the destination gave no APPENDUID.
    /// `flags` are the flags last written to the destination.
    Appended {
        dest_folder: String,
        dest_uidvalidity: u32,
        dest_uid: u32,
        flags: Vec<String>,
    },
    /// Deliberately not copied (too big, over the item limit, refused for good).
    Skipped { reason: String },
    /// Refused by the destination for a reason that may pass (a full quota, a server
    /// problem, no reason given). `attempts` counts the refusals; the next claim waits
    /// until `retry_after` (Unix seconds), and after [`MAX_ATTEMPTS`] refusals none
    /// comes by itself (see [`MessageState::retried`]). `code` is the response code the
    /// destination gave (`OVERQUOTA`...), kept for the reports.
    Failed {
        reason: String,
        attempts: u32,
        code: Option<String>,
        retry_after: i64,
    },
    /// With `[sync] propagate_deletes`: the source expunged the message while it was at
    /// the destination (the `Appended` fields, kept). The upstream deletes exactly
    /// `dest_uid` there (UID STORE \Deleted, UID EXPUNGE) and records `Expunged`. Doing
    /// that twice is harmless: the UID is never reused, so a repeat touches nothing.
    Expunging {
        dest_folder: String,
        dest_uidvalidity: u32,
        dest_uid: u32,
    },
    /// With `[sync] propagate_deletes`: the source expunged the message and nothing of it
    /// is left to do (its destination copy was deleted, or it never got there). Kept as a
    /// tombstone: the UID never comes back at the source.
    Expunged,
}

/// Refusals after which a message is no longer retried by itself: the admin's
/// "retry errors" ([`MessageState::retried`]) starts it again. With the backoff of
/// [`retry_delay`] they span about eight hours.
pub const MAX_ATTEMPTS: u32 = 10;

/// How long a message refused `attempts` times waits before it is tried again: one
/// minute, doubling, at most an hour. A quota that is full for a quarter of an hour costs
/// a few tries, not the message.
pub fn retry_delay(attempts: u32) -> i64 {
    let exp = attempts.saturating_sub(1).min(6);
    (60i64 << exp).min(3600)
}

/// Where and when a batch was claimed: what [`MessageState::Appending`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub dest_folder: String,
    pub dest_uidvalidity: u32,
    pub dest_uidnext: u32,
    pub marked_ms: i64,
}

/// What became of one claimed message's APPEND, as the upstream read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The destination took it; `dest_uid` 0 without APPENDUID. `flags` are those the
    /// APPEND carried.
    Appended {
        dest_uidvalidity: u32,
        dest_uid: u32,
        flags: Vec<String>,
    },
    /// It was not appended and it was not the message's fault: throttled, refused together
    /// with the rest of a MULTIAPPEND, or never sent. Back to where it was before the claim.
    Unsent,
    /// The destination refused it. `permanent`: it never will take it (too big, cannot be
    /// parsed), so it is skipped; otherwise it is retried later.
    Refused {
        reason: String,
        code: Option<String>,
        permanent: bool,
    },
}

/// What recovery found of an uncertain APPEND at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Its copy is there, with this UID and these flags.
    Found { dest_uid: u32, flags: Vec<String> },
    /// It is not there: it goes back to be sent again.
    NotThere,
}

impl MessageState {
    /// The message is still in the source folder, as far as the spool knows (not
    /// `Expunging` or `Expunged`).
    pub fn is_live(&self) -> bool {
        !matches!(
            self,
            MessageState::Expunging { .. } | MessageState::Expunged
        )
    }

    /// The upstream may claim it now (`now`: Unix seconds): it was never sent, or it was
    /// refused fewer than [`MAX_ATTEMPTS`] times and its wait is over.
    pub fn claimable(&self, now: i64) -> bool {
        match self {
            MessageState::Spooled => true,
            MessageState::Failed {
                attempts,
                retry_after,
                ..
            } => *attempts < MAX_ATTEMPTS && *retry_after <= now,
            _ => false,
        }
    }

    /// Upstream: claimed for an APPEND under `claim`.
    pub fn claim(&self, claim: &Claim, now: i64) -> Option<MessageState> {
        if !self.claimable(now) {
            return None;
        }
        let attempts = match self {
            MessageState::Failed { attempts, .. } => *attempts,
            _ => 0,
        };
        Some(MessageState::Appending {
            dest_folder: claim.dest_folder.clone(),
            dest_uidvalidity: claim.dest_uidvalidity,
            dest_uidnext: claim.dest_uidnext,
            marked_ms: claim.marked_ms,
            attempts,
        })
    }

    /// Upstream: the outcome of the APPEND of a message claimed under `claim` (`now`:
    /// Unix seconds). Only a record still holding that very claim is settled: one that
    /// recovery, or the source, moved on meanwhile is left as it is.
    pub fn settle(&self, claim: &Claim, outcome: &Settle, now: i64) -> Option<MessageState> {
        let MessageState::Appending {
            dest_folder,
            dest_uidvalidity,
            marked_ms,
            attempts,
            ..
        } = self
        else {
            return None;
        };
        if *dest_folder != claim.dest_folder
            || *dest_uidvalidity != claim.dest_uidvalidity
            || *marked_ms != claim.marked_ms
        {
            return None;
        }
        Some(match outcome {
            Settle::Appended {
                dest_uidvalidity,
                dest_uid,
                flags,
            } => MessageState::Appended {
                dest_folder: dest_folder.clone(),
                dest_uidvalidity: *dest_uidvalidity,
                dest_uid: *dest_uid,
                flags: flags.clone(),
            },
            Settle::Unsent if *attempts == 0 => MessageState::Spooled,
            // Refused before: it keeps its count, and is due again at once.
            Settle::Unsent => MessageState::Failed {
                reason: "refused before; its last APPEND was not sent (throttled, or refused \
                         with its batch), so it is tried again"
                    .into(),
                attempts: *attempts,
                code: None,
                retry_after: 0,
            },
            Settle::Refused {
                reason,
                permanent: true,
                ..
            } => MessageState::Skipped {
                reason: reason.clone(),
            },
            Settle::Refused { reason, code, .. } => {
                let attempts = attempts.saturating_add(1);
                MessageState::Failed {
                    reason: reason.clone(),
                    attempts,
                    code: code.clone(),
                    retry_after: now.saturating_add(retry_delay(attempts)),
                }
            }
        })
    }

    /// Upstream recovery: what was found at the destination of an APPEND whose outcome
    /// was never read.
    pub fn resolve(&self, found: &Resolution) -> Option<MessageState> {
        let MessageState::Appending {
            dest_folder,
            dest_uidvalidity,
            attempts,
            ..
        } = self
        else {
            return None;
        };
        Some(match found {
            Resolution::Found { dest_uid, flags } => MessageState::Appended {
                dest_folder: dest_folder.clone(),
                dest_uidvalidity: *dest_uidvalidity,
                dest_uid: *dest_uid,
                flags: flags.clone(),
            },
            Resolution::NotThere if *attempts == 0 => MessageState::Spooled,
            Resolution::NotThere => MessageState::Failed {
                reason: "refused before; its last APPEND did not arrive, so it is tried again"
                    .into(),
                attempts: *attempts,
                code: None,
                retry_after: 0,
            },
        })
    }

    /// Upstream: the message's flags at the destination are now `flags`. Only for the copy
    /// with that UID: a record recovered or moved meanwhile is left alone.
    pub fn flags_written(&self, uid: u32, flags: &[String]) -> Option<MessageState> {
        match self {
            MessageState::Appended {
                dest_folder,
                dest_uidvalidity,
                dest_uid,
                ..
            } if *dest_uid == uid => Some(MessageState::Appended {
                dest_folder: dest_folder.clone(),
                dest_uidvalidity: *dest_uidvalidity,
                dest_uid: *dest_uid,
                flags: flags.to_vec(),
            }),
            _ => None,
        }
    }

    /// Source, with `propagate_deletes`: the source no longer has the message. A copy at
    /// the destination is to be deleted (`Expunging`); one that never got there is done
    /// with. An APPEND in doubt is settled first (`None`): the next read sees the message
    /// gone again.
    pub fn expunged_at_source(&self) -> Option<MessageState> {
        match self {
            MessageState::Appended {
                dest_folder,
                dest_uidvalidity,
                dest_uid,
                ..
            } => Some(MessageState::Expunging {
                dest_folder: dest_folder.clone(),
                dest_uidvalidity: *dest_uidvalidity,
                dest_uid: *dest_uid,
            }),
            MessageState::Spooled | MessageState::Failed { .. } | MessageState::Skipped { .. } => {
                Some(MessageState::Expunged)
            }
            MessageState::Appending { .. }
            | MessageState::Expunging { .. }
            | MessageState::Expunged => None,
        }
    }

    /// Upstream: the destination copy with UID `uid` was deleted.
    pub fn deleted_at_dest(&self, uid: u32) -> Option<MessageState> {
        match self {
            MessageState::Expunging { dest_uid, .. } if *dest_uid == uid => {
                Some(MessageState::Expunged)
            }
            _ => None,
        }
    }

    /// The admin's "retry errors": a failed message is due again at once, with a fresh
    /// count.
    pub fn retried(&self) -> Option<MessageState> {
        match self {
            MessageState::Failed { reason, code, .. } => Some(MessageState::Failed {
                reason: reason.clone(),
                attempts: 0,
                code: code.clone(),
                retry_after: 0,
            }),
            _ => None,
        }
    }

    /// Source, after its folder got a new UIDVALIDITY: the state a message of the new
    /// generation takes over from the record of the old one with the same content. What is
    /// at the destination stays there (`Appended`, or `Appending` for recovery to settle);
    /// anything else is sent as a new message.
    pub fn carried(&self) -> Option<MessageState> {
        match self {
            MessageState::Appended { .. } | MessageState::Appending { .. } => Some(self.clone()),
            _ => None,
        }
    }
}

/// Flags compared as a set, case-insensitively (IMAP flags are case-insensitive and
/// servers may reorder them).
pub fn same_flag_set(a: &[String], b: &[String]) -> bool {
    let norm = |v: &[String]| {
        let mut v: Vec<String> = v.iter().map(|f| f.to_ascii_lowercase()).collect();
        v.sort();
        v.dedup();
        v
    };
    norm(a) == norm(b)
}

/// [`MessageState`] as written before claims recorded their time and failures their
/// code: how records of that version decode.
#[derive(Deserialize)]
pub(super) enum MessageStateV1 {
    Spooled,
    Appending {
        dest_folder: String,
        dest_uidvalidity: u32,
        dest_uidnext: u32,
    },
    Appended {
        dest_folder: String,
        dest_uidvalidity: u32,
        dest_uid: u32,
        flags: Vec<String>,
    },
    Skipped {
        reason: String,
    },
    Failed {
        reason: String,
        attempts: u32,
    },
    Expunging {
        dest_folder: String,
        dest_uidvalidity: u32,
        dest_uid: u32,
    },
    Expunged,
}

/// [`MessageRecord`] with a [`MessageStateV1`].
#[derive(Deserialize)]
pub(super) struct MessageRecordV1 {
    uid: u32,
    hash: BodyHash,
    size: u64,
    internal_date: String,
    internal_ts: i64,
    flags: Vec<String>,
    state: MessageStateV1,
}

impl From<MessageRecordV1> for MessageRecord {
    fn from(v: MessageRecordV1) -> MessageRecord {
        let state = match v.state {
            MessageStateV1::Spooled => MessageState::Spooled,
            MessageStateV1::Appending {
                dest_folder,
                dest_uidvalidity,
                dest_uidnext,
            } => MessageState::Appending {
                dest_folder,
                dest_uidvalidity,
                dest_uidnext,
                // Claimed by an older version, which is not running any more.
                marked_ms: 0,
                attempts: 0,
            },
            MessageStateV1::Appended {
                dest_folder,
                dest_uidvalidity,
                dest_uid,
                flags,
            } => MessageState::Appended {
                dest_folder,
                dest_uidvalidity,
                dest_uid,
                flags,
            },
            MessageStateV1::Skipped { reason } => MessageState::Skipped { reason },
            MessageStateV1::Failed { reason, attempts } => MessageState::Failed {
                reason,
                attempts,
                code: None,
                retry_after: 0,
            },
            MessageStateV1::Expunging {
                dest_folder,
                dest_uidvalidity,
                dest_uid,
            } => MessageState::Expunging {
                dest_folder,
                dest_uidvalidity,
                dest_uid,
            },
            MessageStateV1::Expunged => MessageState::Expunged,
        };
        MessageRecord {
            uid: v.uid,
            hash: v.hash,
            size: v.size,
            internal_date: v.internal_date,
            internal_ts: v.internal_ts,
            flags: v.flags,
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ms: i64) -> Claim {
        Claim {
            dest_folder: "Inbox".into(),
            dest_uidvalidity: 7,
            dest_uidnext: 100,
            marked_ms: ms,
        }
    }

    fn appending(ms: i64, attempts: u32) -> MessageState {
        MessageState::Appending {
            dest_folder: "Inbox".into(),
            dest_uidvalidity: 7,
            dest_uidnext: 100,
            marked_ms: ms,
            attempts,
        }
    }

    fn appended(uid: u32) -> MessageState {
        MessageState::Appended {
            dest_folder: "Inbox".into(),
            dest_uidvalidity: 7,
            dest_uid: uid,
            flags: vec!["\\Seen".into()],
        }
    }

    fn failed(attempts: u32, retry_after: i64) -> MessageState {
        MessageState::Failed {
            reason: "NO quota".into(),
            attempts,
            code: Some("OVERQUOTA".into()),
            retry_after,
        }
    }

    #[test]
    fn only_spooled_and_due_failures_are_claimed() {
        let c = claim(5);
        assert_eq!(MessageState::Spooled.claim(&c, 0), Some(appending(5, 0)));
        assert_eq!(failed(2, 50).claim(&c, 49), None, "not due yet");
        assert_eq!(failed(2, 50).claim(&c, 50), Some(appending(5, 2)));
        assert_eq!(failed(MAX_ATTEMPTS, 0).claim(&c, 1000), None, "given up");
        for s in [
            appending(1, 0),
            appended(3),
            MessageState::Skipped { reason: "x".into() },
            MessageState::Expunged,
            MessageState::Expunging {
                dest_folder: "Inbox".into(),
                dest_uidvalidity: 7,
                dest_uid: 3,
            },
        ] {
            assert_eq!(s.claim(&c, 0), None, "{s:?} must not be claimed");
        }
    }

    #[test]
    fn settle_needs_the_same_claim() {
        let ok = Settle::Appended {
            dest_uidvalidity: 7,
            dest_uid: 101,
            flags: vec!["\\Seen".into()],
        };
        assert_eq!(
            appending(5, 0).settle(&claim(5), &ok, 0),
            Some(appended(101))
        );
        // Another claim (an earlier session's) or a record recovery moved on: untouched.
        assert_eq!(appending(4, 0).settle(&claim(5), &ok, 0), None);
        assert_eq!(appended(101).settle(&claim(5), &ok, 0), None);
        assert_eq!(MessageState::Spooled.settle(&claim(5), &ok, 0), None);
    }

    #[test]
    fn unsent_goes_back_where_it_was() {
        assert_eq!(
            appending(5, 0).settle(&claim(5), &Settle::Unsent, 0),
            Some(MessageState::Spooled)
        );
        match appending(5, 3).settle(&claim(5), &Settle::Unsent, 0) {
            Some(MessageState::Failed {
                attempts: 3,
                retry_after: 0,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_are_retried_with_backoff_or_skipped() {
        let transient = Settle::Refused {
            reason: "NO [OVERQUOTA] full".into(),
            code: Some("OVERQUOTA".into()),
            permanent: false,
        };
        assert_eq!(
            appending(5, 0).settle(&claim(5), &transient, 1000),
            Some(MessageState::Failed {
                reason: "NO [OVERQUOTA] full".into(),
                attempts: 1,
                code: Some("OVERQUOTA".into()),
                retry_after: 1060,
            })
        );
        let permanent = Settle::Refused {
            reason: "NO [TOOBIG]".into(),
            code: Some("TOOBIG".into()),
            permanent: true,
        };
        assert_eq!(
            appending(5, 0).settle(&claim(5), &permanent, 0),
            Some(MessageState::Skipped {
                reason: "NO [TOOBIG]".into()
            })
        );
        assert_eq!(retry_delay(1), 60);
        assert_eq!(retry_delay(2), 120);
        assert_eq!(retry_delay(7), 3600);
        assert_eq!(retry_delay(u32::MAX), 3600);
    }

    #[test]
    fn recovery_resolves_any_claim() {
        let found = Resolution::Found {
            dest_uid: 9,
            flags: vec!["\\Seen".into()],
        };
        assert_eq!(appending(1, 0).resolve(&found), Some(appended(9)));
        assert_eq!(
            appending(1, 0).resolve(&Resolution::NotThere),
            Some(MessageState::Spooled)
        );
        assert!(matches!(
            appending(1, 2).resolve(&Resolution::NotThere),
            Some(MessageState::Failed { attempts: 2, .. })
        ));
        assert_eq!(appended(9).resolve(&Resolution::NotThere), None);
        assert_eq!(MessageState::Spooled.resolve(&found), None);
    }

    #[test]
    fn source_expunges() {
        assert!(matches!(
            appended(4).expunged_at_source(),
            Some(MessageState::Expunging { dest_uid: 4, .. })
        ));
        assert_eq!(
            MessageState::Spooled.expunged_at_source(),
            Some(MessageState::Expunged)
        );
        assert_eq!(appending(1, 0).expunged_at_source(), None);
        let expunging = appended(4).expunged_at_source().unwrap();
        assert_eq!(expunging.deleted_at_dest(5), None);
        assert_eq!(expunging.deleted_at_dest(4), Some(MessageState::Expunged));
    }

    #[test]
    fn flags_are_written_to_the_copy_they_were_written_to() {
        let f = vec!["\\Flagged".into()];
        assert!(matches!(
            appended(4).flags_written(4, &f),
            Some(MessageState::Appended { flags, .. }) if flags == f
        ));
        assert_eq!(appended(4).flags_written(5, &f), None);
        assert_eq!(MessageState::Spooled.flags_written(4, &f), None);
    }

    #[test]
    fn retry_errors_starts_afresh() {
        assert_eq!(failed(MAX_ATTEMPTS, 99).retried(), Some(failed(0, 0)));
        assert_eq!(MessageState::Spooled.retried(), None);
    }

    #[test]
    fn what_a_new_generation_takes_over() {
        assert_eq!(appended(3).carried(), Some(appended(3)));
        assert_eq!(appending(1, 0).carried(), Some(appending(1, 0)));
        assert_eq!(MessageState::Spooled.carried(), None);
        assert_eq!(failed(1, 0).carried(), None);
    }
}
