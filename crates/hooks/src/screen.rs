//! [`AppScreens`]: the core `Screen` of a node, the before-send hook and the
//! word filter of each app (the sender's app decides).
//!
//! Order: the hook first, then the filter on whatever body the hook left, so
//! a stored body never holds a listed word, even one a hook put in. Binary
//! (non-UTF-8) bodies are not filtered.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use switchboard_core::hooks::{Screen, ScreenError, Verdict};
use switchboard_core::{AppConfig, Message};

use crate::filter::Filtered;
use crate::{BeforeSendHook, HookError, WordFilter};

struct AppScreen {
    hook: Option<BeforeSendHook>,
    filter: Option<WordFilter>,
}

/// The screens of every app that configured a hook or a filter.
pub struct AppScreens {
    apps: HashMap<String, AppScreen>,
}

impl AppScreens {
    /// The screens of `apps`; None when no app has a hook or a filter (the
    /// logic then skips screening altogether).
    pub fn new<'a>(
        apps: impl IntoIterator<Item = &'a AppConfig>,
    ) -> Result<Option<AppScreens>, HookError> {
        let mut out = HashMap::new();
        for app in apps {
            let hook = app
                .before_send
                .as_ref()
                .map(|c| BeforeSendHook::new(&app.name, c))
                .transpose()?;
            let filter = app
                .word_filter
                .as_ref()
                .map(|c| WordFilter::new(&app.name, c))
                .transpose()?;
            if hook.is_some() || filter.is_some() {
                out.insert(app.name.clone(), AppScreen { hook, filter });
            }
        }
        Ok((!out.is_empty()).then_some(AppScreens { apps: out }))
    }

    /// The word filter of `app`, if any (for an explicit reload).
    pub fn filter(&self, app: &str) -> Option<&WordFilter> {
        self.apps.get(app).and_then(|a| a.filter.as_ref())
    }
}

#[async_trait]
impl Screen for AppScreens {
    async fn screen(&self, message: &Message) -> Result<Verdict, ScreenError> {
        let Some(app) = self.apps.get(&message.from.app) else {
            return Ok(Verdict::Allow);
        };
        let mut replaced: Option<Bytes> = None;
        if let Some(hook) = &app.hook {
            match hook.check(message).await? {
                Verdict::Allow => {}
                Verdict::Replace(body) => replaced = Some(body),
                reject @ Verdict::Reject(_) => return Ok(reject),
            }
        }
        if let Some(filter) = &app.filter {
            let body = replaced.as_ref().unwrap_or(&message.body);
            if let Ok(text) = std::str::from_utf8(body) {
                match filter.apply(text).await {
                    Filtered::Clean => {}
                    Filtered::Masked(masked) => replaced = Some(Bytes::from(masked)),
                    Filtered::Rejected(word) => {
                        return Ok(Verdict::Reject(format!(
                            "the message contains a blocked word ({word})"
                        )));
                    }
                }
            }
        }
        Ok(replaced.map_or(Verdict::Allow, Verdict::Replace))
    }
}
