//! The sensitive-word filter of an app: aho-corasick over a word list read
//! from a file, matched case-insensitively anywhere in a UTF-8 body (also
//! inside longer words: Chinese and Japanese text has no spaces to split on).
//!
//! The file is re-read when its modification time changes, checked at most
//! every `reload_secs` by whichever message comes first; no watcher thread.
//! A file that disappears or cannot be read keeps the last good list.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use aho_corasick::{AhoCorasick, MatchKind};
use switchboard_core::hooks::{FilterAction, WordFilterConfig};

use crate::HookError;

/// What the filter made of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// No listed word.
    Clean,
    /// The body with every match masked (action `mask`).
    Masked(String),
    /// The first listed word found (action `reject`).
    Rejected(String),
}

/// One compiled word list.
struct Matcher {
    automaton: Option<AhoCorasick>,
    modified: Option<SystemTime>,
}

/// A word filter for one app.
pub struct WordFilter {
    path: PathBuf,
    action: FilterAction,
    check_every: Duration,
    // A std RwLock: held only to clone or swap the Arc, never across an await.
    matcher: RwLock<Arc<Matcher>>,
    /// When the file was last checked (ms since the Unix epoch); the one
    /// message that moves it does the check, the others use the current list.
    last_check_ms: AtomicI64,
}

impl WordFilter {
    /// Reads the word list; a missing or unreadable file at start is an error.
    pub fn new(app: &str, config: &WordFilterConfig) -> Result<WordFilter, HookError> {
        let path = config.words_file.clone();
        let invalid = |reason: String| HookError::Config {
            app: app.into(),
            reason,
        };
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(format!("word_filter.words_file {}: {e}", path.display())))?;
        let automaton = compile(&text)
            .map_err(|e| invalid(format!("word_filter.words_file {}: {e}", path.display())))?;
        Ok(WordFilter {
            path,
            action: config.action,
            check_every: Duration::from_secs(config.reload_secs.unwrap_or(2)),
            matcher: RwLock::new(Arc::new(Matcher {
                automaton,
                modified,
            })),
            last_check_ms: AtomicI64::new(switchboard_core::now_ms()),
        })
    }

    /// The file the words come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Filters a body (after reloading the list if its file changed).
    pub async fn apply(&self, text: &str) -> Filtered {
        self.maybe_reload().await;
        let matcher = self.current();
        let Some(ac) = &matcher.automaton else {
            return Filtered::Clean;
        };
        filter_text(ac, self.action, text)
    }

    fn current(&self) -> Arc<Matcher> {
        self.matcher
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the file when its modification time changed, at most once
    /// per `check_every`.
    pub async fn maybe_reload(&self) {
        let now = switchboard_core::now_ms();
        let last = self.last_check_ms.load(Ordering::Relaxed);
        let every = i64::try_from(self.check_every.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(last) < every {
            return;
        }
        if self
            .last_check_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // another message is checking
        }
        self.reload_if_changed().await;
    }

    /// Re-reads the file now if its modification time differs from the
    /// loaded one; returns whether a new list was loaded.
    pub async fn reload_if_changed(&self) -> bool {
        let modified = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m.modified().ok(),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "word list unreadable; keeping the last one");
                return false;
            }
        };
        if modified.is_some() && modified == self.current().modified {
            return false;
        }
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "word list unreadable; keeping the last one");
                return false;
            }
        };
        match compile(&text) {
            Ok(automaton) => {
                let words = automaton.as_ref().map_or(0, |a| a.patterns_len());
                *self.matcher.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Matcher {
                    automaton,
                    modified,
                });
                tracing::info!(file = %self.path.display(), words, "word list reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "word list invalid; keeping the last one");
                false
            }
        }
    }
}

/// Lower-cases one char when its lower case is one char too, so the folded
/// text has exactly the chars of the original, one for one, and a match's
/// char positions are the original's.
fn fold(c: char) -> char {
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

/// An automaton over the folded words; None for a list without words.
fn compile(text: &str) -> Result<Option<AhoCorasick>, String> {
    let words: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|w| !w.is_empty() && !w.starts_with('#'))
        .map(|w| w.chars().map(fold).collect())
        .collect();
    if words.is_empty() {
        return Ok(None);
    }
    AhoCorasick::builder()
        // Longest first: with "bad" and "badword" listed, "badword" is masked whole.
        .match_kind(MatchKind::LeftmostLongest)
        .build(&words)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn filter_text(ac: &AhoCorasick, action: FilterAction, text: &str) -> Filtered {
    let folded: String = text.chars().map(fold).collect();
    let mut matches = ac.find_iter(&folded).peekable();
    if matches.peek().is_none() {
        return Filtered::Clean;
    }
    if action == FilterAction::Reject {
        let word = matches
            .next()
            .and_then(|m| folded.get(m.start()..m.end()))
            .unwrap_or_default();
        return Filtered::Rejected(word.to_string());
    }
    // Byte ranges in `folded` to char ranges, then back to the original:
    // both strings have the same chars, though not the same bytes.
    let mut masked = String::with_capacity(text.len());
    let mut folded_chars = folded.char_indices().peekable();
    let mut original = text.chars();
    for m in matches {
        // Copy the chars before the match.
        while let Some(&(i, _)) = folded_chars.peek() {
            if i >= m.start() {
                break;
            }
            folded_chars.next();
            if let Some(c) = original.next() {
                masked.push(c);
            }
        }
        // Mask the match, one `*` per char.
        while let Some(&(i, _)) = folded_chars.peek() {
            if i >= m.end() {
                break;
            }
            folded_chars.next();
            original.next();
            masked.push('*');
        }
    }
    masked.extend(original);
    Filtered::Masked(masked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(words: &str, action: FilterAction, text: &str) -> Filtered {
        let ac = compile(words).unwrap().unwrap();
        filter_text(&ac, action, text)
    }

    #[test]
    fn masks_case_insensitively_per_char() {
        assert_eq!(
            filter(
                "darn\nHeck\n",
                FilterAction::Mask,
                "Darn it, HECK and heckle"
            ),
            Filtered::Masked("**** it, **** and ****le".into())
        );
    }

    #[test]
    fn masks_multibyte_words_with_one_star_per_char() {
        assert_eq!(
            filter("坏蛋\nÄrger", FilterAction::Mask, "你是坏蛋! ärger? ok"),
            Filtered::Masked("你是**! *****? ok".into())
        );
    }

    #[test]
    fn chars_whose_lower_case_is_longer_keep_positions() {
        // 'İ' lower-cases to two chars; it is kept as is, and what follows
        // is still masked at the right place.
        assert_eq!(
            filter("bad", FilterAction::Mask, "İ BAD İ"),
            Filtered::Masked("İ *** İ".into())
        );
    }

    #[test]
    fn longest_word_wins_and_comments_are_skipped() {
        assert_eq!(
            filter(
                "# a comment\nbad\nbadword\n\n",
                FilterAction::Mask,
                "a badword"
            ),
            Filtered::Masked("a *******".into())
        );
        assert_eq!(
            filter("bad", FilterAction::Mask, "clean text"),
            Filtered::Clean
        );
    }

    #[test]
    fn reject_names_the_word() {
        assert_eq!(
            filter("heck", FilterAction::Reject, "oh HECK"),
            Filtered::Rejected("heck".into())
        );
    }

    #[test]
    fn empty_list_compiles_to_nothing() {
        assert!(compile("# nothing\n\n").unwrap().is_none());
    }
}
